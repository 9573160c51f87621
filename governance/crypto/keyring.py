"""The on-disk keyring: private keys (mode 0600) beside the local trust store, with rotation and revocation.

Layout of the keys directory (created with mode 0700)::

    trust-store.json           public KeyInfo of every key ever made here (the local trust store)
    private/<key_id>.key       raw secret key, mode 0600, created with O_EXCL (never overwritten)
    .lock                      flock(2) held while the keyring changes, so concurrent rotations serialize

Guarantees: secret keys are read only by :meth:`Keyring.secret_key` and :meth:`Keyring.signer`, returned as
``pydantic.SecretBytes`` (masked in repr, str and logs) and refused if the file is readable or writable by
group or others; the keys directory and the trust store are refused when group or others can write
them (whoever can, can plant a key), with the ``chmod go-w`` that fixes it. Directories this class
creates, missing parents included, get mode 0700. ``generate`` refuses a second active key of one
algorithm, so "the active key" is always unique and new records use the newest key. Rotation retires
the old key (it keeps verifying for records signed before its expiry); revoking a signature key also
deletes its secret, which can never sign validly again (a running process that follows its keyring with
:class:`~governance.crypto.live.LiveKeyring` stops using it at its next check). A revoked or retired
ML-KEM key keeps its secret so old evidence stays decryptable.
"""

from __future__ import annotations

import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from pydantic import SecretBytes

from governance.crypto.algorithms import Algorithm, Kind, spec
from governance.crypto.keys import KeyInfo, KeyPolicy, KeyStatus, TrustStore, generate_key, refuse_writable
from governance.crypto.signing import Signer
from governance.errors import ConfigError, CryptoError

__all__ = ["Keyring", "default_keys_dir"]

TRUST_STORE_NAME = "trust-store.json"


def default_keys_dir() -> Path:
    """``~/.config/shadowgate/keys`` (the CLI also honours ``--keys-dir`` and ``SHADOWGATE_KEYS_DIR``)."""
    return Path.home() / ".config" / "shadowgate" / "keys"


