"""The status service's pure parts, without servers: the verdict contract, the thresholds drawn, the alert
judgement, and the evidence report (verification first, escaping, what it says).

States come from the handler kit's lifecycle history (real ML-DSA-65 signatures, the real handler and fold), so
the verdicts are judged on the same governance states the consumer would materialise.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from governance.contract.events import Alert, Evidence, GateReady, Versions
from governance.contract.findings import Check
from governance.contract.kafkaio import Record
from governance.contract.publishing import encode_signed_event
from governance.contract.stages import Stage
from governance.errors import VerificationError
from governance.lifecycle.identities import Trust
from governance.policy.document import load_policy
from shadowgate.report import render_report
from shadowgate.web.feeds import judge_alert
from shadowgate.web.views import series_document, thresholds, verdict
from tests.handler_kit import (
    DAY,
    MODEL,
    NEW,
    OLD,
    T0,
    Run,
    event_id,
    gate_blocked,
    history,
    key,
    rollback_trigger,
    shipped_policy_hash,
)

REPO = Path(__file__).resolve().parent.parent
SIGNER, STORE = key()
TRUST = Trust(system=STORE)
SCRIPT = "<script>window.__sg_pwned = 1</script>"


@cache
def _saved() -> dict[str, Run]:
    return history(SIGNER, STORE)


def _run(name: str) -> Run:
    return _saved()[name].fork()


def _now(run: Run) -> Any:
    return run.record(NEW).entered_stage_at + timedelta(hours=1)


# ------------------------------------------------------------------------------------------ verdict contract


def test_verdict_follows_the_version_through_its_gates() -> None:
    shadow = _run("new SHADOW")
    v = verdict(shadow.state, MODEL, NEW, _now(shadow))
    assert (v.stage, v.judged_stage, v.verdict, v.decision, v.passed) == (
        Stage.SHADOW, Stage.SHADOW, "NOT_EVALUATED", "wait", False)
    assert v.reasons == ["no SHADOW gate verdict recorded yet"]
    assert verdict(shadow.state, MODEL, NEW, _now(shadow), Stage.STAGING).verdict == "NOT_REACHED"

    at = _now(shadow)
    blocked = gate_blocked("blocked", "SHADOW", at, {"min_samples_met": "min_samples_met: 12 pairs < 10000"})
    shadow.step(shadow.event(blocked), at)
    v = verdict(shadow.state, MODEL, NEW, at)
    assert (v.verdict, v.decision, v.gate, v.gate_event_id) == ("BLOCKED", "fail", "shadow_completion",
                                                                 str(blocked.event_id))
    assert v.reasons == ["min_samples_met: 12 pairs < 10000"] and v.audit_seq == shadow.state.seq

    staging = _run("new STAGING")
    assert verdict(staging.state, MODEL, NEW, _now(staging)).verdict == "NOT_EVALUATED"
    passed = verdict(staging.state, MODEL, NEW, _now(staging), Stage.SHADOW)  # the gate it went through
    assert (passed.verdict, passed.decision, passed.passed) == ("READY", "pass", True)

    ready = _run("new STAGING ready")
    v = verdict(ready.state, MODEL, NEW, _now(ready))
    assert (v.verdict, v.decision, v.gate, v.gate_event_id) == ("READY", "pass", "staging",
                                                                 str(event_id("staging-ready")))
    assert v.policy_hash == shipped_policy_hash()


def test_verdict_of_serving_standby_rolled_back_and_unknown_versions() -> None:
    serving = _run("new serving")
    now = _now(serving)
    assert (verdict(serving.state, MODEL, NEW, now).verdict, verdict(serving.state, MODEL, NEW, now).passed) == (
        "SERVING", True)
    standby = verdict(serving.state, MODEL, OLD, now)
    assert (standby.verdict, standby.decision) == ("NOT_SERVING", "fail")
    unknown = verdict(serving.state, MODEL, "9.9.9", now)
    assert (unknown.registered, unknown.verdict, unknown.decision) == (False, "UNKNOWN", "fail")
    early = verdict(_run("new PROTOTYPE").state, MODEL, NEW, now)
    assert (early.verdict, early.decision) == ("NOT_GATED", "fail")

    plan = serving.decide(serving.event(rollback_trigger("spike", now, NEW, OLD)), now)
    serving.roll_back(plan, now)
    rolled = verdict(serving.state, MODEL, NEW, now)
    assert (rolled.stage, rolled.verdict, rolled.decision) == (Stage.RETIRED, "ROLLED_BACK", "fail")
    assert rolled.reasons == ["rolled back to 1.0.0: error rate 3.1 % > 1 % for 5 min"]

    review = _run("new serving")
    review.roll_back(review.decide(review.event(rollback_trigger("kl", now, NEW, OLD, action="manual_review")), now),
                     now)
    flagged = verdict(review.state, MODEL, NEW, now)
    assert (flagged.verdict, flagged.decision) == ("ROLLBACK_REQUESTED", "fail")
    assert flagged.reasons[0].startswith("rollback MANUAL_REVIEW (manual_review)")


# ------------------------------------------------------------------------------------------ thresholds


def test_thresholds_are_the_policy_files_numbers() -> None:
    raw = yaml.safe_load((REPO / "governance" / "policy" / "default_policy.yaml").read_text())
    limits = {(t.metric, t.kind, t.label.split(" (")[0]): t for t in thresholds(load_policy())}
    assert limits[("mean_abs_delta", "gate", "SHADOW mean |Δ|")].value == raw["shadow"]["mean_abs_delta"]["threshold"]
    assert limits[("p99_abs_delta", "gate", "SHADOW P99 |Δ|")].value == raw["shadow"]["p99_abs_delta"]["threshold"]
    assert limits[("p99_latency_ms", "gate", "STAGING P99 latency")].value == \
        raw["staging"]["p99_latency_ms"]["threshold"]
    assert limits[("p99_latency_ms", "gate", "SHADOW performance budget P99")].applies_to == ("shadow",)
    assert limits[("error_rate", "gate", "STAGING error rate")].applies_to == ("canary",)
    trigger = limits[("p99_latency_ms", "trigger", "rollback trigger")]
    assert (trigger.value, trigger.section) == (raw["triggers"]["p99_latency_ms"]["threshold"], "8.1")
    kl = limits[("kl_divergence", "trigger", "rollback trigger")]
    assert kl.value == raw["triggers"]["kl_divergence"]["threshold"] and "manual_review" in kl.label
    slope = sorted(t.value for t in thresholds(load_policy()) if t.metric == "calibration_slope")
    assert slope == sorted([raw["shadow"]["calibration_slope"]["low"], raw["shadow"]["calibration_slope"]["high"],
                            raw["triggers"]["calibration_slope"]["low"], raw["triggers"]["calibration_slope"]["high"]])


def test_series_document_keeps_missing_values_missing() -> None:
    doc = series_document([60, 120], 60, [{"mean_abs_delta": 0.0123456789012345, "sample_count": 3}, {}])
    assert doc["t"] == [60, 120] and doc["metrics"]["mean_abs_delta"] == [0.012345678901, None]
    assert doc["metrics"]["sample_count"] == [3, None]
    with pytest.raises(ValueError, match="2 bucket ends for 1"):
        series_document([60, 120], 60, [{}])


# ------------------------------------------------------------------------------------------ alert judgement


def _alert(model: str = MODEL, summary: str = "KL 0.31 > 0.25 for 1 h") -> Alert:
    at = T0 + 30 * DAY
    return Alert(event_id=event_id(f"alert-{model}-{summary}"), ts=at, expires_at=at + timedelta(hours=1),
                 model=model, versions=Versions(production=OLD, candidate=NEW, role="shadow"),
                 evidence=Evidence(policy_hash=shipped_policy_hash()), severity="warning",
                 dedup_key=f"{model}:kl", summary=summary, runbook="review-score-shift")


def _record(value: bytes, offset: int = 7) -> Record:
    return Record("shadow.alerts", 0, offset, MODEL.encode(), value)


def test_only_an_alert_signed_by_a_trusted_key_is_verified() -> None:
    now = T0 + 30 * DAY
    genuine = judge_alert(_record(encode_signed_event(_alert(), SIGNER, now)), TRUST, now)
    assert genuine["status"] == "verified" and genuine["key_id"] == SIGNER.key_id
    assert (genuine["model"], genuine["summary"], genuine["severity"]) == (MODEL, "KL 0.31 > 0.25 for 1 h", "warning")

    other, _ = key()
    forged = judge_alert(_record(encode_signed_event(_alert(summary="all fine"), other, now)), TRUST, now)
    assert forged["status"] == "rejected" and "VerificationError" in forged["reason"]
    assert forged["claims"]["summary"] == "all fine" and "model" not in forged or forged.get("model") is None

    unsigned = judge_alert(_record(orjson.dumps({"payload": _alert().model_dump(mode="json")})), TRUST, now)
    assert unsigned["status"] == "rejected" and unsigned["claims"]["type"] == "Alert"

    signed = orjson.loads(encode_signed_event(_alert(), SIGNER, now))
    signed["payload"]["summary"] = "tampered"
    tampered = judge_alert(_record(orjson.dumps(signed)), TRUST, now)
    assert tampered["status"] == "rejected" and "VerificationError" in tampered["reason"]

    assert judge_alert(_record(b"\x00not json"), TRUST, now)["status"] == "rejected"
    gate = GateReady(event_id=event_id("g"), ts=now, expires_at=now + DAY, model=MODEL,
                     versions=Versions(production=OLD, candidate=NEW, role="shadow"),
                     evidence=Evidence(policy_hash=shipped_policy_hash()), gate="staging", stage="STAGING")
    wrong_type = judge_alert(_record(encode_signed_event(gate, SIGNER, now)), TRUST, now)
    assert wrong_type["status"] == "rejected" and wrong_type["reason"] == "a signed GateReady is not an alert"


# ------------------------------------------------------------------------------------------ evidence report


def _pack_run(message: str) -> Run:
    """NEW promoted to PRODUCTION through a staging gate whose check message is ``message``."""
    run = _run("new STAGING")
    at = run.record(NEW).entered_stage_at + 3 * DAY  # the spec's STAGING minimum
    check = Check(name="p99_latency_ms", outcome="PASS", value=42.5, threshold=500.0, comparator=">=",
                  enforcement="BLOCK", samples=1200, message=message)
    ready = GateReady(event_id=event_id("report-staging"), ts=at, expires_at=at + timedelta(hours=1), model=MODEL,
                      versions=Versions(production=OLD, candidate=NEW, role="canary"),
                      evidence=Evidence(policy_hash=shipped_policy_hash(), checks=[check]), gate="staging",
                      stage="STAGING")
    run.step(run.event(ready), at)
    from governance.lifecycle.commands import Approve

    run.ok(run.command(Approve, "ok-production-report", "GID-08", at, target=Stage.PRODUCTION), at)
    return run


def test_the_report_is_rendered_only_from_a_verified_pack_and_escapes_every_string() -> None:
    run = _pack_run(f"p99_latency_ms 42.5 < 500 {SCRIPT}")
    pack_id = run.record(NEW).proofpack_id
    assert pack_id is not None
    signed = run.state.proofpacks[pack_id]
    now = run.record(NEW).entered_stage_at
    html = render_report(signed, TRUST, None, now, audit_items=[])
    assert "<script" not in html.lower() and SCRIPT not in html
    assert "&lt;script&gt;window.__sg_pwned = 1&lt;/script&gt;" in html
    assert f"Evidence report: {MODEL} {NEW}" in html and "Signature verified" in html and SIGNER.key_id in html
    # The check row: value, passing condition, spec section and policy key.
    row = re.search(r"<tr><td class=\"\">p99_latency_ms</td>.*?</tr>", html)
    assert row is not None
    assert all(part in row.group(0) for part in ("42.5", "&lt; 500", "2.1 STAGING", "staging.p99_latency_ms"))
    # Approvals are listed and, with an audit log that does not hold them, flagged as not found.
    # Four: GID-02's PROTOTYPE and training approvals, GID-08's shadow review and PRODUCTION approval.
    assert html.count("not found in the verified audit log") == 4
    assert "No window store was read" in html

    tampered = {**signed, "payload": {**signed["payload"], "version": "6.6.6"}}  # type: ignore[dict-item]
    with pytest.raises(VerificationError):
        render_report(tampered, TRUST, None, now)
