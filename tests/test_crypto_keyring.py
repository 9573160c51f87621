"""Keyring on disk: file modes, rotation with overlap, expiry, revocation, trust-store integrity, locking."""

from __future__ import annotations

import base64
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from governance.crypto import (
    Context,
    KeyPolicy,
    Keyring,
    KeyStatus,
    Phase,
    Signer,
    TrustStore,
    sign_record,
    verify_record,
)
from governance.crypto.algorithms import Algorithm
from governance.errors import ConfigError, CryptoError, VerificationError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PAYLOAD = {"event": "RollbackTrigger", "model": "fraud-v7"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_writes_a_0600_secret_and_a_public_only_trust_store(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path / "keys")
    info = keyring.generate(NOW)
    secret_file = tmp_path / "keys" / "private" / f"{info.key_id}.key"
    assert _mode(secret_file) == 0o600
    assert _mode(tmp_path / "keys" / "private") == 0o700
    secret = secret_file.read_bytes()
    assert len(secret) == 4032
    store_text = keyring.trust_store_path.read_bytes()
    assert secret[32:64].hex() not in store_text.decode()
    assert base64.b64encode(secret).decode()[44:84] not in store_text.decode()
    assert info.rotate_after == NOW + timedelta(days=90)
    assert info.expires_at == NOW + timedelta(days=97)
    assert [k.key_id for k in keyring.list_keys()] == [info.key_id]
    assert str(tmp_path) in repr(keyring) and "private" not in repr(keyring)


def test_generate_refuses_a_second_active_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    first = keyring.generate(NOW)
    with pytest.raises(ConfigError, match=rf"active ML-DSA-65 key {first.key_id} exists.*keys rotate"):
        keyring.generate(NOW)


def test_rotation_keeps_old_records_verifiable_and_new_records_use_the_new_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    old = keyring.generate(NOW)
    old_record = sign_record(PAYLOAD, Context.EVENT, keyring.signer(NOW), NOW)
    rotated_at = NOW + timedelta(days=90)
    new, retired = keyring.rotate(rotated_at)
    assert [k.key_id for k in retired] == [old.key_id]
    assert retired[0].retired_at == rotated_at and retired[0].expires_at == rotated_at + timedelta(days=7)
    signer = keyring.signer(rotated_at)
    assert signer.key_id == new.key_id != old.key_id
    new_record = sign_record(PAYLOAD, Context.EVENT, signer, rotated_at)
    assert new_record["signature"]["key_id"] == new.key_id
    much_later = NOW + timedelta(days=400)  # both keys long past their signing windows
    store = keyring.trust_store()
    assert verify_record(old_record, Context.EVENT, store, much_later, Phase.PQC_ONLY) == PAYLOAD
    assert verify_record(new_record, Context.EVENT, store, much_later, Phase.PQC_ONLY) == PAYLOAD
    statuses = {k.key_id: k.status(rotated_at + timedelta(days=1)) for k in store}
    assert statuses == {old.key_id: KeyStatus.RETIRED, new.key_id: KeyStatus.ACTIVE}


def test_retired_key_verifies_during_overlap_and_fails_after_expiry_naming_the_key(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    old = keyring.generate(NOW)
    stale_signer = keyring.signer(NOW)  # a worker still holding the old key
    keyring.rotate(NOW + timedelta(days=10))
    store = keyring.trust_store()
    in_overlap = NOW + timedelta(days=16)
    record = sign_record(
        PAYLOAD, Context.EVENT, Signer(store.get(old.key_id), keyring.secret_key(old.key_id)), in_overlap
    )
    assert verify_record(record, Context.EVENT, store, in_overlap, Phase.PQC_ONLY) == PAYLOAD
    too_late = NOW + timedelta(days=17, seconds=1)
    with pytest.raises(CryptoError, match=rf"key {old.key_id} is expired"):
        Signer(store.get(old.key_id), keyring.secret_key(old.key_id)).sign(b"x", Context.EVENT, too_late)
    # The stale signer still believes its original expiry; the verifier's trust store knows better.
    late_record = sign_record(PAYLOAD, Context.EVENT, stale_signer, too_late)
    with pytest.raises(VerificationError, match=rf"key {old.key_id} expired at 2026-12-13T12:00:00\+00:00"):
        verify_record(late_record, Context.EVENT, store, too_late, Phase.PQC_ONLY)


def test_expired_key_that_was_never_rotated_fails(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path, KeyPolicy(rotation_days=30, overlap_days=1))
    info = keyring.generate(NOW)
    expiry = NOW + timedelta(days=31)
    assert info.status(expiry) is KeyStatus.EXPIRED
    with pytest.raises(CryptoError, match=r"no active ML-DSA-65 key.*keys rotate"):
        keyring.signer(expiry)
    extended = Signer(
        info.model_copy(update={"expires_at": expiry + timedelta(days=1)}), keyring.secret_key(info.key_id)
    )
    record = sign_record(PAYLOAD, Context.APPROVAL, extended, expiry)
    with pytest.raises(VerificationError, match=rf"key {info.key_id} expired at"):
        verify_record(record, Context.APPROVAL, keyring.trust_store(), expiry, Phase.PQC_ONLY)


def test_revocation_takes_effect_from_its_time_and_names_key_and_reason(tmp_path: Path) -> None:
    """Signatures dated before the revocation stay verifiable (the past is not broken); later ones fail,
    even from a leaked copy of the secret; a strict verifier (live inputs) refuses every one of them."""
    from governance.crypto import Verifier

    keyring = Keyring(tmp_path)
    info = keyring.generate(NOW)
    leaked = keyring.signer(NOW)  # a copy of the secret, as an attacker who stole it would hold it
    record = sign_record(PAYLOAD, Context.EVENT, leaked, NOW)
    revoked_at = NOW + timedelta(hours=1)
    keyring.revoke(info.key_id, revoked_at, "key file leaked in a backup")
    assert not (tmp_path / "private" / f"{info.key_id}.key").exists()
    later = NOW + timedelta(hours=2)
    store = keyring.trust_store()
    assert verify_record(record, Context.EVENT, store, later, Phase.PQC_ONLY) == PAYLOAD
    forged = sign_record(PAYLOAD, Context.EVENT, leaked, revoked_at)  # dated at the revocation: refused
    with pytest.raises(VerificationError, match=rf"key {info.key_id} was revoked at .*: key file leaked in a backup"):
        verify_record(forged, Context.EVENT, store, later, Phase.PQC_ONLY)
    with pytest.raises(VerificationError, match=rf"key {info.key_id} was revoked at"):
        verify_record(record, Context.EVENT, store, later, Phase.PQC_ONLY,
                      verifier=Verifier(store, strict_revocation=True))
    with pytest.raises(CryptoError, match="no active"):
        keyring.signer(later)
    with pytest.raises(ConfigError, match="already revoked"):
        keyring.revoke(info.key_id, NOW, "again please")
    with pytest.raises(ConfigError, match="not in"):
        keyring.revoke("mldsa65-0000000000000000", NOW, "no such key")


def test_secret_readable_by_others_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    info = keyring.generate(NOW)
    secret_file = tmp_path / "private" / f"{info.key_id}.key"
    os.chmod(secret_file, 0o644)
    with pytest.raises(ConfigError, match=rf"mode 644; run `chmod 600 {secret_file}`"):
        keyring.signer(NOW)


def test_trust_store_with_a_swapped_public_key_is_refused(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    first = keyring.generate(NOW)
    second = keyring.generate(NOW, Algorithm.SLH_DSA_SHA2_128F)
    document = orjson.loads(keyring.trust_store_path.read_bytes())
    keys = {k["key_id"]: k for k in document["keys"]}
    keys[first.key_id]["public_key"] = base64.b64encode(os.urandom(1952)).decode()
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(orjson.dumps(document))
    with pytest.raises(VerificationError, match=rf"key {first.key_id}: public key does not match its id"):
        TrustStore.load(tampered)
    assert second.key_id.startswith("slhdsa128f-")


def test_rotate_if_due(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    first = keyring.rotate_if_due(NOW)  # nothing active: makes one
    assert first is not None
    assert keyring.rotate_if_due(NOW + timedelta(days=89)) is None
    second = keyring.rotate_if_due(NOW + timedelta(days=90))
    assert second is not None and second.key_id != first.key_id


def test_concurrent_rotations_serialize(tmp_path: Path) -> None:
    keyring = Keyring(tmp_path)
    keyring.generate(NOW)
    errors: list[BaseException] = []

    def rotate() -> None:
        try:
            Keyring(tmp_path).rotate(NOW + timedelta(days=1))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=rotate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    keys = keyring.list_keys()
    assert len(keys) == 5  # no rotation lost its write
    active = [k for k in keys if k.status(NOW + timedelta(days=1)) is KeyStatus.ACTIVE]
    assert len(active) == 1


def test_key_policy_from_spec_and_policy_shapes() -> None:
    spec_block = {
        "model_signing": {"algorithm": "Dilithium-3", "key_rotation": "90 days", "signature_verification": "MANDATORY"}
    }
    assert KeyPolicy.from_spec(spec_block) == KeyPolicy(algorithm=Algorithm.ML_DSA_65, rotation_days=90)
    assert KeyPolicy.from_spec({"algorithm": "SLH-DSA-SHA2-128f", "key_rotation_days": 30}).rotation_days == 30
    with pytest.raises(ConfigError, match="only 'MANDATORY'"):
        KeyPolicy.from_spec({"signature_verification": "OPTIONAL"})
    with pytest.raises(ConfigError, match="not a post-quantum signature"):
        KeyPolicy.from_spec({"algorithm": "Kyber-768"})
    with pytest.raises(ConfigError, match="not like '90 days'"):
        KeyPolicy.from_spec({"key_rotation": "quarterly"})
