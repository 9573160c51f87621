"""`shadowgate replay`: recorded shadow traffic in, exact windows and the governance events out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from governance.policy.document import load_policy
from shadowgate.cli import cli
from shadowgate.traffic import TrafficSpec, generate
from streams.worker.replay import replay_lines

pytestmark = pytest.mark.slow

START = datetime(2026, 10, 1, tzinfo=UTC)


def _lines(spec: TrafficSpec) -> list[bytes]:
    return [orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in generate(spec)]


def _shadow(pairs: int, days: float, **over: Any) -> TrafficSpec:
    # Scores ~ Beta(0.3, 3) with labels ~ Bernoulli(score): a calibrated, discriminating risk model
    # (Brier about 0.06, AUC above 0.8), so the shadow gate's label metrics can pass.
    base: dict[str, Any] = {"pairs": pairs, "start": START, "rate_per_s": pairs / (days * 86400), "beta_a": 0.3,
                            "beta_b": 3.0, "delta_sd": 0.02, "label_delay_s": 3600.0, "seed": 5}
    base.update(over)
    return TrafficSpec(**base)


def test_a_passing_14_day_classification_shadow_is_blocked_then_ready_after_7_days() -> None:
    doc = replay_lines(iter(_lines(_shadow(14_000, 14))), model_type="classification", evaluate_every_s=900)
    events = [(e["type"], datetime.fromisoformat(e["ts"])) for e in doc["events"] if e["type"].startswith("Gate")]
    assert [t for t, _ in events] == ["GateBlocked", "GateReady"], doc["events"]
    first_blocked = doc["events"][0]
    assert {c["name"] for c in first_blocked["failing_checks"]} >= {"min_duration_met", "min_samples_met"}
    ready_at = events[1][1]
    # Ready once 7 days have passed AND 10,000 pairs were seen (10,000 pairs arrive after 10 days here).
    assert START + timedelta(days=10) <= ready_at <= START + timedelta(days=10, hours=1)
    ready = next(e for e in doc["events"] if e["type"] == "GateReady")
    stats = {s["test"]: s for s in ready["evidence"]["statistics"]}
    assert set(stats) == {"ks_2samp", "paired_t", "mean_abs_delta_ci"}
    assert all(s["n"] >= 10_000 for s in stats.values())
    assert stats["mean_abs_delta_ci"]["ci_low"] < stats["mean_abs_delta_ci"]["ci_high"]
    assert ready["evidence"]["policy_hash"] == doc["policy_hash"]


def test_a_drifting_shadow_stays_blocked_on_the_delta_checks() -> None:
    doc = replay_lines(iter(_lines(_shadow(12_000, 8, shift=0.2))), model_type="classification",
                       evaluate_every_s=1800)
    gates = [e for e in doc["events"] if e["type"].startswith("Gate")]
    assert gates and all(e["type"] == "GateBlocked" for e in gates)
    failing = {c["name"] for c in gates[-1]["failing_checks"]}
    assert "metrics_pass_gate" in failing or "mean_abs_delta" in failing
    window = doc["comparisons"][0]["windows"]["14d"]
    assert window["mean_abs_delta"] > 0.15


def test_replay_windows_match_numpy_on_the_same_events() -> None:
    spec = _shadow(3000, 0.02, label_delay_s=60.0)
    events = list(generate(spec))
    doc = replay_lines(iter([orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in events]),
                       windows=["24h"])
    prod = np.array([e["score"] for e in events if e.get("role") == "production"])
    cand = np.array([e["score"] for e in events if e.get("role") == "shadow"])
    delta = np.abs(cand - prod)
    w = doc["comparisons"][0]["windows"]["24h"]
    assert w["sample_count"] == 3000 and w["label_count"] == 3000
    assert w["mean_abs_delta"] == pytest.approx(delta.mean(), abs=1e-9)
    assert abs(w["p95_abs_delta"] - np.quantile(delta, 0.95)) <= 0.001
    assert abs(w["p99_abs_delta"] - np.quantile(delta, 0.99)) <= 0.001


def test_invalid_lines_are_counted_not_fatal_and_the_cli_prints_json(tmp_path: Any) -> None:
    lines = _lines(_shadow(500, 0.01, label_share=0.0))
    lines[10:10] = [b"{not json", b'{"request_id":"x","model":"fraud-risk","version":"1","role":"shadow",'
                    b'"score":7,"latency_ms":1,"ts":"2026-10-01T00:00:00Z"}']
    path = tmp_path / "traffic.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    # Recorded on START's day: replayed at that time (the event-time bounds are around --now).
    now = (START + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = CliRunner().invoke(cli, ["replay", str(path), "--json", "--window", "24h", "--now", now])
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.output)
    assert doc["stats"]["dead_letters"] == 2
    assert [d["line"] for d in doc["dead_letters"]] == [11, 12]
    assert doc["comparisons"][0]["windows"]["24h"]["sample_count"] == 500
    assert doc["comparisons"][0]["windows"]["24h"]["integrity_violations"] == 1


def test_labels_after_the_last_score_still_reach_the_gate() -> None:
    # The traffic stops after 200 s; every label comes an hour later. The comparison is judged again with
    # the labels at its last evaluation time (as the live worker does when a comparison stands idle).
    demo = load_policy(Path(__file__).resolve().parent.parent / "deploy" / "demo-policy.yaml")
    doc = replay_lines(iter(_lines(_shadow(2000, 200 / 86400))), policy=demo, model_type="risk_scoring")
    gates = [e for e in doc["events"] if e["type"].startswith("Gate")]
    # Blocked on the sample count, then on the label metrics alone (no label yet), then ready.
    assert [e["type"] for e in gates] == ["GateBlocked", "GateBlocked", "GateReady"], gates
    blocked = {c["name"]: c["outcome"] for c in gates[1]["failing_checks"]}
    assert blocked.get("metrics_pass_gate") == "INCONCLUSIVE"
    last_score = max(e["ts"] for e in generate(_shadow(2000, 200 / 86400)) if e["kind"] == "score")
    assert datetime.fromisoformat(gates[1]["ts"]) - last_score < timedelta(seconds=60)  # not at the labels' time
    assert doc["comparisons"][0]["windows"]["24h"]["label_count"] == 2000
