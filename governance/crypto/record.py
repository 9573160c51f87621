"""The signed record: the format of governance events, approvals, audit entries and manifests.

A record is a JSON object::

    {
      "payload":   {...},                                  # any JSON object; what is signed
      "signature": {"alg": "ML-DSA-65", "key_id": "mldsa65-…", "context": "shadowgate/event/v1",
                    "sig": "<base64>", "signed_at": "2026-11-26T12:00:00.000000+00:00", "canon": "rfc8785"},
      "classical": {...same shape, alg = the classical scheme...}   # optional, dual mode (phases 0-2)
    }

Each signature covers the RFC 8785 (JCS) bytes of the payload, :func:`~governance.crypto.canonical.canonical_bytes`
(see :mod:`governance.crypto.signing` for the exact input); a block without ``canon`` (made before JCS) covers
the legacy form, and is verified over it. :func:`record_bytes` gives a whole record's canonical bytes, what
the audit chain hashes. Guarantees:

* ``sign_record`` returns the payload in JSON-decoded form, so ``orjson.loads(orjson.dumps(record))``
  verifies exactly as the returned dict does.
* ``verify_record`` fails closed with :class:`VerificationError` and returns the payload only after every
  check passed. Rules by phase (:mod:`governance.crypto.schedule`): a PQC signature, when present, must
  verify; a classical signature, when present, must verify in phases 0-2 and is ignored in phase 3;
  a record with only a classical signature is accepted in phases 0-1, in phase 2 only if signed before
  phase 2 began, and never in phase 3.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from governance.crypto.algorithms import Algorithm, spec
from governance.crypto.canonical import canonical_bytes, canonical_bytes_for, json_normalize
from governance.crypto.keys import TrustStore
from governance.crypto.schedule import DEFAULT_SCHEDULE, ClassicalOnly, MigrationSchedule, Phase
from governance.crypto.signing import Context, Signature, Signer, Verifier
from governance.errors import CryptoError, VerificationError

__all__ = ["record_bytes", "sign_record", "sign_record_async", "verify_record"]

_FIELDS = frozenset({"payload", "signature", "classical"})


def _check_signers(signer: Signer, classical: Signer | None, phase: Phase | None, schedule: MigrationSchedule) -> None:
    if not spec(signer.algorithm).post_quantum:
        raise CryptoError(
            f"key {signer.key_id} is {signer.algorithm.value}; the primary signature must be post-quantum"
        )
    if classical is None:
        return
    if classical.algorithm is not Algorithm.CLASSICAL:
        raise CryptoError(f"key {classical.key_id} is {classical.algorithm.value}, not the classical dual-mode scheme")
    if phase is None:
        raise CryptoError("a classical signature needs the migration phase; pass phase=")
    if not schedule.enforcement(phase).classical_signing_allowed:
        raise CryptoError(f"classical signatures are blocked in {phase.label}; sign with the PQC key only")


def _assemble(payload: Any, pqc: Signature, extra: Signature | None) -> dict[str, Any]:
    record: dict[str, Any] = {"payload": payload, "signature": pqc.as_json()}
    if extra is not None:
        record["classical"] = extra.as_json()
    return record


def record_bytes(record: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a whole signed record, under the canonicalization its signature names."""
    block = record.get("signature") or record.get("classical")
    canon = block.get("canon") if isinstance(block, Mapping) else None
    return canonical_bytes_for(record, canon if isinstance(canon, str) else None)


def _payload(payload: Mapping[str, Any]) -> tuple[Any, bytes]:
    if not isinstance(payload, Mapping):
        raise CryptoError(f"a record payload must be a JSON object, got {type(payload).__name__}")
    normalized = json_normalize(payload)
    return normalized, canonical_bytes(normalized)


