"""CLI: keys, sign/verify, encrypt/decrypt, schedule via CliRunner, and the real `shadowgate` script once."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from governance.crypto import Keyring, TrustStore
from governance.errors import ConfigError, VerificationError
from shadowgate.cli import cli

REPO = Path(__file__).resolve().parents[1]
Run = Callable[..., Result]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    runner = CliRunner()
    env = {"SHADOWGATE_KEYS_DIR": str(tmp_path / "keys"), "SHADOWGATE_PQC_PHASE": None}

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, list(args), env=env)

    return invoke


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_keys_lifecycle(run: Run, tmp_path: Path) -> None:
    first = _ok(run("keys", "generate")).split()[3]
    assert first.startswith("mldsa65-")
    listing = _ok(run("keys", "list"))
    assert first in listing and "active" in listing
    rotated = _ok(run("keys", "rotate"))
    new = rotated.splitlines()[0].split()[-1]
    assert f"retired {first}" in rotated and new != first
    listing = _ok(run("keys", "list"))
    assert f"{first}" in listing and "retired" in listing
    exported = tmp_path / "trust.json"
    _ok(run("keys", "export-public", new, "-o", str(exported)))
    store = TrustStore.load(exported)
    assert [k.key_id for k in store] == [new]
    assert b"private" not in exported.read_bytes()
    everything = orjson.loads(_ok(run("keys", "export-public")))
    assert {k["key_id"] for k in everything["keys"]} == {first, new}
    revoked = _ok(run("keys", "revoke", new, "--reason", "test revocation"))
    assert f"revoked {new}: test revocation" in revoked
    assert "warning: no active ML-DSA-65 key is left: run `shadowgate keys generate`" in revoked
    _ok(run("keys", "generate"))  # nothing active after the revocation, so generate works again
    blocked = run("keys", "generate", "--algorithm", "classical")
    assert isinstance(blocked.exception, ConfigError) and "blocked in Phase 3" in str(blocked.exception)


def test_sign_verify_and_tamper(run: Run, tmp_path: Path) -> None:
    _ok(run("keys", "generate"))
    model = tmp_path / "model.onnx"
    model.write_bytes(os.urandom(4096))
    signed = _ok(run("sign", str(model)))
    assert str(model) + ".manifest.json" in signed
    verified = _ok(run("verify", str(model)))
    assert verified.startswith(f"verified {model}: ML-DSA-65 key mldsa65-")
    other_keys = tmp_path / "elsewhere"
    exported = tmp_path / "trust.json"
    _ok(run("keys", "export-public", "-o", str(exported)))
    _ok(CliRunner().invoke(cli, ["verify", "--keys-dir", str(other_keys), "--trust-store", str(exported), str(model)]))
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.write_bytes(bytes(data))
    failed = run("verify", str(model))
    assert failed.exit_code != 0
    assert isinstance(failed.exception, VerificationError)
    assert "sha256 digest does not match" in str(failed.exception)


def test_encrypt_decrypt(run: Run, tmp_path: Path) -> None:
    _ok(run("keys", "generate", "--algorithm", "ML-KEM-768"))
    evidence = tmp_path / "proofpack.json"
    evidence.write_bytes(b'{"gates": "all passed"}')
    _ok(run("encrypt", str(evidence)))
    envelope = tmp_path / "proofpack.json.enc"
    assert envelope.exists() and b"all passed" not in envelope.read_bytes()
    out = tmp_path / "restored.json"
    _ok(run("decrypt", str(envelope), "-o", str(out)))
    assert out.read_bytes() == evidence.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = run("decrypt", str(envelope), "-o", str(out))
    assert isinstance(again.exception, ConfigError) and "--force" in str(again.exception)
    tampered = bytearray(envelope.read_bytes())
    tampered[-1] ^= 0x80
    envelope.write_bytes(bytes(tampered))
    broken = run("decrypt", str(envelope), "-o", str(tmp_path / "x"), "--force")
    assert isinstance(broken.exception, VerificationError)
    assert not (tmp_path / "x").exists()


def test_schedule_shows_phase_3_today_and_pins(run: Run) -> None:
    today = _ok(run("crypto", "schedule"))
    assert "-> Phase 3: PQC-Only" in today and today.rstrip().endswith("in force: Phase 3: PQC-Only")
    pinned = _ok(run("crypto", "schedule", "--phase", "1"))
    assert "in force: Phase 1: Dual-Mode (pinned; the date says phase 3)" in pinned


def test_real_shadowgate_script_exits_2_with_one_line_on_a_tampered_artifact(tmp_path: Path) -> None:
    script = shutil.which("shadowgate")
    assert script is not None, "the shadowgate console script is not installed (pip install -e .)"
    env = {
        **os.environ,
        "SHADOWGATE_KEYS_DIR": str(tmp_path / "keys"),
        # Import this checkout even if the editable install points at another copy of the repository.
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env.pop("SHADOWGATE_PQC_PHASE", None)
    Keyring(tmp_path / "keys").generate(datetime.now(UTC))
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)

    def shadowgate(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=120, check=False)

    signed = shadowgate("sign", str(model))
    assert signed.returncode == 0, signed.stderr
    assert shadowgate("verify", str(model)).returncode == 0
    model.write_bytes(b"weights" * 999 + b"weighTs")
    failed = shadowgate("verify", str(model))
    assert failed.returncode == 2
    assert failed.stdout == ""
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"shadowgate: error: artifact {model}: sha256 digest does not match")
