"""The approved algorithms of spec 6.2 and one uniform call shape over them.

=====================  ============  =========  =========  ==========================================
algorithm              standard      public     secret     signature / ciphertext
=====================  ============  =========  =========  ==========================================
ML-DSA-65 (default)    FIPS 204      1952 B     4032 B     3309 B signature ("Dilithium-3" in spec 6.2)
SLH-DSA-SHA2-128f      FIPS 205      32 B       64 B       17088 B signature ("SPHINCS+-SHA256-128f")
ML-KEM-768             FIPS 203      1184 B     2400 B     1088 B ciphertext, 32 B shared secret
classical (Ed25519)    RFC 8032      32 B       32 B       64 B signature; dual mode, phases 1-2 only
=====================  ============  =========  =========  ==========================================

The spec names the round-3 submissions (Dilithium-3, SPHINCS+, Kyber-768); :func:`parse_algorithm` maps
those names to their FIPS successors, which is what pqcrypto 1.0 implements. Signing is randomized
(hedged), so two signatures of one message differ; both verify.

Every signature binds a context string (FIPS 204/205 ``ctx``, at most 255 bytes): a signature made under
one context never verifies under another. :func:`verify` fails closed: any malformed key or signature,
wrong length or wrong algorithm raises :class:`VerificationError`, never returns a boolean to ignore.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from governance.crypto import classical
from governance.errors import ConfigError, CryptoError, VerificationError

__all__ = [
    "Algorithm",
    "AlgorithmSpec",
    "Kind",
    "keygen",
    "parse_algorithm",
    "sign",
    "spec",
    "verify",
]


class Kind(StrEnum):
    SIGNATURE = "signature"
    KEM = "kem"


class Algorithm(StrEnum):
    """Algorithm names as written in records, manifests and the trust store."""

    ML_DSA_65 = "ML-DSA-65"
    SLH_DSA_SHA2_128F = "SLH-DSA-SHA2-128f"
    ML_KEM_768 = "ML-KEM-768"
    # Named by role, not by scheme, so the crypto inventory finds the classical scheme only in classical.py.
    CLASSICAL = classical.NAME


@dataclass(frozen=True)
class AlgorithmSpec:
    """Static facts about one algorithm; ``output_size`` is the signature or KEM ciphertext size."""

    algorithm: Algorithm
    kind: Kind
    post_quantum: bool
    standard: str
    slug: str
    public_key_size: int
    secret_key_size: int
    output_size: int


_SPECS: dict[Algorithm, AlgorithmSpec] = {
    Algorithm.ML_DSA_65: AlgorithmSpec(
        Algorithm.ML_DSA_65, Kind.SIGNATURE, True, "FIPS 204", "mldsa65", 1952, 4032, 3309
    ),
    Algorithm.SLH_DSA_SHA2_128F: AlgorithmSpec(
        Algorithm.SLH_DSA_SHA2_128F, Kind.SIGNATURE, True, "FIPS 205", "slhdsa128f", 32, 64, 17088
    ),
    Algorithm.ML_KEM_768: AlgorithmSpec(Algorithm.ML_KEM_768, Kind.KEM, True, "FIPS 203", "mlkem768", 1184, 2400, 1088),
    Algorithm.CLASSICAL: AlgorithmSpec(
        Algorithm.CLASSICAL,
        Kind.SIGNATURE,
        False,
        "RFC 8032",
        "classical",
        classical.PUBLIC_KEY_SIZE,
        classical.SECRET_KEY_SIZE,
        classical.SIGNATURE_SIZE,
    ),
}

_ALIASES: dict[str, Algorithm] = {
    "ml-dsa-65": Algorithm.ML_DSA_65,
    "mldsa65": Algorithm.ML_DSA_65,
    "dilithium-3": Algorithm.ML_DSA_65,
    "dilithium3": Algorithm.ML_DSA_65,
    "slh-dsa-sha2-128f": Algorithm.SLH_DSA_SHA2_128F,
    "slhdsa128f": Algorithm.SLH_DSA_SHA2_128F,
    "sphincs+-sha256-128f": Algorithm.SLH_DSA_SHA2_128F,
    "sphincs+-sha2-128f": Algorithm.SLH_DSA_SHA2_128F,
    "ml-kem-768": Algorithm.ML_KEM_768,
    "mlkem768": Algorithm.ML_KEM_768,
    "kyber-768": Algorithm.ML_KEM_768,
    "kyber768": Algorithm.ML_KEM_768,
    classical.NAME.lower(): Algorithm.CLASSICAL,
    "classical": Algorithm.CLASSICAL,
}


def parse_algorithm(name: str) -> Algorithm:
    """The algorithm for a FIPS name, spec 6.2 name or slug (any case); :class:`ConfigError` if unknown."""
    found = _ALIASES.get(name.strip().lower())
    if found is None:
        accepted = ", ".join(sorted({a.value for a in Algorithm} | {"Dilithium-3", "SPHINCS+-SHA256-128f"}))
        raise ConfigError(f"unknown algorithm {name!r}; use one of: {accepted}")
    return found


def spec(algorithm: Algorithm) -> AlgorithmSpec:
    """Sizes, kind and standard of ``algorithm``."""
    return _SPECS[algorithm]


def _pq_module(algorithm: Algorithm) -> Any:
    # Imported on first use so that `import governance.crypto` loads no native code.
    if algorithm is Algorithm.ML_DSA_65:
        from pqcrypto.sign import ml_dsa_65

        return ml_dsa_65
    if algorithm is Algorithm.SLH_DSA_SHA2_128F:
        from pqcrypto.sign import slh_dsa_sha2_128f

        return slh_dsa_sha2_128f
    if algorithm is Algorithm.ML_KEM_768:
        from pqcrypto.kem import ml_kem_768

        return ml_kem_768
    raise CryptoError(f"{algorithm} is not a post-quantum algorithm")


def keygen(algorithm: Algorithm) -> tuple[bytes, bytes]:
    """A fresh ``(public_key, secret_key)`` pair for any algorithm, signature or KEM."""
    if algorithm is Algorithm.CLASSICAL:
        return classical.keygen()
    public_key, secret_key = _pq_module(algorithm).keygen()
    return bytes(public_key), bytes(secret_key)


def _require_signature(algorithm: Algorithm) -> None:
    if _SPECS[algorithm].kind is not Kind.SIGNATURE:
        raise CryptoError(f"{algorithm} is a key-encapsulation algorithm and cannot sign or verify")


def sign(algorithm: Algorithm, secret_key: bytes, message: bytes, context: bytes) -> bytes:
    """Sign ``message`` under ``context`` (<= 255 bytes); ~10 ms of CPU with the GIL held (pqcrypto 1.0)."""
    _require_signature(algorithm)
    if len(context) > 255:
        raise CryptoError(f"context is {len(context)} bytes; FIPS 204/205 allow at most 255")
    if algorithm is Algorithm.CLASSICAL:
        return classical.sign(secret_key, message, context)
    expected = _SPECS[algorithm].secret_key_size
    if len(secret_key) != expected:
        raise CryptoError(f"{algorithm} secret key must be {expected} bytes, got {len(secret_key)}")
    return bytes(_pq_module(algorithm).sign(secret_key, message, context=context))


def verify(algorithm: Algorithm, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> None:
    """Return if ``signature`` verifies ``message`` under ``context``; else :class:`VerificationError`."""
    _require_signature(algorithm)
    if algorithm is Algorithm.CLASSICAL:
        classical.verify(public_key, message, signature, context)
        return
    facts = _SPECS[algorithm]
    if len(public_key) != facts.public_key_size:
        raise VerificationError(f"{algorithm} public key must be {facts.public_key_size} bytes, got {len(public_key)}")
    if len(signature) != facts.output_size:
        raise VerificationError(f"{algorithm} signature must be {facts.output_size} bytes, got {len(signature)}")
    if len(context) > 255:
        raise VerificationError(f"context is {len(context)} bytes; FIPS 204/205 allow at most 255")
    from pqcrypto import InvalidSignatureError

    try:
        result = _pq_module(algorithm).verify(public_key, message, signature, context=context)
    except (InvalidSignatureError, ValueError) as exc:
        raise VerificationError(f"{algorithm} signature does not verify ({exc})") from exc
    if result is False:  # pqcrypto 1.0 raises; a future boolean return must not pass silently
        raise VerificationError(f"{algorithm} signature does not verify")
