"""Artifact manifests: digests against hashlib, any flipped byte of artifact or manifest fails."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance.crypto import (
    Context,
    KeyPolicy,
    Phase,
    Signer,
    TrustStore,
    generate_key,
    manifest_path_for,
    sign_artifact,
    sign_record,
    verify_artifact,
    verify_artifact_bytes,
)
from governance.crypto.algorithms import Algorithm
from governance.errors import VerificationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ARTIFACT = os.urandom(3 * (1 << 20) + 17)  # spans several 1 MiB hashing chunks


@pytest.fixture(scope="module")
def signer() -> Signer:
    info, secret = generate_key(Algorithm.ML_DSA_65, NOW - timedelta(days=1), KeyPolicy())
    return Signer(info, secret)


@pytest.fixture(scope="module")
def store(signer: Signer) -> TrustStore:
    return TrustStore([signer.key])


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("artifact") / "fraud-v7.onnx"
    path.write_bytes(ARTIFACT)
    manifest = sign_artifact(path, signer, NOW)
    return path, manifest.read_bytes()


def test_manifest_holds_both_digests_and_verifies(
    signed: tuple[Path, bytes], store: TrustStore, signer: Signer
) -> None:
    path, manifest = signed
    record: dict[str, Any] = orjson.loads(manifest)
    artifact = record["payload"]["artifact"]
    assert artifact == {
        "name": "fraud-v7.onnx",
        "size_bytes": len(ARTIFACT),
        "sha256": hashlib.sha256(ARTIFACT).hexdigest(),
        "sha3_256": hashlib.sha3_256(ARTIFACT).hexdigest(),
    }
    assert record["signature"]["key_id"] == signer.key_id
    assert record["signature"]["context"] == Context.ARTIFACT.value
    result = verify_artifact(path, store, NOW + timedelta(days=1))
    assert result.digest.sha3_256 == artifact["sha3_256"] and result.signature.key_id == signer.key_id
    assert verify_artifact_bytes(ARTIFACT, manifest_path_for(path), store, NOW).digest.size_bytes == len(ARTIFACT)


def test_renamed_copy_still_verifies(signed: tuple[Path, bytes], store: TrustStore, tmp_path: Path) -> None:
    copy = tmp_path / "model.bin"
    copy.write_bytes(ARTIFACT)
    verify_artifact(copy, store, NOW, manifest_path=manifest_path_for(signed[0]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, len(ARTIFACT) - 1), mask=st.integers(1, 255))
def test_any_flipped_artifact_byte_fails(
    signed: tuple[Path, bytes], store: TrustStore, tmp_path: Path, index: int, mask: int
) -> None:
    tampered = bytearray(ARTIFACT)
    tampered[index] ^= mask
    with pytest.raises(VerificationError, match="sha256 digest does not match"):
        verify_artifact_bytes(bytes(tampered), manifest_path_for(signed[0]), store, NOW)


def test_truncated_or_extended_artifact_fails_on_size(signed: tuple[Path, bytes], store: TrustStore) -> None:
    for data in (ARTIFACT[:-1], ARTIFACT + b"\x00"):
        with pytest.raises(VerificationError, match="size is"):
            verify_artifact_bytes(data, manifest_path_for(signed[0]), store, NOW)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_manifest_byte_fails(
    signed: tuple[Path, bytes], store: TrustStore, tmp_path: Path, data: st.DataObject
) -> None:
    manifest = signed[1]
    index = data.draw(st.integers(0, len(manifest) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = bytearray(manifest)
    tampered[index] ^= mask
    target = tmp_path / f"m-{index}-{mask}.json"
    target.write_bytes(bytes(tampered))
    with pytest.raises(VerificationError):
        verify_artifact_bytes(ARTIFACT, target, store, NOW)


def test_reformatted_manifest_is_refused(signed: tuple[Path, bytes], store: TrustStore, tmp_path: Path) -> None:
    pretty = tmp_path / "pretty.json"
    pretty.write_bytes(orjson.dumps(orjson.loads(signed[1]), option=orjson.OPT_INDENT_2))
    with pytest.raises(VerificationError, match="canonical form"):
        verify_artifact_bytes(ARTIFACT, pretty, store, NOW)


def test_event_signature_over_the_same_payload_cannot_pass_as_a_manifest(
    signed: tuple[Path, bytes], store: TrustStore, signer: Signer, tmp_path: Path
) -> None:
    payload = orjson.loads(signed[1])["payload"]
    forged = tmp_path / "forged.json"
    forged.write_bytes(
        orjson.dumps(sign_record(payload, Context.EVENT, signer, NOW), option=orjson.OPT_SORT_KEYS) + b"\n"
    )
    with pytest.raises(VerificationError, match="context shadowgate/event/v1, expected shadowgate/artifact/v1"):
        verify_artifact_bytes(ARTIFACT, forged, store, NOW)


def test_missing_manifest_and_untrusted_signer_fail(signed: tuple[Path, bytes], tmp_path: Path, signer: Signer) -> None:
    lonely = tmp_path / "lonely.bin"
    lonely.write_bytes(b"x")
    with pytest.raises(VerificationError, match="no manifest .*shadowgate sign"):
        verify_artifact(lonely, TrustStore([signer.key]), NOW)
    with pytest.raises(VerificationError, match=rf"key {signer.key_id} is not in the trust store"):
        verify_artifact(signed[0], TrustStore(), NOW, phase=Phase.PQC_ONLY)


def test_a_manifest_naming_an_unknown_canonicalization_is_a_verification_failure(
    signed: tuple[Path, bytes], store: TrustStore, tmp_path: Path
) -> None:
    # The byte flip hypothesis found in CI: "rfc8785" -> "sfc8785" raised a CryptoError nobody caught as
    # a failed verification.
    target = tmp_path / "canon.json"
    target.write_bytes(signed[1].replace(b'"canon":"rfc8785"', b'"canon":"sfc8785"'))
    assert target.read_bytes() != signed[1]
    with pytest.raises(VerificationError, match="sfc8785"):
        verify_artifact_bytes(ARTIFACT, target, store, NOW)
