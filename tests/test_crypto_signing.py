"""Signer, Verifier and signed records: contexts, tampering, re-attribution, async signing, no secret leaks."""

from __future__ import annotations

import base64
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import SecretBytes

from governance.crypto import (
    Context,
    KeyPolicy,
    Phase,
    Signature,
    Signer,
    TrustStore,
    Verifier,
    generate_key,
    sign_record,
    sign_record_async,
    verify_record,
)
from governance.crypto.algorithms import Algorithm
from governance.crypto.canonical import canonical_bytes
from governance.errors import CryptoError, VerificationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PAYLOAD = {"event": "GateReady", "model": "fraud-v7", "auc": 0.81, "checks": ["brier", "auc"]}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    info, secret = generate_key(Algorithm.ML_DSA_65, NOW - timedelta(days=1), KeyPolicy())
    other_info, other_secret = generate_key(Algorithm.ML_DSA_65, NOW - timedelta(days=1), KeyPolicy())
    return {
        "signer": Signer(info, secret),
        "other": Signer(other_info, other_secret),
        "store": TrustStore([info, other_info]),
        "secret": secret,
    }


def _roundtrip(record: dict[str, Any]) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(orjson.dumps(record))
    return decoded


def test_record_round_trip_through_json(keys: dict[str, Any]) -> None:
    record = sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW)
    assert set(record) == {"payload", "signature"}
    assert record["signature"]["alg"] == "ML-DSA-65"
    assert record["signature"]["signed_at"] == "2026-11-26T12:00:00.000000+00:00"
    assert verify_record(_roundtrip(record), Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY) == PAYLOAD


@pytest.mark.parametrize("signed_as", list(Context))
def test_a_signature_of_one_context_never_verifies_as_another(keys: dict[str, Any], signed_as: Context) -> None:
    record = sign_record(PAYLOAD, signed_as, keys["signer"], NOW)
    for other in Context:
        if other is signed_as:
            continue
        with pytest.raises(VerificationError, match="context"):
            verify_record(record, other, keys["store"], NOW, Phase.PQC_ONLY)
        relabelled = _roundtrip(record)
        relabelled["signature"]["context"] = other.value  # rewriting the label does not help: ctx is signed
        with pytest.raises(VerificationError, match="does not verify"):
            verify_record(relabelled, other, keys["store"], NOW, Phase.PQC_ONLY)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("payload", "auc"), 0.82),
        (("payload", "extra"), True),
        (("signature", "signed_at"), "2026-11-26T12:00:00.000001+00:00"),
    ],
)
def test_changing_a_signed_field_fails(keys: dict[str, Any], path: tuple[str, str], value: Any) -> None:
    record = _roundtrip(sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW))
    record[path[0]][path[1]] = value
    with pytest.raises(VerificationError, match=keys["signer"].key_id):
        verify_record(record, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)


def test_signature_cannot_be_reattributed_to_another_trusted_key(keys: dict[str, Any]) -> None:
    record = _roundtrip(sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW))
    record["signature"]["key_id"] = keys["other"].key_id
    with pytest.raises(VerificationError, match=keys["other"].key_id):
        verify_record(record, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)


def test_flipped_signature_byte_and_noncanonical_base64_fail(keys: dict[str, Any]) -> None:
    record = _roundtrip(sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW))
    raw = bytearray(base64.b64decode(record["signature"]["sig"]))
    raw[1000] ^= 0x10
    flipped = _roundtrip(record)
    flipped["signature"]["sig"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(VerificationError, match="does not verify"):
        verify_record(flipped, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)
    spaced = _roundtrip(record)
    spaced["signature"]["sig"] = " " + record["signature"]["sig"]
    with pytest.raises(VerificationError, match="base64"):
        verify_record(spaced, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)


def test_noncanonical_signed_at_text_is_refused(keys: dict[str, Any]) -> None:
    record = _roundtrip(sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW))
    record["signature"]["signed_at"] = "2026-11-26X12:00:00.000000+00:00"  # same instant to fromisoformat
    with pytest.raises(VerificationError, match="canonical"):
        verify_record(record, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)


