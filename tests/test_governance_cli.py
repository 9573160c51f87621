"""End to end: a model from PROPOSAL to PRODUCTION and back using only the CLI and gate events (real Kafka, Redis)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner, Result

from governance.service.statestore import StateStore
from shadowgate.cli import cli
from tests.governance_kit import (
    Env,
    fast_policy,
    gate_ready,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    running,
    seed_log,
    send_event,
    wait_until,
)
from tests.lifecycle_samples import MODEL_FEATURES, complete_documents, valid_metadata

pytestmark = pytest.mark.integration
POLICY = fast_policy()


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("cli"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)


def _cli(env: Env, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env.cli_env(), catch_exceptions=False)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.output}"
    return result


def _files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for stage, docs in complete_documents().items():
        for name, text in docs.items():
            files[name] = root / f"{stage.lower()}-{name}.md"
            files[name].write_text(text)
    files["metadata"] = root / "metadata.json"
    trained_at = now_utc() - timedelta(days=3)  # relative to the wall clock the consumer judges staleness by
    files["metadata"].write_bytes(orjson.dumps(valid_metadata("1.0.0", "PP-fraud-1.0.0", trained_at)))
    files["features"] = root / "features.yaml"
    files["features"].write_text("".join(f"{name}: {dtype}\n" for name, dtype in MODEL_FEATURES.items()))
    files["artifact"] = root / "model.ebm"
    files["artifact"].write_bytes(b"glass-box model bytes")
    return files


def _status(env: Env, *extra: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = orjson.loads(_cli(env, "model", "status", "--json", *extra).output)
    return rows


def _stage(env: Env) -> str:
    return str(_status(env)[0]["stage"])


def _docs(files: dict[str, Path], *names: str) -> list[str]:
    return [arg for name in names for arg in ("--doc", f"{name}={files[name]}")]


def test_proposal_to_production_with_the_cli_and_gate_events(env: Env, tmp_path: Path) -> None:
    files = _files(tmp_path)
    ml, alex = ("--identity", "GID-02"), ("--identity", "GID-08")
    with running(env, POLICY) as consumer:
        # Invalid metadata is refused at registration with every violation in one error (issue 14 point 9).
        invalid = tmp_path / "invalid-metadata.json"
        invalid.write_bytes(orjson.dumps({**orjson.loads(files["metadata"].read_bytes()), "model_type": "XGBoost",
                                          "proof_pack_id": "pack-1"}))
        out = _cli(env, "model", "register", "fraud", "1.0.0", "--type", "classification", "--metadata", str(invalid),
                   *ml, code=1).output
        assert "refused, 3 rule(s) broken:\n    - [4.2] Invalid model_type: XGBoost" in out
        assert "    - [4.2] Invalid proof_pack_id format: pack-1" in out and "not applied (audit seq 0)" in out
        _cli(env, "sign", str(files["artifact"]))  # spec 6.3: the system key signs the artifact's manifest
        out = _cli(env, "model", "register", "fraud", "1.0.0", "--type", "classification", "--metadata",
                   str(files["metadata"]), "--features", str(files["features"]), "--artifact", str(files["artifact"]),
                   *ml).output
        assert "applied (audit seq 1)" in out
        refused = _cli(env, "model", "advance", "fraud", "1.0.0", *ml, code=1).output
        assert "Model proposal document required" in refused and "Maggie (GID-02) approval required" in refused
        assert "[1.2] minimum duration" not in refused  # the fast policy has none
        _cli(env, "model", "propose", "fraud", "1.0.0", *_docs(files, "proposal"), *ml)
        _cli(env, "model", "approve", "fraud", "1.0.0", "--target", "PROTOTYPE", *ml)
        assert "PROPOSAL -> PROTOTYPE" in _cli(env, "model", "advance", "fraud", "1.0.0", *ml).output
        _cli(env, "model", "propose", "fraud", "1.0.0", *_docs(files, "feature_analysis", "baseline_metrics"), *ml)
        _cli(env, "model", "advance", "fraud", "1.0.0", *ml)
        _cli(env, "model", "propose", "fraud", "1.0.0", *_docs(files, "training", "training_config"), *ml)
        refused = _cli(env, "model", "advance", "fraud", "1.0.0", *ml, code=1).output
        assert "[1.2] Training approval required" in refused
        _cli(env, "model", "approve", "fraud", "1.0.0", "--target", "SHADOW", *ml)  # "training approved"
        _cli(env, "model", "advance", "fraud", "1.0.0", *ml)
        _cli(env, "model", "propose", "fraud", "1.0.0", *_docs(files, "shadow"), *ml)
        assert _stage(env) == "SHADOW"
        blocked = _status(env)[0]["blocked_by"]
        assert blocked == ["[3.2] Shadow completion checklist not evaluated: no verdict, so no promotion",
                           "[9.2] ALEX (GID-08) shadow review required: ALEX approves the move to STAGING while in "
                           "SHADOW"]
        _cli(env, "model", "approve", "fraud", "1.0.0", "--target", "STAGING", *alex)  # the shadow review
        assert _status(env)[0]["blocked_by"] == [blocked[0]]

        # An escalation blocks the automatic promotion a GateReady (from the streams worker) would make.
        _cli(env, "model", "escalate", "fraud", "1.0.0", "--reason", "label delay in EU", "--id", "ESC-1", *alex)
        seq = consumer.state.seq
        send_event(env, "gates", gate_ready(POLICY, "fraud", "none", "1.0.0", "SHADOW"))
        wait_until(lambda: consumer.state.seq == seq + 1, what="the gate entry")
        assert _stage(env) == "SHADOW"
        assert _status(env)[0]["blocked_by"] == [
            "[escalation] open escalation(s) ['ESC-1'] block promotion; resolve them first"]
        _cli(env, "model", "resolve", "fraud", "1.0.0", "ESC-1", "--resolution", "labels caught up", *alex)
        assert _status(env)[0]["blocked_by"] == []
        # The recorded READY verdict now carries the manual step.
        assert "SHADOW -> STAGING" in _cli(env, "model", "advance", "fraud", "1.0.0", *ml).output
        _cli(env, "model", "propose", "fraud", "1.0.0",
             *_docs(files, "canary_results", "performance_report", "production"), *ml)
        approved = _cli(env, "model", "approve", "fraud", "1.0.0", "--target", "PRODUCTION", *alex).output
        assert "not promoted automatically" in approved and "[2.1] Staging gate not evaluated" in approved
        send_event(env, "gates", gate_ready(POLICY, "fraud", "none", "1.0.0", "STAGING"))
        wait_until(lambda: _stage(env) == "PRODUCTION", what="automatic promotion to PRODUCTION")
        row = _status(env)[0]
        assert (row["role"], row["proofpack_id"], row["blocked_by"]) == ("serving", "PP-fraud-1.0.0", [])
        assert "fraud" in _cli(env, "model", "status").output

        pack = orjson.loads(_cli(env, "model", "proofpack", "fraud", "1.0.0").output)
        assert pack["artifact"]["sha256"] == hashlib.sha256(files["artifact"].read_bytes()).hexdigest()
        assert [a["approver"] for a in pack["approvals"]] == ["GID-02", "GID-02", "GID-08", "GID-08"]
        assert pack["artifact"]["key_id"] == env.signer().key_id and pack["policy_id"] == POLICY.policy_id
        history = _cli(env, "model", "history", "fraud").output
        assert "moved to PRODUCTION" in history and "ProofPack PP-fraud-1.0.0 recorded" in history

        # Rebuild from the log equals the state materialised in Redis.
        client: redis.Redis[bytes] = redis.Redis.from_url(env.redis_url)
        try:
            assert StateStore(client, env.prefix).load() == consumer.rebuild() == consumer.state
        finally:
            client.close()
        assert [r["stage"] for r in _status(env, "--from-log")] == ["PRODUCTION"]

    verified = _cli(env, "audit", "verify").output
    assert verified.startswith(f"audit log OK: {consumer.state.seq + 1} entries, head {consumer.state.head}")
    _cli(env, "audit", "verify", "--expect-head", consumer.state.head)
    copy = tmp_path / "audit.jsonl"
    _cli(env, "audit", "export", "-o", str(copy))
    _cli(env, "audit", "verify", "--file", str(copy))
    lines = copy.read_bytes().splitlines()
    lines[5] = lines[5].replace(b'"GID-02"', b'"GID-08"', 1)
    copy.write_bytes(b"\n".join(lines) + b"\n")
    broken = _cli(env, "audit", "verify", "--file", str(copy), code=1).output
    assert "BROKEN at entry #5 (seq 5)" in broken


def test_rollback_with_the_cli(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "PRODUCTION")])
    with running(env, POLICY) as consumer:
        out = _cli(env, "model", "rollback", "fraud", "2.0.0", "--reason", "error spike after release",
                   "--identity", "GID-08").output
        assert "rollback COMPLETED: fraud 2.0.0 -> 1.0.0" in out and "routing verified: production=1.0.0" in out
        assert consumer.state.registry.models["fraud"].production == "1.0.0"
        failed = _cli(env, "model", "rollback", "fraud", "1.0.0", "--reason", "again", "--identity", "GID-08",
                      code=1).output
        assert "rollback FAILED" in failed and "Target model not found" in failed
        unknown = CliRunner().invoke(cli, ["model", "approve", "fraud", "1.0.0", "--target", "PRODUCTION",
                                           "--identity", "GID-99"], env=env.cli_env())
        assert unknown.exit_code != 0 and "identity GID-99 has no keys" in str(unknown.exception)


def test_a_command_rejected_at_intake_is_answered_by_its_summary(env: Env) -> None:
    """An identity the consumer does not trust: the rejection is summarised, and the summary answers the CLI."""
    from governance.crypto.keyring import Keyring
    from governance.lifecycle.identities import identity_dir

    with running(env, POLICY):
        Keyring(identity_dir(env.keys_dir, "GID-77")).generate(now_utc())  # after the consumer loaded its trust
        try:
            out = _cli(env, "model", "escalate", "fraud", "1.0.0", "--reason", "r", "--identity", "GID-77",
                       code=1).output
        finally:
            shutil.rmtree(identity_dir(env.keys_dir, "GID-77"))
    assert "#0 rejected: rejected_inputs" in out and "1 input(s) rejected" in out
    assert "unknown_key: escalate" in out and "not applied (audit seq 0)" in out


def test_governance_command_runs_the_consumer(env: Env, tmp_path: Path) -> None:
    """``shadowgate governance`` as a process: answers a CLI command, stops cleanly on SIGTERM.

    Started in an empty directory with no catalog or policy named: the shipped ones are package data.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "shadowgate", "governance", "--lease-ttl", "5"],
        env={**os.environ, **env.cli_env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=tmp_path,
    )
    try:
        out = _cli(env, "model", "register", "churn", "0.1.0", "--type", "ranking", "--identity", "GID-02",
                   "--timeout", "60").output
        assert "applied (audit seq 0)" in out
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "#0 applied: register" in stdout and "registered: churn@0.1.0" in stdout
    assert "governance consumer: audit log" in stderr
