"""Signer and Verifier: domain-separated signatures with the key id and signing time bound in.

What is signed for a message ``m`` (bytes)::

    header = canonical JSON (RFC 8785) of {"alg", "canon", "key_id", "signed_at"}
    signed = len(header) as 4 bytes big-endian || header || m        with FIPS 204/205 ctx = context

so a signature cannot be re-attributed to another key, re-dated (expiry checks rely on ``signed_at``),
replayed under another :class:`Context`, or read under another canonicalization (``canon``: ``"rfc8785"``
for every signature made now; blocks from before JCS have none, nor does their header). Replay of the
*same* record is the consumer's concern (event ids).

Signing is slow and holds the CPU: with pqcrypto 1.0 on one EPYC core, ~10 ms per ML-DSA-65 signature
(its rejection loop varies; twice that on a loaded machine) and ~12 ms per SLH-DSA-SHA2-128f signature;
verification takes 0.2-0.7 ms (benchmarks/bench_signing.py). pqcrypto does not release the GIL while it
signs (measured: a thread spinning beside a signing thread progressed only between signatures). So
:meth:`Signer.sign_async` runs the signature in an executor: with the default thread pool the event loop
regains control between signatures but still stalls for each one; pass a
``concurrent.futures.ProcessPoolExecutor`` to take signing off the loop's core entirely (the secret key
then travels to the worker over a local pipe).
"""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, SecretBytes, field_serializer, field_validator

from governance.crypto import algorithms
from governance.crypto.algorithms import Algorithm, Kind, spec
from governance.crypto.canonical import JCS, Canon, canonical_bytes_for, format_timestamp
from governance.crypto.keys import KeyInfo, KeyStatus, TrustStore, b64decode, b64encode
from governance.errors import CryptoError, VerificationError

__all__ = ["Context", "Signature", "Signer", "Verifier", "signing_input"]

_SELF_TEST_CONTEXT = b"shadowgate/key-self-test/v1"
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")


class Context(StrEnum):
    """Domain-separation contexts (the FIPS 204/205 ``ctx`` string). One per kind of signed thing."""

    ARTIFACT = "shadowgate/artifact/v1"
    EVENT = "shadowgate/event/v1"
    APPROVAL = "shadowgate/approval/v1"
    AUDIT_ENTRY = "shadowgate/audit-entry/v1"
    PROOFPACK = "shadowgate/proofpack/v1"
    CHECKPOINT = "shadowgate/audit-checkpoint/v1"


class Signature(BaseModel):
    """One signature block as it travels in records and manifests (``model_dump(mode='json')`` for JSON).

    ``signed_at`` must be canonical text (``2026-11-26T12:00:00.000000+00:00``) when parsed from JSON, so
    no two texts of a block mean the same signature.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    alg: Algorithm
    key_id: str
    context: Context
    sig: str  # base64
    signed_at: datetime
    # How the signed message was canonicalized: RFC 8785 (JCS). Absent only in blocks made before JCS.
    canon: Canon | None = None

    @field_validator("signed_at", mode="before")
    @classmethod
    def _canonical_time(cls, value: object) -> object:
        if isinstance(value, str) and not _TIMESTAMP_RE.match(value):
            raise ValueError(f"signed_at {value!r} is not canonical UTC text like 2026-11-26T12:00:00.000000+00:00")
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("signed_at must be timezone-aware")
        return value

    @field_serializer("signed_at")
    def _serialize_time(self, value: datetime) -> str:
        return format_timestamp(value)

    def signature_bytes(self) -> bytes:
        return b64decode(self.sig, f"signature by key {self.key_id}")

    def as_json(self) -> dict[str, str]:
        """The block as it travels (``canon`` omitted when absent, so a block from before JCS is unchanged)."""
        return self.model_dump(mode="json", exclude_none=True)

    def message(self, value: object) -> bytes:
        """The canonical bytes of ``value`` under this block's canonicalization: what it signs."""
        return canonical_bytes_for(value, self.canon)


def signing_input(
    algorithm: Algorithm, key_id: str, signed_at: datetime, message: bytes, canon: Canon | None = JCS
) -> bytes:
    """The exact bytes the algorithm signs (see the module docstring)."""
    fields = {"alg": algorithm.value, "key_id": key_id, "signed_at": format_timestamp(signed_at)}
    if canon is not None:
        fields["canon"] = canon
    header = canonical_bytes_for(fields, canon)
    return len(header).to_bytes(4, "big") + header + message


def _sign_detached(algorithm: str, secret_key: bytes, data: bytes, context: bytes) -> bytes:
    # Module-level and plain-typed so a ProcessPoolExecutor can pickle the call.
    return algorithms.sign(Algorithm(algorithm), secret_key, data, context)


