"""Hybrid encryption for data at rest (ProofPacks, exported evidence): ML-KEM-768 + AES-256-GCM (spec 6.2).

Envelope layout (all lengths fixed except the key id)::

    "SGHE" | version 0x01 | suite 0x01 | len(key_id) (1 byte) | key_id | ML-KEM-768 ciphertext (1088 B)
    | nonce (12 B) | AES-256-GCM ciphertext || tag (16 B)

The AES key is HKDF-SHA256 of the ML-KEM shared secret with info = ``shadowgate/hybrid/v1`` || context;
the whole header (magic to nonce) is the GCM associated data. Guarantees: a fresh encapsulation per
envelope; any change to any byte (header, KEM ciphertext, nonce, body, tag), a different context or the
wrong secret key makes :func:`decrypt` raise :class:`VerificationError` and release no plaintext (ML-KEM's
implicit rejection yields an unrelated key, which the tag then refuses). Memory is about twice the data
size; AES-GCM here is one-shot, so envelopes are limited to 2 GiB.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretBytes

from governance.crypto.algorithms import Algorithm, spec
from governance.crypto.keys import KeyInfo, KeyStatus
from governance.errors import CryptoError, VerificationError

__all__ = ["DEFAULT_CONTEXT", "decrypt", "encrypt", "envelope_key_id"]

MAGIC = b"SGHE"
VERSION = 1
SUITE_MLKEM768_AES256GCM = 1
DEFAULT_CONTEXT = b"shadowgate/evidence/v1"
_NONCE_BYTES = 12
_KEM_CT_BYTES = spec(Algorithm.ML_KEM_768).output_size


def _derive(shared_secret: bytes, context: bytes) -> bytes:
    info = b"shadowgate/hybrid/v1\x00" + len(context).to_bytes(2, "big") + context
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared_secret)


def _kem() -> Any:
    from pqcrypto.kem import ml_kem_768

    return ml_kem_768


def encrypt(plaintext: bytes, recipient: KeyInfo, now: datetime, *, context: bytes = DEFAULT_CONTEXT) -> bytes:
    """Encrypt ``plaintext`` to ``recipient`` (an ML-KEM-768 key that is active or retired-but-unexpired)."""
    if recipient.algorithm is not Algorithm.ML_KEM_768:
        raise CryptoError(f"key {recipient.key_id} is {recipient.algorithm}; encryption needs an ML-KEM-768 key")
    recipient.check_integrity()
    status = recipient.status(now)
    if status in (KeyStatus.EXPIRED, KeyStatus.REVOKED):
        raise CryptoError(f"key {recipient.key_id} is {status.value}; encrypt to a current ML-KEM-768 key")
    kem_ciphertext, shared_secret = _kem().encaps(recipient.public_bytes())
    key_id = recipient.key_id.encode()
    nonce = os.urandom(_NONCE_BYTES)
    header = MAGIC + bytes([VERSION, SUITE_MLKEM768_AES256GCM, len(key_id)]) + key_id + bytes(kem_ciphertext) + nonce
    try:
        body = AESGCM(_derive(bytes(shared_secret), context)).encrypt(nonce, plaintext, header)
    except OverflowError as exc:
        raise CryptoError(f"cannot encrypt {len(plaintext)} bytes in one envelope (limit 2 GiB)") from exc
    return header + body


def _parse(envelope: bytes) -> tuple[str, bytes, bytes, bytes, bytes]:
    if envelope[:4] != MAGIC:
        raise VerificationError("not a shadowgate encrypted envelope (bad magic)")
    if len(envelope) < 7 or envelope[4] != VERSION or envelope[5] != SUITE_MLKEM768_AES256GCM:
        raise VerificationError(f"unsupported envelope version/suite {envelope[4:6].hex()}")
    id_end = 7 + envelope[6]
    kem_end = id_end + _KEM_CT_BYTES
    header_end = kem_end + _NONCE_BYTES
    if len(envelope) < header_end + 16:
        raise VerificationError(f"envelope is truncated ({len(envelope)} bytes)")
    try:
        key_id = envelope[7:id_end].decode("ascii")
    except UnicodeDecodeError as exc:
        raise VerificationError("envelope key id is not ASCII (altered)") from exc
    return (
        key_id,
        envelope[:header_end],
        envelope[id_end:kem_end],
        envelope[kem_end:header_end],
        envelope[header_end:],
    )


def envelope_key_id(envelope: bytes) -> str:
    """The recipient key id written in the envelope header (unauthenticated until :func:`decrypt`)."""
    return _parse(envelope)[0]


def decrypt(
    envelope: bytes, secret_key: SecretBytes, *, key_id: str | None = None, context: bytes = DEFAULT_CONTEXT
) -> bytes:
    """Decrypt an envelope made by :func:`encrypt`; :class:`VerificationError` on any alteration."""
    named, header, kem_ciphertext, nonce, body = _parse(envelope)
    if key_id is not None and named != key_id:
        raise VerificationError(f"envelope is for key {named}, not {key_id}")
    secret = secret_key.get_secret_value()
    if len(secret) != spec(Algorithm.ML_KEM_768).secret_key_size:
        raise CryptoError(
            f"key {named}: ML-KEM-768 secret key must be {spec(Algorithm.ML_KEM_768).secret_key_size} bytes"
        )
    shared_secret = _kem().decaps(secret, kem_ciphertext)
    try:
        return AESGCM(_derive(bytes(shared_secret), context)).decrypt(nonce, body, header)
    except InvalidTag as exc:
        raise VerificationError(
            f"envelope for key {named} failed authentication: ciphertext, key or context altered"
        ) from exc
