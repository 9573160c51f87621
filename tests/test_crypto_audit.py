"""Crypto inventory: planted quantum-vulnerable uses are found with file and line; AES/SHA/PQC are not."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from governance.crypto import DEFAULT_SCHEDULE, Allowlist, Phase, audit
from governance.crypto.audit import AllowEntry, scan_text
from governance.errors import ConfigError
from shadowgate.commands.crypto import crypto

REPO = Path(__file__).resolve().parents[1]

PLANTED_PY = '''"""Module docstring mentioning RSA and ECDSA is not a use."""
import hashlib
from cryptography.hazmat.primitives.asymmetric import rsa, padding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

def make_keys():
    """RSA-2048 in a docstring is a mention."""
    # ECDSA in a comment is a mention
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    curve = ec.generate_private_key(ec.SECP256R1())
    sig = curve.sign(b"m", ec.ECDSA(hashes.SHA256()))
    shared = curve.exchange(ec.ECDH(), peer)
    box = AESGCM(AESGCM.generate_key(bit_length=256))
    digest = hashlib.sha256(b"x").hexdigest() + hashlib.sha3_256(b"x").hexdigest()
    return key, sig, shared, box, digest
'''

PLANTED_MORE = """from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pqcrypto.sign import ml_dsa_65, slh_dsa_sha2_128f
alg = "ML-DSA-65"; other = "SLH-DSA-SHA2-128f"; pre = "HashML-DSA"; universal = "traversal"
k = dsa.generate_private_key(key_size=2048)
"""

PLANTED_YAML = """# jwt settings (RSA in a comment)
jwt:
  algorithm: RS256
tls:
  ciphers: AES256-GCM-SHA384
signing:
  algorithm: ML-DSA-65
"""

BROKEN_PY = "def broken(:\n    # ECDSA even in a comment counts when the file does not parse\n"

EXPECTED = {
    ("app/keys.py", 3, "RSA"),
    ("app/keys.py", 4, "EC"),
    ("app/keys.py", 10, "RSA"),
    ("app/keys.py", 11, "EC"),
    ("app/keys.py", 12, "ECDSA"),
    ("app/keys.py", 13, "ECDH"),
    ("app/more.py", 1, "DSA"),
    ("app/more.py", 2, "Ed25519"),
    ("app/more.py", 3, "X25519"),
    ("app/more.py", 6, "DSA"),
    ("config/auth.yaml", 3, "RSA"),
    ("app/broken.py", 2, "ECDSA"),
}


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "app" / "keys.py").write_text(PLANTED_PY)
    (tmp_path / "app" / "more.py").write_text(PLANTED_MORE)
    (tmp_path / "app" / "broken.py").write_text(BROKEN_PY)
    (tmp_path / "config" / "auth.yaml").write_text(PLANTED_YAML)
    (tmp_path / "README.md").write_text("We migrated from RSA and ECDSA.\n")  # docs are not scanned
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "hook.py").write_text("import rsa\n")  # excluded directory
    return tmp_path


def test_finds_every_planted_use_with_file_and_line_and_nothing_else(planted: Path) -> None:
    report = audit(planted)
    assert {(f.path, f.line, f.algorithm) for f in report.findings} == EXPECTED
    assert report.files_scanned == 4
    assert all(not f.allowed for f in report.findings)
    snippet = next(f.snippet for f in report.findings if (f.path, f.line) == ("app/keys.py", 10))
    assert snippet.startswith("key = rsa.generate_private_key(")


def test_symmetric_hashes_and_pqc_are_not_findings() -> None:
    clean = (
        "from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305\n"
        "import hmac, hashlib\n"
        "h = hashlib.sha3_256(); m = hmac.new(k, d, hashlib.sha512)\n"
        "from pqcrypto.kem import ml_kem_768\n"
        "ALG = 'ML-KEM-768'; SIG = 'ML-DSA-65'; ctx = 'shadowgate/artifact/v1'\n"
        "parse = versatile = 'universal traversal'\n"
    )
    assert scan_text(clean, python=True) == []


def test_random_base64_keys_are_not_findings() -> None:
    blob = "\n".join(f'"public_key": "{base64.b64encode(os.urandom(1952)).decode()}"' for _ in range(50))
    assert scan_text(blob, python=False) == []


def test_allowlist_marks_findings_allowed_and_reports_unused_entries(planted: Path) -> None:
    allowlist = Allowlist(
        allow=(
            AllowEntry(path="app/more.py", algorithms=("Ed25519",), reason="dual-mode classical signature, reviewed"),
            AllowEntry(path="config/*.yaml", reason="third-party IdP still issues RS256 tokens"),
            AllowEntry(path="legacy/*.py", reason="nothing lives here any more"),
        )
    )
    report = audit(planted, allowlist)
    allowed = {(f.path, f.algorithm) for f in report.findings if f.allowed}
    assert allowed == {("app/more.py", "Ed25519"), ("config/auth.yaml", "RSA")}
    assert len(report.unallowed) == len(EXPECTED) - 2  # the DSA and X25519 lines of more.py stay findings
    assert [e.path for e in report.unused_allow] == ["legacy/*.py"]
    assert report.blocking(DEFAULT_SCHEDULE.enforcement(Phase.PQC_ONLY)) == report.unallowed
    for phase in (Phase.ASSESSMENT, Phase.DUAL_MODE, Phase.PRIMARY_PQC):
        assert report.blocking(DEFAULT_SCHEDULE.enforcement(phase)) == []


def test_allowlist_entries_need_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "allow.yaml"
    path.write_text("allow:\n  - path: app/*.py\n")
    with pytest.raises(ConfigError, match="reason"):
        Allowlist.load(path)


def test_cli_exits_non_zero_in_phase_3_only(planted: Path) -> None:
    runner = CliRunner()
    failing = runner.invoke(crypto, ["audit", "--phase", "3", str(planted)])
    assert failing.exit_code == 1
    assert "app/keys.py:10: RSA:" in failing.output
    assert "12 findings, 0 allowed, 12 blocking" in failing.output
    assert "crypto audit failed: 12 quantum-vulnerable uses in Phase 3: PQC-Only" in failing.output
    passing = runner.invoke(crypto, ["audit", "--phase", "1", str(planted)])
    assert passing.exit_code == 0, passing.output
    assert "12 findings, 0 allowed, 0 blocking" in passing.output
    (planted / "deploy").mkdir()
    (planted / "deploy" / "crypto-allowlist.yaml").write_text(
        "allow:\n"
        "  - path: 'app/*'\n    reason: reviewed in the test\n"
        "  - path: 'config/*'\n    reason: reviewed as well\n"
    )
    allowed = runner.invoke(crypto, ["audit", "--phase", "3", str(planted)])  # picks up PATH/deploy/... itself
    assert allowed.exit_code == 0, allowed.output
    assert "12 findings, 12 allowed, 0 blocking" in allowed.output


def test_the_project_passes_its_own_audit() -> None:
    allowlist = Allowlist.load(REPO / "deploy" / "crypto-allowlist.yaml")
    report = audit(REPO, allowlist, skip=[REPO / "deploy" / "crypto-allowlist.yaml"])
    assert [(f.path, f.line, f.algorithm, f.snippet) for f in report.unallowed] == []
    assert any(f.path == "governance/crypto/classical.py" for f in report.findings)  # the one dual-mode module