class Signer:
    """Signs with one key. ``repr`` and ``str`` show the key id only, never the secret.

    Construction checks that the secret key matches the public key (one sign + verify), so a mixed-up key
    file fails here rather than producing records nobody can verify.
    """

    def __init__(self, key: KeyInfo, secret_key: SecretBytes, *, check: bool = True) -> None:
        if spec(key.algorithm).kind is not Kind.SIGNATURE:
            raise CryptoError(f"key {key.key_id} is a {key.algorithm} key and cannot sign")
        self.key = key
        self._secret = secret_key
        if check:
            probe = b"shadowgate key self-test"
            try:
                signature = algorithms.sign(key.algorithm, secret_key.get_secret_value(), probe, _SELF_TEST_CONTEXT)
                algorithms.verify(key.algorithm, key.public_bytes(), probe, signature, _SELF_TEST_CONTEXT)
            except CryptoError as exc:
                raise CryptoError(f"secret key of {key.key_id} does not match its public key: {exc}") from exc

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def algorithm(self) -> Algorithm:
        return self.key.algorithm

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key.key_id!r}, algorithm={self.key.algorithm.value!r})"

    __str__ = __repr__

    def _prepare(self, message: bytes, now: datetime) -> bytes:
        status = self.key.status(now)
        if status in (KeyStatus.EXPIRED, KeyStatus.REVOKED):
            raise CryptoError(
                f"key {self.key_id} is {status.value} (expires_at {self.key.expires_at.isoformat()}); "
                "sign with a current key (`shadowgate keys rotate`)"
            )
        if now < self.key.created_at:
            raise CryptoError(f"key {self.key_id} is created at {self.key.created_at.isoformat()}, after now")
        return signing_input(self.algorithm, self.key_id, now, message)

    def _block(self, raw: bytes, context: Context, now: datetime) -> Signature:
        return Signature(
            alg=self.algorithm, key_id=self.key_id, context=context, sig=b64encode(raw), signed_at=now, canon=JCS
        )

    def sign(self, message: bytes, context: Context, now: datetime) -> Signature:
        """Sign ``message`` under ``context`` at time ``now``. CPU-bound: see :meth:`sign_async`."""
        data = self._prepare(message, now)
        raw = algorithms.sign(self.algorithm, self._secret.get_secret_value(), data, context.value.encode())
        return self._block(raw, context, now)

    async def sign_async(
        self, message: bytes, context: Context, now: datetime, executor: Executor | None = None
    ) -> Signature:
        """:meth:`sign` run in ``executor`` (default: the loop's thread pool) to keep the event loop free."""
        data = self._prepare(message, now)
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(
            executor,
            _sign_detached,
            self.algorithm.value,
            self._secret.get_secret_value(),
            data,
            context.value.encode(),
        )
        return self._block(raw, context, now)


class Verifier:
    """Verifies signature blocks against a :class:`TrustStore`; every failure raises
    :class:`VerificationError` naming the key and the reason. ``skew`` tolerates clock differences.

    A revoked key's signatures dated before its revocation verify (the past stays verifiable); with
    ``strict_revocation`` (live inputs, where nothing old is expected) none of them do.
    """

    def __init__(
        self, trust_store: TrustStore, *, skew: timedelta = timedelta(minutes=5), strict_revocation: bool = False
    ) -> None:
        self.trust_store = trust_store
        self.skew = skew
        self.strict_revocation = strict_revocation

    def verify(self, message: bytes, signature: Signature, context: Context, now: datetime) -> KeyInfo:
        """Return the signing key's info if ``signature`` is a valid ``context`` signature of ``message``."""
        if signature.context != context:
            raise VerificationError(
                f"key {signature.key_id}: signature is for context {signature.context.value}, expected "
                f"{context.value} (a signature of one kind cannot stand for another)"
            )
        key = self.trust_store.get(signature.key_id)
        if key.algorithm != signature.alg:
            raise VerificationError(
                f"key {key.key_id} is {key.algorithm.value} but the signature says {signature.alg.value}"
            )
        self.trust_store.check_signature_time(
            key, signature.signed_at, now, self.skew, strict_revocation=self.strict_revocation
        )
        data = signing_input(signature.alg, key.key_id, signature.signed_at, message, signature.canon)
        try:
            algorithms.verify(
                key.algorithm, key.public_bytes(), data, signature.signature_bytes(), context.value.encode()
            )
        except VerificationError as exc:
            raise VerificationError(f"key {key.key_id}: {exc} (message or signature altered)") from exc
        return key
