"""Hybrid encryption: round trips, exact envelope size, any altered byte or wrong key/context fails."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.crypto import KeyPolicy, decrypt, encrypt, envelope_key_id, generate_key
from governance.crypto.algorithms import Algorithm
from governance.errors import CryptoError, VerificationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
EVIDENCE = os.urandom(50_000)


@pytest.fixture(scope="module")
def kem() -> dict[str, Any]:
    info, secret = generate_key(Algorithm.ML_KEM_768, NOW - timedelta(days=1), KeyPolicy())
    other_info, other_secret = generate_key(Algorithm.ML_KEM_768, NOW - timedelta(days=1), KeyPolicy())
    envelope = encrypt(EVIDENCE, info, NOW)
    return {"info": info, "secret": secret, "other_secret": other_secret, "envelope": envelope}


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
def test_round_trip_and_exact_size(kem: dict[str, Any], size: int) -> None:
    plaintext = os.urandom(size)
    envelope = encrypt(plaintext, kem["info"], NOW)
    key_id = kem["info"].key_id
    # magic 4 + version 1 + suite 1 + id length 1 + id + ML-KEM-768 ciphertext 1088 + nonce 12 + body + tag 16
    assert len(envelope) == 4 + 1 + 1 + 1 + len(key_id) + 1088 + 12 + size + 16
    assert envelope_key_id(envelope) == key_id
    assert decrypt(envelope, kem["secret"], key_id=key_id) == plaintext


def test_two_encryptions_of_the_same_data_differ(kem: dict[str, Any]) -> None:
    first, second = encrypt(b"same", kem["info"], NOW), encrypt(b"same", kem["info"], NOW)
    assert first != second
    assert decrypt(first, kem["secret"]) == decrypt(second, kem["secret"]) == b"same"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_altered_byte_fails_without_releasing_plaintext(kem: dict[str, Any], data: st.DataObject) -> None:
    envelope: bytes = kem["envelope"]
    header_end = 7 + len(kem["info"].key_id) + 1088 + 12
    # Weight the header regions (magic, id, KEM ciphertext, nonce) as heavily as the body and tag.
    index = data.draw(st.integers(0, header_end + 40) | st.integers(0, len(envelope) - 1))
    index = min(index, len(envelope) - 1)
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(envelope)
    tampered[index] ^= mask
    with pytest.raises(VerificationError):
        decrypt(bytes(tampered), kem["secret"])


def test_wrong_key_wrong_context_and_truncation_fail(kem: dict[str, Any]) -> None:
    envelope = kem["envelope"]
    with pytest.raises(VerificationError, match="failed authentication"):
        decrypt(envelope, kem["other_secret"])
    with pytest.raises(VerificationError, match="failed authentication"):
        decrypt(envelope, kem["secret"], context=b"shadowgate/proofpack/v1")
    with pytest.raises(VerificationError, match="truncated"):
        decrypt(envelope[:1100], kem["secret"])
    with pytest.raises(VerificationError, match="not for key|is for key"):
        decrypt(envelope, kem["secret"], key_id="mlkem768-0000000000000000")
    with pytest.raises(VerificationError, match="bad magic"):
        decrypt(b"PK\x03\x04" + envelope[4:], kem["secret"])


def test_context_is_bound(kem: dict[str, Any]) -> None:
    envelope = encrypt(b"proofpack", kem["info"], NOW, context=b"shadowgate/proofpack/v1")
    assert decrypt(envelope, kem["secret"], context=b"shadowgate/proofpack/v1") == b"proofpack"


def test_encryption_refuses_revoked_expired_and_signature_keys(kem: dict[str, Any]) -> None:
    revoked = kem["info"].model_copy(update={"revoked_at": NOW, "revocation_reason": "lost laptop"})
    with pytest.raises(CryptoError, match="revoked"):
        encrypt(b"x", revoked, NOW)
    with pytest.raises(CryptoError, match="expired"):
        encrypt(b"x", kem["info"], kem["info"].expires_at)
    signing_info, _ = generate_key(Algorithm.ML_DSA_65, NOW, KeyPolicy())
    with pytest.raises(CryptoError, match="needs an ML-KEM-768 key"):
        encrypt(b"x", signing_info, NOW)