def test_unknown_key_and_future_dated_signatures_fail_closed(keys: dict[str, Any]) -> None:
    record = sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW)
    with pytest.raises(VerificationError, match=rf"key {keys['signer'].key_id} is not in the trust store"):
        verify_record(record, Context.EVENT, TrustStore([keys["other"].key]), NOW, Phase.PQC_ONLY)
    future = sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW + timedelta(hours=1))
    with pytest.raises(VerificationError, match="in the future"):
        verify_record(future, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)


def test_record_shape_is_checked(keys: dict[str, Any]) -> None:
    record = _roundtrip(sign_record(PAYLOAD, Context.EVENT, keys["signer"], NOW))
    with pytest.raises(VerificationError, match="unknown fields"):
        verify_record({**record, "note": 1}, Context.EVENT, keys["store"], NOW, Phase.PQC_ONLY)
    with pytest.raises(VerificationError, match="no signature"):
        verify_record({"payload": PAYLOAD}, Context.EVENT, keys["store"], NOW, Phase.ASSESSMENT)
    with pytest.raises(CryptoError, match="JSON object"):
        sign_record([1, 2], Context.EVENT, keys["signer"], NOW)  # type: ignore[arg-type]


def test_verifier_returns_the_signing_key(keys: dict[str, Any]) -> None:
    message = canonical_bytes(PAYLOAD)
    block = keys["signer"].sign(message, Context.APPROVAL, NOW)
    assert Verifier(keys["store"]).verify(message, block, Context.APPROVAL, NOW).key_id == keys["signer"].key_id
    assert Signature.model_validate(block.model_dump(mode="json")) == block


def test_secrets_never_appear_in_repr_str_or_logs(keys: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    signer: Signer = keys["signer"]
    secret: bytes = keys["secret"].get_secret_value()
    texts = [repr(signer), str(signer), repr(keys["secret"]), str(keys["secret"]), repr(signer.key)]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("signer %s %r", signer, signer.__dict__)
    texts.append(caplog.text)
    # ML-DSA secret keys start with rho, which the public key shares; bytes 32-64 (K) are truly secret.
    needles = [secret.hex()[64:128], base64.b64encode(secret).decode()[44:84], repr(secret[32:64])[2:40]]
    for text in texts:
        for needle in needles:
            assert needle not in text
    assert signer.key_id in repr(signer)


def test_a_secret_that_does_not_match_the_public_key_is_refused(keys: dict[str, Any]) -> None:
    _, stray = generate_key(Algorithm.ML_DSA_65, NOW, KeyPolicy())
    with pytest.raises(CryptoError, match="does not match its public key"):
        Signer(keys["signer"].key, stray)
    with pytest.raises(CryptoError, match="cannot sign"):
        kem_info, kem_secret = generate_key(Algorithm.ML_KEM_768, NOW, KeyPolicy())
        Signer(kem_info, kem_secret)
    assert isinstance(keys["secret"], SecretBytes)


async def test_async_signing_in_thread_and_process_pools(keys: dict[str, Any]) -> None:
    with ThreadPoolExecutor(max_workers=1) as threads:
        record = await sign_record_async(PAYLOAD, Context.AUDIT_ENTRY, keys["signer"], NOW, executor=threads)
    assert verify_record(record, Context.AUDIT_ENTRY, keys["store"], NOW, Phase.PQC_ONLY) == PAYLOAD
    record = await sign_record_async(PAYLOAD, Context.AUDIT_ENTRY, keys["signer"], NOW)  # loop default executor
    assert verify_record(record, Context.AUDIT_ENTRY, keys["store"], NOW, Phase.PQC_ONLY) == PAYLOAD
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as processes:
        block = await keys["signer"].sign_async(b"proofpack bytes", Context.PROOFPACK, NOW, processes)
    Verifier(keys["store"]).verify(b"proofpack bytes", block, Context.PROOFPACK, NOW)