def sign_record(
    payload: Mapping[str, Any],
    context: Context,
    signer: Signer,
    now: datetime,
    *,
    classical: Signer | None = None,
    phase: Phase | None = None,
    schedule: MigrationSchedule = DEFAULT_SCHEDULE,
) -> dict[str, Any]:
    """Sign ``payload`` under ``context`` with the PQC ``signer`` (plus ``classical`` in dual mode)."""
    _check_signers(signer, classical, phase, schedule)
    normalized, message = _payload(payload)
    pqc = signer.sign(message, context, now)
    extra = classical.sign(message, context, now) if classical is not None else None
    return _assemble(normalized, pqc, extra)


async def sign_record_async(
    payload: Mapping[str, Any],
    context: Context,
    signer: Signer,
    now: datetime,
    *,
    executor: Executor | None = None,
    classical: Signer | None = None,
    phase: Phase | None = None,
    schedule: MigrationSchedule = DEFAULT_SCHEDULE,
) -> dict[str, Any]:
    """:func:`sign_record` with signing run in ``executor``; use this in agents and async consumers."""
    _check_signers(signer, classical, phase, schedule)
    normalized, message = _payload(payload)
    pqc = await signer.sign_async(message, context, now, executor)
    extra = await classical.sign_async(message, context, now, executor) if classical is not None else None
    return _assemble(normalized, pqc, extra)


def _block(record: Mapping[str, Any], field: str) -> Signature | None:
    raw = record.get(field)
    if raw is None:
        return None
    try:
        return Signature.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise VerificationError(f"record {field}.{where}: {first['msg']}") from exc


def verify_record(
    record: Mapping[str, Any],
    context: Context,
    trust_store: TrustStore,
    now: datetime,
    phase: Phase,
    *,
    schedule: MigrationSchedule = DEFAULT_SCHEDULE,
    verifier: Verifier | None = None,
) -> dict[str, Any]:
    """The record's payload if its signatures satisfy ``phase``; else :class:`VerificationError`."""
    if not isinstance(record, Mapping):
        raise VerificationError(f"a signed record must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise VerificationError(f"signed record has unknown fields {unknown}; expected {sorted(_FIELDS)}")
    payload = record.get("payload")
    if not isinstance(payload, dict):
        raise VerificationError("signed record has no payload object")
    pqc, extra = _block(record, "signature"), _block(record, "classical")
    if pqc is not None and not spec(pqc.alg).post_quantum:
        raise VerificationError(f"record signature by key {pqc.key_id} uses {pqc.alg.value}, which is not post-quantum")
    if extra is not None and extra.alg is not Algorithm.CLASSICAL:
        raise VerificationError(f"record classical block by key {extra.key_id} uses {extra.alg.value}")
    enforcement = schedule.enforcement(phase)
    if pqc is None:
        _check_classical_only(extra, enforcement.classical_only, phase, schedule)
    verifier = verifier or Verifier(trust_store)
    if pqc is not None:
        verifier.verify(pqc.message(payload), pqc, context, now)
    if extra is not None and enforcement.classical_only is not ClassicalOnly.REFUSE:
        # Phase 3 ignores (never trusts) a classical block; earlier phases require it to verify if present.
        verifier.verify(extra.message(payload), extra, context, now)
    return payload


def _check_classical_only(
    extra: Signature | None, rule: ClassicalOnly, phase: Phase, schedule: MigrationSchedule
) -> None:
    if extra is None:
        raise VerificationError("signed record carries no signature")
    if rule is ClassicalOnly.REFUSE:
        raise VerificationError(
            f"record signed only by classical key {extra.key_id}; {phase.label} refuses classical-only records"
        )
    phase_2 = schedule.start_of(Phase.PRIMARY_PQC)
    if rule is ClassicalOnly.LEGACY and phase_2 is not None and extra.signed_at >= phase_2:
        raise VerificationError(
            f"record signed only by classical key {extra.key_id} at {extra.signed_at.isoformat()}; in "
            f"{phase.label} classical-only is accepted only for records signed before {phase_2.date()}"
        )
