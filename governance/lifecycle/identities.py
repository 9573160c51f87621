"""Who may sign what: the system key and the approver identities, laid out in one keys directory.

Layout (each directory is a :class:`~governance.crypto.keyring.Keyring`)::

    <keys-dir>/                       the system keyring: the governance consumer signs audit entries,
      trust-store.json                routing assignments, ProofPacks and alerts with it, and the streams
      private/...                     worker signs gate and rollback events with it (or with a key whose
                                      public part was added to this trust store)
    <keys-dir>/identities/GID-02/     one keyring per person or role (GID-02 Maggie, GID-08 ALEX, ...):
      trust-store.json                the private key lives only on that person's machine; the consumer
      private/...                     needs the trust-store.json alone

``shadowgate keys generate --keys-dir <keys-dir>/identities/GID-08`` makes an identity's key. A command
or approval names the identity it is signed by; it verifies only against that identity's trust store, so
a signature by GID-02's key cannot pass as GID-08's (the identity is proven, not claimed).

Guarantees: identity names are checked (``[A-Za-z0-9_.-]``, no path tricks); a missing identity raises
:class:`~governance.errors.VerificationError` naming it and the directory to create. :func:`load_trust`
refuses (:class:`~governance.errors.ConfigError`, naming the file and ``chmod go-w``) a keys directory, an
``identities`` directory, an identity's directory or a trust store that group or others can write: whoever
can write there can plant a key and approve as GID-08. :class:`LiveTrust` follows the files while a
process runs (a rotated approver key, a revocation), keeping the last good trust when a reload is refused.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from governance.crypto.keyring import Keyring
from governance.crypto.keys import TrustStore, refuse_writable
from governance.crypto.live import DirectoryWatch
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule, Phase
from governance.crypto.signing import Signer
from governance.errors import ConfigError, ShadowgateError, VerificationError

__all__ = ["IDENTITIES_DIR", "LiveTrust", "Trust", "identity_dir", "identity_signer", "load_trust", "system_signer"]

IDENTITIES_DIR = "identities"
_IDENTITY = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _check_identity(identity: str) -> str:
    if not _IDENTITY.match(identity) or identity.startswith("."):
        raise ConfigError(f"identity {identity!r} is not a valid name; use letters, digits, '_', '.', '-' (GID-08)")
    return identity


def identity_dir(keys_dir: Path, identity: str) -> Path:
    """The keyring directory of ``identity`` under ``keys_dir``."""
    return keys_dir / IDENTITIES_DIR / _check_identity(identity)


def system_signer(keys_dir: Path, now: datetime) -> Signer:
    """The active system key (audit entries, routing, ProofPacks, alerts, streams events)."""
    return Keyring(keys_dir).signer(now)


def identity_signer(keys_dir: Path, identity: str, now: datetime) -> Signer:
    """The active key of ``identity``; :class:`ConfigError` naming the command that makes one."""
    directory = identity_dir(keys_dir, identity)
    if not (directory / "trust-store.json").exists():
        raise ConfigError(
            f"identity {identity} has no keys in {directory}; run `shadowgate keys generate --keys-dir {directory}`"
        )
    return Keyring(directory).signer(now)


@dataclass(frozen=True)
class Trust:
    """The trust stores a verifier uses, and the PQC migration schedule that says which signatures count."""

    system: TrustStore
    identities: Mapping[str, TrustStore] = field(default_factory=dict)
    schedule: MigrationSchedule = DEFAULT_SCHEDULE

    def phase(self, now: datetime) -> Phase:
        return self.schedule.phase_at(now)

    def identity(self, identity: str) -> TrustStore:
        """The trust store of ``identity``; :class:`VerificationError` if the identity is unknown."""
        store = self.identities.get(identity)
        if store is None:
            known = ", ".join(sorted(self.identities)) or "none"
            raise VerificationError(
                f"identity {identity!r} is not trusted (known: {known}); add its trust-store.json under "
                f"<keys-dir>/{IDENTITIES_DIR}/{identity}/"
            )
        return store


def load_trust(keys_dir: Path, schedule: MigrationSchedule = DEFAULT_SCHEDULE) -> Trust:
    """The system trust store of ``keys_dir`` and every identity's under ``identities/`` (see the guarantees)."""
    system_path = keys_dir / "trust-store.json"
    if not system_path.exists():
        raise ConfigError(f"no system trust store {system_path}; run `shadowgate keys generate --keys-dir {keys_dir}`")
    refuse_writable(keys_dir, "keys directory")
    identities: dict[str, TrustStore] = {}
    root = keys_dir / IDENTITIES_DIR
    if root.is_dir():
        refuse_writable(root, "identities directory")
        for directory in sorted(root.iterdir()):
            path = directory / "trust-store.json"
            if directory.is_dir() and _IDENTITY.match(directory.name) and path.exists():
                refuse_writable(directory, f"identity directory of {directory.name}")
                identities[directory.name] = TrustStore.load(path)
    return Trust(system=TrustStore.load(system_path), identities=identities, schedule=schedule)


class LiveTrust:
    """The :class:`Trust` of ``keys_dir``, reloaded when its files change (checked at most every ``check_s``,
    forced every ``reload_s``). The first load raises; a later refused reload keeps the last good trust and
    is counted in ``failures`` with the message in ``last_error`` (a planted key is never loaded)."""

    def __init__(self, keys_dir: Path, schedule: MigrationSchedule = DEFAULT_SCHEDULE, *, check_s: float = 2.0,
                 reload_s: float = 300.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.keys_dir, self.schedule = keys_dir, schedule
        self.watch = DirectoryWatch(keys_dir, check_s=check_s, reload_s=reload_s, monotonic=monotonic)
        self.generation = 0
        self.failures = 0
        self.last_error: str | None = None
        self._trust: Trust | None = None
        self._lock = threading.Lock()

    def current(self) -> Trust:
        """The current trust (reloaded first if the files changed)."""
        with self._lock:
            if self.watch.due():
                self.watch.mark()
                try:
                    trust = load_trust(self.keys_dir, self.schedule)
                except ShadowgateError as exc:
                    if self._trust is None:
                        raise
                    self.failures += 1
                    self.last_error = str(exc)
                else:
                    self._trust, self.last_error = trust, None
                    self.generation += 1
            if self._trust is None:  # the first load raises instead
                raise ConfigError(f"no trust loaded from {self.keys_dir}")
            return self._trust
