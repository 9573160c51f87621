"""Algorithms: sizes against spec 6.2 / FIPS, round trips, context binding, single-byte tampering."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa as oracle_mldsa
from cryptography.hazmat.primitives.asymmetric import mlkem as oracle_mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from pqcrypto.kem import ml_kem_768
from pqcrypto.sign import ml_dsa_65, slh_dsa_sha2_128f

from governance.crypto import algorithms
from governance.crypto.algorithms import Algorithm, Kind, parse_algorithm, spec
from governance.errors import ConfigError, CryptoError, VerificationError

MESSAGE = b"model artifact bytes \x00\x01\x02" * 7
CONTEXT = b"shadowgate/test/v1"


@pytest.fixture(scope="module")
def mldsa() -> tuple[bytes, bytes]:
    return algorithms.keygen(Algorithm.ML_DSA_65)


@pytest.fixture(scope="module")
def mldsa_signature(mldsa: tuple[bytes, bytes]) -> bytes:
    return algorithms.sign(Algorithm.ML_DSA_65, mldsa[1], MESSAGE, CONTEXT)


def test_sizes_match_spec_table_and_fips() -> None:
    # Spec 6.2: Dilithium-3 key 1952 B, SPHINCS+-128f 17,088 B (signature), Kyber-768 1,088 B (ciphertext).
    assert spec(Algorithm.ML_DSA_65).public_key_size == 1952 == ml_dsa_65.PUBLIC_KEY_SIZE
    assert spec(Algorithm.ML_DSA_65).output_size == 3309 == ml_dsa_65.SIGNATURE_SIZE
    assert spec(Algorithm.SLH_DSA_SHA2_128F).output_size == 17088 == slh_dsa_sha2_128f.SIGNATURE_SIZE
    assert spec(Algorithm.ML_KEM_768).output_size == 1088
    for algorithm in (Algorithm.ML_DSA_65, Algorithm.ML_KEM_768, Algorithm.CLASSICAL):
        public, secret = algorithms.keygen(algorithm)
        assert (len(public), len(secret)) == (spec(algorithm).public_key_size, spec(algorithm).secret_key_size)


@pytest.mark.parametrize("algorithm", [Algorithm.ML_DSA_65, Algorithm.SLH_DSA_SHA2_128F, Algorithm.CLASSICAL])
def test_round_trip_each_signature_algorithm(algorithm: Algorithm) -> None:
    public, secret = algorithms.keygen(algorithm)
    signature = algorithms.sign(algorithm, secret, MESSAGE, CONTEXT)
    assert len(signature) == spec(algorithm).output_size
    algorithms.verify(algorithm, public, MESSAGE, signature, CONTEXT)
    with pytest.raises(VerificationError):
        algorithms.verify(algorithm, public, MESSAGE + b"!", signature, CONTEXT)
    with pytest.raises(VerificationError):
        algorithms.verify(algorithm, public, MESSAGE, signature, CONTEXT + b"x")
    other_public, _ = algorithms.keygen(algorithm)
    with pytest.raises(VerificationError):
        algorithms.verify(algorithm, other_public, MESSAGE, signature, CONTEXT)


def test_ml_dsa_interoperates_with_an_independent_fips_204_implementation(
    mldsa: tuple[bytes, bytes], mldsa_signature: bytes
) -> None:
    # pyca/cryptography's ML-DSA (a separate code base) is the oracle: our signature, with the context as
    # FIPS 204's ctx input, verifies there; its signatures verify here; neither accepts another context.
    oracle_public = oracle_mldsa.MLDSA65PublicKey.from_public_bytes(mldsa[0])
    oracle_public.verify(mldsa_signature, MESSAGE, CONTEXT)
    with pytest.raises(InvalidSignature):
        oracle_public.verify(mldsa_signature, MESSAGE, CONTEXT + b"x")
    oracle_secret = oracle_mldsa.MLDSA65PrivateKey.generate()
    foreign = oracle_secret.sign(MESSAGE, CONTEXT)
    foreign_public = oracle_secret.public_key().public_bytes_raw()
    algorithms.verify(Algorithm.ML_DSA_65, foreign_public, MESSAGE, foreign, CONTEXT)
    with pytest.raises(VerificationError):
        algorithms.verify(Algorithm.ML_DSA_65, foreign_public, MESSAGE, foreign, b"shadowgate/other/v1")


def test_ml_kem_interoperates_with_an_independent_fips_203_implementation() -> None:
    public, secret = algorithms.keygen(Algorithm.ML_KEM_768)
    shared, ciphertext = oracle_mlkem.MLKEM768PublicKey.from_public_bytes(public).encapsulate()
    assert len(ciphertext) == 1088
    assert ml_kem_768.decaps(secret, ciphertext) == shared


def test_classical_framing_follows_fips_204_pure_encoding() -> None:
    public, secret = algorithms.keygen(Algorithm.CLASSICAL)
    signature = algorithms.sign(Algorithm.CLASSICAL, secret, MESSAGE, CONTEXT)
    framed = b"\x00" + bytes([len(CONTEXT)]) + CONTEXT + MESSAGE
    Ed25519PublicKey.from_public_bytes(public).verify(signature, framed)  # raises if not


def test_signing_is_randomized_and_both_verify(mldsa: tuple[bytes, bytes]) -> None:
    first = algorithms.sign(Algorithm.ML_DSA_65, mldsa[1], MESSAGE, CONTEXT)
    second = algorithms.sign(Algorithm.ML_DSA_65, mldsa[1], MESSAGE, CONTEXT)
    assert first != second
    for signature in (first, second):
        algorithms.verify(Algorithm.ML_DSA_65, mldsa[0], MESSAGE, signature, CONTEXT)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_flipped_byte_of_signature_or_message_fails(
    mldsa: tuple[bytes, bytes], mldsa_signature: bytes, data: st.DataObject
) -> None:
    target = data.draw(st.sampled_from(["signature", "message"]))
    original = mldsa_signature if target == "signature" else MESSAGE
    index = data.draw(st.integers(0, len(original) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(original)
    tampered[index] ^= mask
    signature, message = (bytes(tampered), MESSAGE) if target == "signature" else (mldsa_signature, bytes(tampered))
    with pytest.raises(VerificationError):
        algorithms.verify(Algorithm.ML_DSA_65, mldsa[0], message, signature, CONTEXT)


def test_malformed_inputs_fail_closed(mldsa: tuple[bytes, bytes], mldsa_signature: bytes) -> None:
    with pytest.raises(VerificationError, match="3309 bytes"):
        algorithms.verify(Algorithm.ML_DSA_65, mldsa[0], MESSAGE, mldsa_signature[:-1], CONTEXT)
    with pytest.raises(VerificationError, match="1952 bytes"):
        algorithms.verify(Algorithm.ML_DSA_65, mldsa[0][:-1], MESSAGE, mldsa_signature, CONTEXT)
    with pytest.raises(CryptoError, match="255"):
        algorithms.sign(Algorithm.ML_DSA_65, mldsa[1], MESSAGE, b"c" * 256)
    with pytest.raises(CryptoError, match="secret key must be 4032 bytes"):
        algorithms.sign(Algorithm.ML_DSA_65, mldsa[1][:-1], MESSAGE, CONTEXT)
    with pytest.raises(CryptoError, match="key-encapsulation"):
        algorithms.sign(Algorithm.ML_KEM_768, b"k" * 2400, MESSAGE, CONTEXT)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Dilithium-3", Algorithm.ML_DSA_65),
        ("ml-dsa-65", Algorithm.ML_DSA_65),
        ("SPHINCS+-SHA256-128f", Algorithm.SLH_DSA_SHA2_128F),
        ("SLH-DSA-SHA2-128f", Algorithm.SLH_DSA_SHA2_128F),
        ("Kyber-768", Algorithm.ML_KEM_768),
        (" ML-KEM-768 ", Algorithm.ML_KEM_768),
    ],
)
def test_spec_names_map_to_fips_algorithms(name: str, expected: Algorithm) -> None:
    assert parse_algorithm(name) is expected


def test_unknown_algorithm_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown algorithm 'RSA-2048'.*ML-DSA-65"):
        parse_algorithm("RSA-2048")


def test_kinds_and_post_quantum_flags() -> None:
    assert [a for a in Algorithm if not spec(a).post_quantum] == [Algorithm.CLASSICAL]
    assert [a for a in Algorithm if spec(a).kind is Kind.KEM] == [Algorithm.ML_KEM_768]
