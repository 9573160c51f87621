"""Key metadata, the public trust store, and the key lifetime rules (pure: the time is passed in).

A key's life, with the 90-day rotation of spec 6.4 and an overlap (default 7 days)::

    created_at ──── rotate_after (created + 90 d) ──── expires_at (rotate_after + overlap)
                         └ `keys rotate` at time R: retired_at = R, expires_at = min(expires_at, R + overlap)

* A signature verifies only if it was made (``signed_at``, which is inside the signed bytes) in
  ``[created_at, expires_at)``. Records signed before expiry verify forever, so rotation keeps the audit
  log verifiable; a signature dated after expiry fails with "key K expired at T".
* Revocation takes effect from its time on: a signature of a revoked key dated at or after ``revoked_at``
  fails ("key K was revoked at T: reason"); one dated before it still verifies, so the past stays
  verifiable (the audit chain, whose entries are anchored by hash links and checkpoints, is what makes a
  backdated signature useless there). Verifiers of live inputs, where nothing old is expected, pass
  ``strict_revocation=True`` and refuse every signature of a revoked key.
* Key ids are fingerprints, ``<slug>-<first 16 hex of SHA-256(algorithm || 0x00 || public key)>``, so a
  trust store whose public key was swapped is detected on load.

The trust store holds public keys and metadata only. Its integrity rests on file permissions (it carries no
signature of its own), so :meth:`TrustStore.load` refuses a file that group or others can write
(:func:`refuse_writable`), and saves are written with mode 0644.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretBytes, ValidationError, field_validator

from governance.crypto.algorithms import Algorithm, Kind, keygen, parse_algorithm, spec
from governance.errors import ConfigError, VerificationError

__all__ = [
    "KeyInfo",
    "KeyPolicy",
    "KeyStatus",
    "TrustStore",
    "b64decode",
    "b64encode",
    "generate_key",
    "key_id_for",
    "refuse_writable",
]

TRUST_STORE_FORMAT = "shadowgate-trust-store/1"


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(text: str, what: str) -> bytes:
    """Strict base64: refuses non-alphabet characters and non-canonical encodings (unused bits set)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise VerificationError(f"{what} is not valid base64: {exc}") from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise VerificationError(f"{what} is not canonical base64 (altered padding bits)")
    return data


