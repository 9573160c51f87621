"""The one classical (quantum-vulnerable) signature scheme, Ed25519, kept for dual mode only.

Spec 6.1 phases 1-2 allow a classical signature beside the post-quantum one; phase 3 blocks it
(:mod:`governance.crypto.schedule` enforces that). All classical code lives in this module so the crypto
inventory (``shadowgate crypto audit``) finds it in one reviewed place (``deploy/crypto-allowlist.yaml``)
and removing classical crypto means deleting this file.

Ed25519 has no context input, so domain separation follows FIPS 204's pure-mode encoding: the signed
bytes are ``0x00 || len(context) || context || message``.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from governance.errors import CryptoError, VerificationError

__all__ = ["NAME", "PUBLIC_KEY_SIZE", "SECRET_KEY_SIZE", "SIGNATURE_SIZE", "keygen", "sign", "verify"]

NAME = "Ed25519"
PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def _framed(message: bytes, context: bytes) -> bytes:
    if len(context) > 255:
        raise CryptoError(f"context is {len(context)} bytes; at most 255 are allowed")
    return b"\x00" + bytes([len(context)]) + context + message


def keygen() -> tuple[bytes, bytes]:
    """A fresh ``(public_key, secret_key)`` pair as raw 32-byte strings."""
    secret = Ed25519PrivateKey.generate()
    return secret.public_key().public_bytes_raw(), secret.private_bytes_raw()


def sign(secret_key: bytes, message: bytes, context: bytes) -> bytes:
    """Sign ``message`` under ``context``; raises :class:`CryptoError` for a malformed key."""
    try:
        secret = Ed25519PrivateKey.from_private_bytes(secret_key)
    except ValueError as exc:
        raise CryptoError(f"{NAME} secret key must be {SECRET_KEY_SIZE} bytes, got {len(secret_key)}") from exc
    return secret.sign(_framed(message, context))


def verify(public_key: bytes, message: bytes, signature: bytes, context: bytes) -> None:
    """Return if the signature verifies, else raise :class:`VerificationError` saying why."""
    try:
        public = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise VerificationError(f"{NAME} public key must be {PUBLIC_KEY_SIZE} bytes, got {len(public_key)}") from exc
    try:
        public.verify(signature, _framed(message, context))
    except InvalidSignature as exc:
        raise VerificationError(f"{NAME} signature does not verify") from exc
