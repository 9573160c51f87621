"""Scoring services check a model artifact's signed manifest through the SDK before loading it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import shadowgate
from governance.crypto import Keyring, sign_artifact
from governance.errors import VerificationError


def test_sdk_verifies_a_signed_artifact_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    keyring = Keyring(tmp_path / "keys")
    keyring.generate(now)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    sign_artifact(model, keyring.signer(now), now)
    trust: shadowgate.TrustStore = keyring.trust_store()
    verified = shadowgate.verify_artifact(model, trust, now)
    assert verified is not None
    model.write_bytes(b"weights" * 999 + b"weighTs")
    with pytest.raises(VerificationError):
        shadowgate.verify_artifact(model, trust, now)
