"""`shadowgate model explain`: the next gate of a version on the live windows, now, against real Redis.

The windows are written by the real processor into the Redis window store, the lifecycle state is the one the
governance consumer materialises (StateStore), and the command is run as users run it (the CLI).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from governance.contract.kafkaio import Record
from governance.contract.stages import Stage
from governance.lifecycle.audit import GENESIS, AuditEntry, GateRecord, Input
from governance.lifecycle.ledger import Registered, Transitioned
from governance.lifecycle.machine import FORWARD
from governance.lifecycle.state import rebuild
from governance.policy.document import load_policy
from governance.service.statestore import StateStore
from shadowgate.cli import cli
from shadowgate.traffic import TrafficSpec, generate
from streams.state.redis_store import RedisWindowStore
from streams.worker.processor import Processor
from tests.lifecycle_samples import MODEL_FEATURES, valid_metadata

pytestmark = pytest.mark.integration

MODEL, PROD, CAND = "fraud-risk", "1.4.0", "1.5.0"


def _moves(version: str, start: datetime, to: Stage) -> list[Any]:
    facts: list[Any] = [Registered(event_id=f"{version}-reg", at=start, model=MODEL, version=version,
                                   model_type="classification", metadata=valid_metadata(version),
                                   features=MODEL_FEATURES)]
    path = FORWARD[: FORWARD.index(to) + 1]
    for i, (a, b) in enumerate(zip(path, path[1:], strict=False)):
        facts.append(Transitioned(event_id=f"{version}-t{i}", at=start + timedelta(days=i + 1), model=MODEL,
                                  version=version, from_stage=a, to_stage=b))
    return facts


def _state(now: datetime, shadow_since: datetime, gate_at: datetime | None = None) -> Any:
    bodies: list[dict[str, Any]] = [{"facts": _moves(PROD, now - timedelta(days=40), Stage.PRODUCTION)},
                                    {"facts": _moves(CAND, shadow_since - timedelta(days=3), Stage.SHADOW)}]
    if gate_at is not None:
        gate = GateRecord(event_id="g-1", model=MODEL, version=CAND, production_version=PROD, stage="SHADOW",
                          gate="shadow_completion", passed=False, failures=["min_samples_met: 10 pairs < 10000"],
                          ts=gate_at, policy_hash="0" * 64, event={"type": "GateBlocked"})
        bodies.append({"outcome": "recorded", "gate": gate})
    log, head = [], GENESIS
    for seq, body in enumerate(bodies):
        digest = hashlib.sha256(f"entry-{seq}".encode()).hexdigest()
        source = Input(topic="governance.commands", partition=0, offset=seq, digest=digest, kind="command",
                       id=f"in-{seq}", type="advance", actor="GID-08")
        log.append((AuditEntry(seq=seq, prev_hash=head, at=now - timedelta(days=1), input=source,
                               **{"outcome": "applied", **body}), digest))
        head = digest
    return rebuild(log)


def _traffic(client: redis.Redis[bytes], prefix: str, now: datetime) -> tuple[list[dict[str, Any]], RedisWindowStore]:
    """3,000 pairs over the last ten minutes, labelled 30 s later, folded by the worker's processor into Redis."""
    events = list(generate(TrafficSpec(model=MODEL, production_version=PROD, candidate_version=CAND, pairs=3000,
                                       start=now - timedelta(minutes=10), rate_per_s=5.0, label_delay_s=30.0,
                                       seed=3)))
    store = RedisWindowStore(client, prefix)
    processor = Processor(store, scores_topic="s", labels_topic="l", fence_name="f")
    processor.process([Record("s" if e["kind"] == "score" else "l", 0, i, b"k",
                              orjson.dumps({k: v for k, v in e.items() if k != "kind"}))
                       for i, e in enumerate(e for e in events if e["ts"] <= now)])
    return events, store