def refuse_writable(path: Path, what: str) -> None:
    """:class:`ConfigError` if ``path`` (a file or a directory) can be written by group or others.

    Whoever can write a trust store, an identity directory or a keys directory can plant a key, so such
    files are refused rather than trusted; the message names the file and the fix.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"cannot read the mode of {what} {path}: {exc.strerror}") from exc
    if mode & 0o022:
        raise ConfigError(f"{what} {path} is group- or world-writable (mode {mode:o}); run `chmod go-w {path}`")


def key_id_for(algorithm: Algorithm, public_key: bytes) -> str:
    digest = hashlib.sha256(algorithm.value.encode() + b"\x00" + public_key).hexdigest()
    return f"{spec(algorithm).slug}-{digest[:16]}"


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"  # no longer signs; its signatures up to expires_at verify
    EXPIRED = "expired"
    REVOKED = "revoked"


class KeyPolicy(BaseModel):
    """Algorithm and rotation policy (spec 6.4 ``model_signing``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    algorithm: Algorithm = Algorithm.ML_DSA_65
    rotation_days: int = Field(default=90, ge=1, le=3650)
    overlap_days: int = Field(default=7, ge=0, le=365)

    @field_validator("algorithm", mode="before")
    @classmethod
    def _parse(cls, value: object) -> Algorithm:
        return parse_algorithm(str(value))

    @property
    def rotation_period(self) -> timedelta:
        return timedelta(days=self.rotation_days)

    @property
    def overlap(self) -> timedelta:
        return timedelta(days=self.overlap_days)

    @classmethod
    def from_spec(cls, config: Mapping[str, Any]) -> KeyPolicy:
        """From spec 6.4 ``model_signing`` (``algorithm: "Dilithium-3"``, ``key_rotation: "90 days"``,
        ``signature_verification: "MANDATORY"``), or a mapping containing it; ``key_rotation_days: 90`` (the
        policy file's ``signing`` section) and ``overlap_days`` are accepted too. Verification can only be
        MANDATORY; anything else is refused rather than silently weakened."""
        block = config.get("model_signing", config)
        if not isinstance(block, Mapping):
            raise ConfigError("model_signing must be a mapping")
        updates: dict[str, Any] = {}
        if "algorithm" in block:
            updates["algorithm"] = parse_algorithm(str(block["algorithm"]))
            if spec(updates["algorithm"]).kind is not Kind.SIGNATURE or not spec(updates["algorithm"]).post_quantum:
                raise ConfigError(f"model_signing.algorithm {block['algorithm']!r} is not a post-quantum signature")
        if "key_rotation" in block:
            words = str(block["key_rotation"]).split()
            if len(words) != 2 or not words[0].isdigit() or words[1] not in ("day", "days"):
                raise ConfigError(f"model_signing.key_rotation {block['key_rotation']!r} is not like '90 days'")
            updates["rotation_days"] = int(words[0])
        if "key_rotation_days" in block:  # the shape of governance.policy's `signing` section
            updates["rotation_days"] = block["key_rotation_days"]
        if "overlap_days" in block:
            updates["overlap_days"] = block["overlap_days"]
        mode = str(block.get("signature_verification", "MANDATORY"))
        if mode.upper() != "MANDATORY":
            raise ConfigError(f"model_signing.signature_verification is {mode!r}; only 'MANDATORY' is supported")
        try:
            return cls(**updates)
        except ValidationError as exc:
            raise ConfigError(f"model_signing: {exc}") from exc


class KeyInfo(BaseModel):
    """Public facts about one key: what the trust store holds. Never contains secret material."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key_id: str
    algorithm: Algorithm
    public_key: str  # base64
    created_at: datetime
    rotate_after: datetime
    expires_at: datetime
    retired_at: datetime | None = None
    revoked_at: datetime | None = None
    revocation_reason: str | None = None

    @field_validator("created_at", "rotate_after", "expires_at", "retired_at", "revoked_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value

    def public_bytes(self) -> bytes:
        return b64decode(self.public_key, f"public key of {self.key_id}")

    def status(self, now: datetime) -> KeyStatus:
        if self.revoked_at is not None:
            return KeyStatus.REVOKED
        if now >= self.expires_at:
            return KeyStatus.EXPIRED
        if self.retired_at is not None:
            return KeyStatus.RETIRED
        return KeyStatus.ACTIVE

    def rotation_due(self, now: datetime) -> bool:
        return now >= self.rotate_after

    def check_integrity(self) -> None:
        """Raise :class:`VerificationError` if the id does not fingerprint the public key or sizes are off."""
        public = self.public_bytes()
        expected_size = spec(self.algorithm).public_key_size
        if len(public) != expected_size:
            raise VerificationError(
                f"key {self.key_id}: {self.algorithm} public key must be {expected_size} bytes, got {len(public)}"
            )
        if key_id_for(self.algorithm, public) != self.key_id:
            raise VerificationError(
                f"key {self.key_id}: public key does not match its id (trust store altered or corrupted)"
            )


def generate_key(algorithm: Algorithm, now: datetime, policy: KeyPolicy) -> tuple[KeyInfo, SecretBytes]:
    """A new key pair: its public :class:`KeyInfo` and the secret key (masked in repr and logs)."""
    if now.tzinfo is None:
        raise ConfigError("key creation time must be timezone-aware")
    public, secret = keygen(algorithm)
    info = KeyInfo(
        key_id=key_id_for(algorithm, public),
        algorithm=algorithm,
        public_key=b64encode(public),
        created_at=now,
        rotate_after=now + policy.rotation_period,
        expires_at=now + policy.rotation_period + policy.overlap,
    )
    return info, SecretBytes(secret)


class TrustStore:
    """Public keys by id. Lookups fail closed: an unknown id raises :class:`VerificationError`.

    Every key is integrity-checked (id = fingerprint of its public key) when added.
    """

    def __init__(self, keys: Iterable[KeyInfo] = (), source: str = "<memory>") -> None:
        self._keys: dict[str, KeyInfo] = {}
        self.source = source
        for key in keys:
            self.add(key)

    def add(self, key: KeyInfo) -> None:
        key.check_integrity()
        self._keys[key.key_id] = key

    def get(self, key_id: str) -> KeyInfo:
        key = self._keys.get(key_id)
        if key is None:
            raise VerificationError(
                f"key {key_id} is not in the trust store {self.source}; import its public key "
                "(`shadowgate keys export-public` on the signing side)"
            )
        return key

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[KeyInfo]:
        return iter(sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id)))

    def __len__(self) -> int:
        return len(self._keys)

    def check_signature_time(
        self, key: KeyInfo, signed_at: datetime, now: datetime, skew: timedelta, *, strict_revocation: bool = False
    ) -> None:
        """Raise :class:`VerificationError` unless ``key`` could validly sign at ``signed_at``.

        A revoked key's signatures dated before ``revoked_at`` stay valid unless ``strict_revocation``.
        """
        if key.revoked_at is not None and (strict_revocation or signed_at >= key.revoked_at):
            reason = key.revocation_reason or "no reason given"
            when = "" if strict_revocation else f" (signature dated {signed_at.isoformat()})"
            raise VerificationError(f"key {key.key_id} was revoked at {key.revoked_at.isoformat()}: {reason}{when}")
        if signed_at > now + skew:
            raise VerificationError(
                f"key {key.key_id}: signature dated {signed_at.isoformat()} is in the future (now {now.isoformat()})"
            )
        if signed_at < key.created_at - skew:
            raise VerificationError(
                f"key {key.key_id}: signature dated {signed_at.isoformat()} predates the key "
                f"(created {key.created_at.isoformat()})"
            )
        if signed_at >= key.expires_at:
            raise VerificationError(
                f"key {key.key_id} expired at {key.expires_at.isoformat()}; signature dated "
                f"{signed_at.isoformat()} is too late (rotate keys with `shadowgate keys rotate`)"
            )

    def to_json(self) -> bytes:
        document = {"format": TRUST_STORE_FORMAT, "keys": [k.model_dump(mode="json") for k in self]}
        return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    @classmethod
    def from_json(cls, data: bytes, source: str) -> TrustStore:
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"trust store {source} is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != TRUST_STORE_FORMAT:
            raise ConfigError(f"trust store {source} is not a {TRUST_STORE_FORMAT} document")
        try:
            keys = [KeyInfo.model_validate(item) for item in document.get("keys", [])]
        except ValidationError as exc:
            raise ConfigError(f"trust store {source} has an invalid key entry: {exc}") from exc
        return cls(keys, source=source)

    @classmethod
    def load(cls, path: Path) -> TrustStore:
        """The trust store in ``path``; :class:`ConfigError` if unreadable, invalid or writable by others."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read trust store {path}: {exc.strerror}") from exc
        refuse_writable(path, "trust store")
        return cls.from_json(data, source=str(path))

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename, mode 0644) so readers never see a half-written store."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.fchmod(fd, 0o644)  # whatever the umask: a group-writable store would be refused on load
        with os.fdopen(fd, "wb") as handle:
            handle.write(self.to_json())
        os.replace(tmp, path)
