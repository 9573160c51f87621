"""Signed artifact manifests: ``shadowgate sign|verify FILE`` and the SDK check before a model loads.

The manifest sits beside the artifact as ``FILE.manifest.json`` and is a signed record
(:mod:`governance.crypto.record`, context ``shadowgate/artifact/v1``) whose payload is::

    {"format": "shadowgate-artifact-manifest/1",
     "artifact": {"name": "model.onnx", "size_bytes": 123, "sha256": "<hex>", "sha3_256": "<hex>"}}

Guarantees: the file is written as canonical JSON plus a newline and must be byte-identical to that form
when read, so any edit (even whitespace) fails; both digests and the size must match the artifact, so
a collision in one hash family alone does not pass. Hashing streams the file in 1 MiB chunks (memory O(1)).
The name is recorded for people, not checked: renaming or copying an artifact keeps it verifiable.

Check the bytes you load: :func:`verify_artifact_bytes` verifies an in-memory artifact, avoiding a
time-of-check/time-of-use gap between :func:`verify_artifact` and a later read of the same path.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from governance.crypto.keys import TrustStore
from governance.crypto.record import record_bytes, sign_record, verify_record
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule, Phase
from governance.crypto.signing import Context, Signature, Signer
from governance.errors import ConfigError, CryptoError, VerificationError

__all__ = [
    "MANIFEST_FORMAT",
    "ArtifactDigest",
    "VerifiedArtifact",
    "digest_bytes",
    "digest_file",
    "manifest_path_for",
    "sign_artifact",
    "verify_artifact",
    "verify_artifact_bytes",
]

MANIFEST_FORMAT = "shadowgate-artifact-manifest/1"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArtifactDigest:
    size_bytes: int
    sha256: str
    sha3_256: str

    def as_payload(self, name: str) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "artifact": {
                "name": name,
                "size_bytes": self.size_bytes,
                "sha256": self.sha256,
                "sha3_256": self.sha3_256,
            },
        }


@dataclass(frozen=True)
class VerifiedArtifact:
    """What a successful verification established."""

    name: str
    digest: ArtifactDigest
    signature: Signature


def manifest_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".manifest.json")


def digest_bytes(data: bytes) -> ArtifactDigest:
    return ArtifactDigest(len(data), hashlib.sha256(data).hexdigest(), hashlib.sha3_256(data).hexdigest())


def digest_file(path: Path) -> ArtifactDigest:
    sha2, sha3, size = hashlib.sha256(), hashlib.sha3_256(), 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                sha2.update(chunk)
                sha3.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"cannot read artifact {path}: {exc.strerror}") from exc
    return ArtifactDigest(size, sha2.hexdigest(), sha3.hexdigest())


def sign_artifact(
    path: Path,
    signer: Signer,
    now: datetime,
    *,
    manifest_path: Path | None = None,
    classical: Signer | None = None,
    phase: Phase | None = None,
) -> Path:
    """Digest ``path``, sign the manifest and write it (atomically) beside the file; return its path."""
    record = sign_record(
        digest_file(path).as_payload(path.name),
        Context.ARTIFACT,
        signer,
        now,
        classical=classical,
        phase=phase,
    )
    target = manifest_path or manifest_path_for(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(record_bytes(record) + b"\n")
    os.replace(tmp, target)
    return target


def _load_manifest(manifest_path: Path) -> dict[str, Any]:
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise VerificationError(f"no manifest {manifest_path}; sign the artifact with `shadowgate sign`") from exc
    except OSError as exc:
        raise VerificationError(f"cannot read manifest {manifest_path}: {exc.strerror}") from exc
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise VerificationError(f"manifest {manifest_path} is not valid JSON (altered?): {exc}") from exc
    if not isinstance(record, dict):
        raise VerificationError(f"manifest {manifest_path} is not a JSON object (altered?)")
    try:
        canonical = record_bytes(record)
    except CryptoError as exc:  # e.g. a signature block naming a canonicalization nobody signs with
        raise VerificationError(f"manifest {manifest_path} cannot be read as signed (altered?): {exc}") from exc
    if canonical + b"\n" != raw:
        raise VerificationError(f"manifest {manifest_path} is not in canonical form; it was edited after signing")
    return record


def _check(
    record: dict[str, Any],
    actual: ArtifactDigest,
    trust_store: TrustStore,
    now: datetime,
    phase: Phase,
    schedule: MigrationSchedule,
    where: str,
) -> VerifiedArtifact:
    payload = verify_record(record, Context.ARTIFACT, trust_store, now, phase, schedule=schedule)
    artifact = payload.get("artifact")
    if payload.get("format") != MANIFEST_FORMAT or not isinstance(artifact, dict):
        raise VerificationError(f"manifest {where} is not a {MANIFEST_FORMAT} document")
    if artifact.get("size_bytes") != actual.size_bytes:
        raise VerificationError(
            f"artifact {where}: size is {actual.size_bytes} bytes, the manifest says {artifact.get('size_bytes')}"
        )
    for field in ("sha256", "sha3_256"):
        expected = artifact.get(field)
        if not isinstance(expected, str) or not hmac.compare_digest(expected, getattr(actual, field)):
            raise VerificationError(
                f"artifact {where}: {field} digest does not match the signed manifest (the file changed after signing)"
            )
    block = Signature.model_validate(record["signature"] if record.get("signature") else record["classical"])
    return VerifiedArtifact(str(artifact.get("name")), actual, block)


def verify_artifact(
    path: Path,
    trust_store: TrustStore,
    now: datetime,
    *,
    manifest_path: Path | None = None,
    phase: Phase | None = None,
    schedule: MigrationSchedule = DEFAULT_SCHEDULE,
) -> VerifiedArtifact:
    """Verify ``path`` against its signed manifest; :class:`VerificationError` names the key and reason.

    ``phase`` defaults to the schedule's phase at ``now``.
    """
    record = _load_manifest(manifest_path or manifest_path_for(path))
    return _check(
        record,
        digest_file(path),
        trust_store,
        now,
        schedule.phase_at(now) if phase is None else phase,
        schedule,
        str(path),
    )


def verify_artifact_bytes(
    data: bytes,
    manifest_path: Path,
    trust_store: TrustStore,
    now: datetime,
    *,
    phase: Phase | None = None,
    schedule: MigrationSchedule = DEFAULT_SCHEDULE,
) -> VerifiedArtifact:
    """Verify an artifact already in memory (the bytes that will actually be loaded)."""
    record = _load_manifest(manifest_path)
    return _check(
        record,
        digest_bytes(data),
        trust_store,
        now,
        schedule.phase_at(now) if phase is None else phase,
        schedule,
        str(manifest_path),
    )