def test_explain_prints_every_check_of_the_live_shadow_gate_and_what_is_missing(
    redis_url: str, redis_prefix: str
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    shadow_since = now - timedelta(days=2, hours=6)
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    StateStore(client, redis_prefix).save(_state(now, shadow_since), 0.05, now)
    events, store = _traffic(client, redis_prefix, now)
    newest = max(e["ts"] for e in events if e["kind"] == "score")
    env = {"SHADOWGATE_REDIS_URL": redis_url, "SHADOWGATE_REDIS_PREFIX": redis_prefix}

    result = CliRunner().invoke(cli, ["model", "explain", MODEL, CAND, "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.output)
    assert doc["stage"] == "SHADOW"
    (gate,) = doc["gates"]
    assert (gate["comparison"], gate["gate"], gate["verdict"]) == (f"{MODEL}|{PROD}|{CAND}|shadow",
                                                                    "shadow_completion", "BLOCKED")
    checks = {c["name"]: c for c in gate["checks"]}
    policy = load_policy(None)
    need_days = max(policy.shadow.model_types["classification"].min_duration_days, policy.lifecycle.SHADOW.min_days)
    elapsed = (newest.replace(microsecond=0) - shadow_since).total_seconds() / 86400
    duration = checks["min_duration_met"]
    assert duration["outcome"] == "FAIL" and duration["section"] == "1.2, 3.1, 3.2 item 1"
    assert duration["value"] == pytest.approx(elapsed, abs=2e-5) and duration["threshold"] == need_days
    pairs = sum(1 for e in events if e["kind"] == "score") // 2
    samples = checks["min_samples_met"]
    assert samples["value"] == pairs and samples["threshold"] == policy.shadow.model_types["classification"].min_samples
    assert checks["source_fresh"]["outcome"] == "PASS"  # judged at the wall clock: the traffic is minutes old
    assert all(c["section"] != "-" for c in gate["checks"]), [c["name"] for c in gate["checks"] if c["section"] == "-"]
    assert gate["missing"]["days"].startswith(f"{need_days - elapsed:.2f} more days")
    assert gate["missing"]["samples"].startswith(f"{samples['threshold'] - pairs:,.0f} more pairs")
    assert doc["lifecycle_blockers"]  # SHADOW -> STAGING needs its gate READY, at least

    text = CliRunner().invoke(cli, ["model", "explain", MODEL, CAND], env=env)
    assert text.exit_code == 0, text.output
    assert "shadow_completion" in text.output and "min_duration_met" in text.output and "3.2 item 1" in text.output
    assert "still missing: days" in text.output

    # The serving version is judged by the production checks on the comparison that monitors it.
    serving = CliRunner().invoke(cli, ["model", "explain", MODEL, PROD, "--json"], env=env)
    assert serving.exit_code == 0, serving.output
    (production,) = orjson.loads(serving.output)["gates"]
    names = {c["name"]: c["section"] for c in production["checks"]}
    assert production["stage"] == "PRODUCTION" and names["calibration_drift"] == "2.1"
    assert names["source_fresh"] == "8.1 (reading)"

    unknown = CliRunner().invoke(cli, ["model", "explain", MODEL, "9.9.9"], env=env)
    assert unknown.exit_code != 0 and "not registered" in str(unknown.exception)
    store.close()


def test_status_says_when_its_gate_figures_were_taken_and_reads_the_live_windows_on_request(
    redis_url: str, redis_prefix: str
) -> None:
    """Issue 14.11: the figures behind `blocked by` come from the last gate event, sent on a verdict change (or
    every SHADOWGATE_GATE_REPUBLISH_S): status says when they were taken, and --live evaluates them now."""
    now = datetime.now(UTC).replace(microsecond=0)
    gate_at = now - timedelta(hours=5)
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    StateStore(client, redis_prefix).save(_state(now, now - timedelta(days=2), gate_at), 0.05, now)
    events, store = _traffic(client, redis_prefix, now)
    env = {"SHADOWGATE_REDIS_URL": redis_url, "SHADOWGATE_REDIS_PREFIX": redis_prefix}

    result = CliRunner().invoke(cli, ["model", "status", MODEL, "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = {row["version"]: row for row in orjson.loads(result.output)}
    assert (rows[CAND]["gate_verdict"], rows[CAND]["gate_taken_at"]) == ("BLOCKED", gate_at.isoformat())
    assert rows[PROD]["gate_taken_at"] is None and "live" not in rows[CAND]

    live = CliRunner().invoke(cli, ["model", "status", MODEL, "--json", "--live"], env=env)
    assert live.exit_code == 0, live.output
    (gate,) = {row["version"]: row for row in orjson.loads(live.output)}[CAND]["live"]
    taken = datetime.fromisoformat(gate["taken_at"])
    assert now <= taken <= datetime.now(UTC) and gate["verdict"] == "BLOCKED"
    pairs = sum(1 for e in events if e["kind"] == "score") // 2
    assert any(f.startswith(f"min_samples_met: {pairs} pairs <") for f in gate["failing"]), gate["failing"]

    text = CliRunner().invoke(cli, ["model", "status", MODEL, "--live"], env=env)
    assert text.exit_code == 0, text.output
    assert f"BLOCKED at {gate_at:%Y-%m-%d %H:%M:%S} (5 h 00 min ago)" in text.output
    assert "live BLOCKED at" in text.output
    store.close()
