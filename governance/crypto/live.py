"""Keys that follow their files: rotation and revocation reach running processes without a restart.

A long-running process (the governance consumer, the streams worker) loads its keyring once, but keys
change under it: ``shadowgate keys rotate`` adds a key and retires the old one, ``keys revoke`` marks one
revoked, an approver's new public key is dropped into ``identities/<ID>/trust-store.json``. The classes
here watch the files and reload:

* :class:`DirectoryWatch`: a fingerprint (inode, size, mtime, mode) of every file and directory under a
  root, compared at most every ``check_s`` seconds (a few ``stat`` calls, no thread) and forced every
  ``reload_s`` seconds even when nothing seems to have changed (a clock or file system that hides a
  change is caught by the periodic reload).
* :class:`LiveKeyring`: the active :class:`~governance.crypto.signing.Signer` and the trust store of one
  keys directory. Use it where a process signs::

      keys = LiveKeyring(keys_dir)                 # check_s=2.0, reload_s=300.0 (settings keys_check_s, keys_reload_s)
      record = sign_record(payload, Context.EVENT, keys.signer(now), now)   # the key active at `now`
      store = keys.trust_store()                   # the current trust store, e.g. to verify

  :meth:`LiveKeyring.signer` returns the same Signer object until the files change or the key stops being
  active at ``now`` (rotated, expired, revoked): then the newest active key. Thread-safe.

Guarantees: a reload that fails (a file that does not parse, or that group or others can write) keeps
the last good keys, counts the failure in ``failures`` and keeps the message in ``last_error``: a planted
key is never loaded, and a half-finished edit does not stop a running process. A process never signs
with a key its trust store says is no longer active (revoked, retired, expired) once it checked the files:
:meth:`signer` raises :class:`~governance.errors.CryptoError` when no key is active, rather than signing
with the stale one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from governance.crypto.keyring import Keyring
from governance.crypto.keys import KeyPolicy, KeyStatus, TrustStore
from governance.crypto.signing import Signer
from governance.errors import CryptoError, ShadowgateError

__all__ = ["DirectoryWatch", "LiveKeyring"]

Fingerprint = tuple[tuple[str, int, int, int, int], ...]
_IGNORED = (".lock",)


def fingerprint(root: Path) -> Fingerprint:
    """``(relative path, inode, size, mtime_ns, mode)`` of ``root`` and everything under it, sorted."""
    found: list[tuple[str, int, int, int, int]] = []
    if not root.exists():
        return ()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in [".", *sorted(files)]:
            if name in _IGNORED or name.endswith(".tmp"):
                continue
            path = Path(directory) / name
            try:
                st = path.stat()
            except OSError:  # removed between the listing and the stat: the next check sees the change
                continue
            found.append((str(path.relative_to(root)), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode))
    return tuple(found)


class DirectoryWatch:
    """Says when the files under ``root`` changed (checked at most every ``check_s``, forced every ``reload_s``)."""

    def __init__(self, root: Path, *, check_s: float = 2.0, reload_s: float = 300.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if check_s <= 0 or reload_s <= 0:
            raise ValueError(f"check_s and reload_s must be positive, got {check_s}, {reload_s}")
        self.root, self.check_s, self.reload_s = root, check_s, reload_s
        self._monotonic = monotonic
        self._seen: Fingerprint | None = None
        self._checked_at = self._loaded_at = float("-inf")

    def due(self) -> bool:
        """Whether a reload is due: files changed since :meth:`mark` (checked at most every ``check_s``)
        or ``reload_s`` passed. Always True before the first :meth:`mark`."""
        now = self._monotonic()
        if self._seen is None or now - self._loaded_at >= self.reload_s:
            return True
        if now - self._checked_at < self.check_s:
            return False
        self._checked_at = now
        return fingerprint(self.root) != self._seen

    def invalidate(self) -> None:
        """Make the next :meth:`due` True: the process itself changed the files (e.g. rotated a key)."""
        self._seen = None

    def mark(self) -> None:
        """Remember the files as they are now (call right before loading them)."""
        self._seen = fingerprint(self.root)
        self._checked_at = self._loaded_at = self._monotonic()


class LiveKeyring:
    """The active signer and the trust store of ``directory``, reloaded when its files change (module docstring)."""

    def __init__(self, directory: Path, policy: KeyPolicy | None = None, *, check_s: float = 2.0,
                 reload_s: float = 300.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.keyring = Keyring(directory, policy)
        self.watch = DirectoryWatch(directory, check_s=check_s, reload_s=reload_s, monotonic=monotonic)
        self.generation = 0
        self.failures = 0
        self.last_error: str | None = None
        self._store: TrustStore | None = None
        self._signer: Signer | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"LiveKeyring(directory={str(self.keyring.directory)!r}, generation={self.generation})"

    def refresh(self) -> bool:
        """Reload the trust store if it is due; True if a new one was loaded. The first load raises on
        failure; later failures keep the last good store (``failures``, ``last_error``)."""
        with self._lock:
            if not self.watch.due():
                return False
            self.watch.mark()
            try:
                store = self.keyring.trust_store()
            except ShadowgateError as exc:
                if self._store is None:
                    raise
                self.failures += 1
                self.last_error = str(exc)
                return False
            self._store, self.last_error = store, None
            self.generation += 1
            return True

    def trust_store(self) -> TrustStore:
        """The current trust store of the directory."""
        with self._lock:
            self.refresh()
            if self._store is None:  # refresh() raises instead on a first load that fails
                raise CryptoError(f"no trust store loaded from {self.keyring.directory}")
            return self._store

    def signer(self, now: datetime | None = None) -> Signer:
        """The Signer of the key active at ``now`` (default: the wall clock) under the current trust store."""
        now = now or datetime.now(UTC)
        with self._lock:
            store = self.trust_store()
            current = self._signer
            known = store.get(current.key_id) if current is not None and current.key_id in store else None
            if current is None or known is None or known.status(now) is not KeyStatus.ACTIVE or known != current.key:
                self._signer = current = self.keyring.signer(now)
            return current