class Keyring:
    """Keys in one directory under one :class:`KeyPolicy` (algorithm, 90-day rotation, overlap)."""

    def __init__(self, directory: Path, policy: KeyPolicy | None = None) -> None:
        self.directory = directory
        self.policy = policy or KeyPolicy()

    def __repr__(self) -> str:
        return f"Keyring(directory={str(self.directory)!r})"

    @property
    def trust_store_path(self) -> Path:
        return self.directory / TRUST_STORE_NAME

    @property
    def _private_dir(self) -> Path:
        return self.directory / "private"

    def _secret_path(self, key_id: str) -> Path:
        if not key_id or "/" in key_id or key_id.startswith("."):
            raise ConfigError(f"invalid key id {key_id!r}")
        return self._private_dir / f"{key_id}.key"

    def _ensure_dirs(self) -> None:
        missing = [self._private_dir, *(p for p in self._private_dir.parents if not p.exists())]
        for path in reversed(missing):
            path.mkdir(mode=0o700, exist_ok=True)  # parents too: mkdir(parents=True) would give them the umask's
        self._check_dirs()

    def _check_dirs(self) -> None:
        refuse_writable(self.directory, "keys directory")
        if not self._private_dir.exists():
            return
        mode = stat.S_IMODE(self._private_dir.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"private key directory {self._private_dir} has mode {mode:o}; run `chmod 700 {self._private_dir}`"
            )

    @contextmanager
    def _locked(self) -> Iterator[TrustStore]:
        self._ensure_dirs()
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.trust_store()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def trust_store(self) -> TrustStore:
        """The local trust store (empty if no key was ever made here); refused if others can write it."""
        if not self.trust_store_path.exists():
            return TrustStore(source=str(self.trust_store_path))
        refuse_writable(self.directory, "keys directory")
        return TrustStore.load(self.trust_store_path)

    def list_keys(self) -> list[KeyInfo]:
        return list(self.trust_store())

    def _write_secret(self, key_id: str, secret: SecretBytes) -> None:
        path = self._secret_path(key_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, secret.get_secret_value())
            os.fsync(fd)
        finally:
            os.close(fd)

    def secret_key(self, key_id: str) -> SecretBytes:
        """The secret key of ``key_id``; :class:`ConfigError` if missing or not mode 0600."""
        path = self._secret_path(key_id)
        self._check_dirs()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no secret key for {key_id} in {self._private_dir} (revoked, or made elsewhere)"
            ) from exc
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise ConfigError(f"secret key file {path} has mode {mode:o}; run `chmod 600 {path}`")
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read()
        finally:
            os.close(fd)
        algorithm = self.trust_store().get(key_id).algorithm
        if len(data) != spec(algorithm).secret_key_size:
            raise ConfigError(
                f"secret key file {path} has {len(data)} bytes; {algorithm} needs {spec(algorithm).secret_key_size}"
            )
        return SecretBytes(data)

    def active_key(self, now: datetime, algorithm: Algorithm | None = None) -> KeyInfo:
        """The newest active key of ``algorithm`` (policy default); :class:`CryptoError` if there is none."""
        wanted = algorithm or self.policy.algorithm
        active = [k for k in self.list_keys() if k.algorithm is wanted and k.status(now) is KeyStatus.ACTIVE]
        if not active:
            raise CryptoError(
                f"no active {wanted} key in {self.directory}; run `shadowgate keys generate "
                f"--algorithm {wanted}` (or `keys rotate` if the last one expired)"
            )
        return max(active, key=lambda k: k.created_at)

    def signer(self, now: datetime, key_id: str | None = None, algorithm: Algorithm | None = None) -> Signer:
        """A :class:`Signer` for ``key_id``, or for the active key of ``algorithm``."""
        if key_id is not None:
            store = self.trust_store()
            if key_id not in store:
                raise ConfigError(f"key {key_id} is not in {self.trust_store_path}; see `shadowgate keys list`")
            key = store.get(key_id)
        else:
            key = self.active_key(now, algorithm)
        if spec(key.algorithm).kind is not Kind.SIGNATURE:
            raise CryptoError(f"key {key.key_id} is a {key.algorithm} key and cannot sign")
        status = key.status(now)
        if status is not KeyStatus.ACTIVE:
            raise CryptoError(f"key {key.key_id} is {status.value}; sign with the active key (`shadowgate keys list`)")
        return Signer(key, self.secret_key(key.key_id))

    def generate(self, now: datetime, algorithm: Algorithm | None = None) -> KeyInfo:
        """Make the first key of ``algorithm``; refuses if an active one exists (use :meth:`rotate`)."""
        wanted = algorithm or self.policy.algorithm
        with self._locked() as store:
            current = [k for k in store if k.algorithm is wanted and k.status(now) is KeyStatus.ACTIVE]
            if current:
                raise ConfigError(
                    f"an active {wanted} key {current[0].key_id} exists in {self.directory}; "
                    "use `shadowgate keys rotate` to replace it"
                )
            return self._add(store, wanted, now)

    def rotate(self, now: datetime, algorithm: Algorithm | None = None) -> tuple[KeyInfo, list[KeyInfo]]:
        """Make a new key of ``algorithm`` and retire the active ones; returns ``(new, retired)``."""
        wanted = algorithm or self.policy.algorithm
        with self._locked() as store:
            retired = []
            for key in list(store):
                if key.algorithm is wanted and key.status(now) is KeyStatus.ACTIVE:
                    update = {"retired_at": now, "expires_at": min(key.expires_at, now + self.policy.overlap)}
                    retired.append(key.model_copy(update=update))
                    store.add(retired[-1])
            return self._add(store, wanted, now), retired

    def rotate_if_due(self, now: datetime, algorithm: Algorithm | None = None) -> KeyInfo | None:
        """Rotate if the active key passed ``rotate_after`` or none is active; return the new key, if any."""
        try:
            current = self.active_key(now, algorithm)
        except CryptoError:
            current = None
        if current is not None and not current.rotation_due(now):
            return None
        return self.rotate(now, algorithm)[0]

    def revoke(self, key_id: str, now: datetime, reason: str) -> KeyInfo:
        """Mark ``key_id`` revoked; its signatures stop verifying everywhere this trust store is used."""
        if not reason.strip():
            raise ConfigError("revocation needs a reason (e.g. 'key file leaked in backup')")
        with self._locked() as store:
            if key_id not in store:
                raise ConfigError(f"key {key_id} is not in {self.trust_store_path}; see `shadowgate keys list`")
            key = store.get(key_id)
            if key.revoked_at is not None:
                raise ConfigError(f"key {key_id} is already revoked since {key.revoked_at.isoformat()}")
            revoked = key.model_copy(update={"revoked_at": now, "revocation_reason": reason.strip()})
            store.add(revoked)
            store.save(self.trust_store_path)
            if spec(key.algorithm).kind is Kind.SIGNATURE:
                self._secret_path(key_id).unlink(missing_ok=True)
            return revoked

    def _add(self, store: TrustStore, algorithm: Algorithm, now: datetime) -> KeyInfo:
        info, secret = generate_key(algorithm, now, self.policy)
        self._write_secret(info.key_id, secret)
        store.add(info)
        store.save(self.trust_store_path)
        return info
