"""The tracker (pure): which notices each verified input yields, when conditions resolve, and that the open
conditions do not depend on how the topics interleave."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.lifecycle.audit import Input
from governance.service.alerting.intake import VerifiedEntry, VerifiedEvent
from governance.service.alerting.notices import Notice, alertname_for_runbook
from governance.service.alerting.tracker import Tracker
from tests.alerting_samples import (
    alert,
    approved,
    at,
    blocked,
    entry,
    gate_record,
    handled,
    moved,
    ready,
    recalibration,
    rollback,
    trigger,
    verified,
)

RUNBOOKS = {"error_rate": "rollback-error-rate", "kl_divergence": "review-score-shift"}


def tracker(**kwargs: object) -> Tracker:
    return Tracker(hold_s=3600, trigger_runbooks=RUNBOOKS, **kwargs)  # type: ignore[arg-type]


def states(notices: tuple[Notice, ...]) -> list[tuple[str, str, str]]:
    return [(n.status, n.alertname, n.severity) for n in notices]


def test_an_alert_is_a_one_off_notice_named_after_its_runbook_held_for_hold_s() -> None:
    event = alert(severity="warning", runbook="review-score-shift")
    applied = tracker().apply(verified(event))
    (notice,) = applied.notices
    assert (notice.status, notice.kind, notice.alertname) == ("firing", "alert", "ShadowgateReviewScoreShift")
    assert notice.labels == {"alertname": "ShadowgateReviewScoreShift", "kind": "alert", "severity": "warning",
                             "model": "fraud", "runbook": "review-score-shift", "production_version": "1.0.0",
                             "candidate_version": "2.0.0", "role": "shadow"}
    assert notice.dedup_key == event.dedup_key
    assert notice.ends_at == event.ts + timedelta(hours=1)
    assert notice.annotations["summary"] == event.summary and notice.annotations["signed_by"] == "mldsa65-test"
    assert applied.received is not None and (applied.received.kind, applied.received.model) == ("alert", "fraud")


def test_the_same_input_gives_the_same_notice_id_and_a_second_copy_gives_nothing() -> None:
    item = verified(alert())
    first, second = tracker(), tracker()
    assert first.apply(item).notices[0].notice_id == second.apply(item).notices[0].notice_id
    again = first.apply(item)
    assert again.duplicate and again.notices == () and again.received is None


@pytest.mark.parametrize("runbook", ["source-unhealthy", "production-staleness_limit_days", "review-score-shift"])
def test_alertnames_are_prometheus_label_values(runbook: str) -> None:
    name = alertname_for_runbook(runbook)
    assert name.startswith("Shadowgate") and name.isalnum()


def test_recalibration_is_a_one_off_warning() -> None:
    (notice,) = tracker().apply(verified(recalibration())).notices
    assert (notice.kind, notice.severity, notice.alertname) == ("recalibration", "warning",
                                                                 "ShadowgateRecalibrationRequested")


@pytest.mark.parametrize(("dedup", "superseded"), [
    ("fraud|MODEL_ROLLBACK_FAILED|P0", True), ("fraud|rollback|COMPLETED", True),
    ("fraud|rollback|MANUAL_REVIEW", True), ("fraud|1.0.0|2.0.0|shadow|kl_divergence", False),
    ("other|MODEL_ROLLBACK_FAILED|P0", False),
])
def test_the_consumers_rollback_alerts_are_superseded_by_the_audit_log(dedup: str, superseded: bool) -> None:
    item = verified(alert(dedup_key=dedup, runbook="page-on-call", severity="critical"))
    assert tracker().apply(item).superseded is superseded
    assert len(tracker(rollbacks_from_audit=False).apply(item).notices) == 1  # no audit source: delivered


def test_a_blocked_gate_fires_until_ready_resolves_it_with_the_same_labels() -> None:
    t = tracker()
    (fired,) = t.apply(verified(blocked(ts=at(0)), "gates", 0)).notices
    assert states((fired,)) == [("firing", "ShadowgateGateBlocked", "warning")]
    assert fired.labels["verdict"] == "BLOCKED" and fired.ends_at is None
    assert fired.annotations["description"] == "mean_abs_delta 0.3 >= 0.15"
    assert [c.kind for c in t.open_conditions] == ["gate_blocked"]
    (resolved,) = t.apply(verified(ready(ts=at(60)), "gates", 1)).notices
    assert resolved.status == "resolved" and resolved.labels == fired.labels and resolved.dedup_key == fired.dedup_key
    assert resolved.ends_at == at(60) and resolved.summary.startswith("RESOLVED:")
    assert t.open_conditions == ()


def test_a_verdict_change_resolves_the_old_verdict_and_fires_the_new_one() -> None:
    t = tracker()
    (inconclusive,) = t.apply(verified(blocked(verdict="INCONCLUSIVE"), "gates", 0)).notices
    assert states((inconclusive,)) == [("firing", "ShadowgateGateInconclusive", "info")]
    assert t.apply(verified(blocked(verdict="INCONCLUSIVE", ts=at(5)), "gates", 1)).notices == ()  # same verdict
    notices = t.apply(verified(blocked(verdict="BLOCKED", ts=at(10)), "gates", 2)).notices
    assert states(notices) == [("resolved", "ShadowgateGateInconclusive", "info"),
                               ("firing", "ShadowgateGateBlocked", "warning")]
    assert notices[0].dedup_key != notices[1].dedup_key


def test_ready_without_an_open_block_is_a_one_off_info() -> None:
    (notice,) = tracker().apply(verified(ready(), "gates")).notices
    assert states((notice,)) == [("firing", "ShadowgateGateReady", "info")] and notice.ends_at is not None


def test_a_trigger_fires_until_the_consumer_handled_it() -> None:
    t = tracker()
    event = trigger(action="immediate")
    (fired,) = t.apply(verified(event, "rollbacks")).notices
    assert states((fired,)) == [("firing", "ShadowgateRollbackTriggered", "critical")]
    assert fired.runbook == "rollback-error-rate" and fired.labels["from_version"] == "2.0.0"
    notices = t.apply(handled(5, event, "COMPLETED", when=at(3))).notices
    assert states(notices) == [("resolved", "ShadowgateRollbackTriggered", "critical"),
                               ("firing", "ShadowgateRollbackCompleted", "warning")]
    assert notices[0].annotations["source"] == "governance.lifecycle[0]@5"
    assert t.open_conditions == ()


def test_a_trigger_read_after_the_entry_that_handled_it_is_already_resolved() -> None:
    t = tracker()
    event = trigger(action="manual_review", name="kl_divergence")
    assert states(t.apply(handled(1, event, "MANUAL_REVIEW", when=at(2))).notices) == [
        ("firing", "ShadowgateRollbackPending", "warning")]
    (late,) = t.apply(verified(event, "rollbacks")).notices
    assert (late.status, late.severity, late.runbook) == ("resolved", "warning", "review-score-shift")
    assert late.ends_at == at(2) and "audit seq 1" in late.annotations["description"]
    assert [c.kind for c in t.open_conditions] == ["rollback_pending"]


def test_a_trigger_the_consumer_rejected_stays_open() -> None:
    t = tracker()
    event = trigger()
    t.apply(verified(event, "rollbacks"))
    source = Input(topic="shadow.rollbacks", partition=0, offset=0, digest="1" * 64, kind="event",
                   id=str(event.event_id), type="RollbackTrigger")
    assert t.apply(entry(1, outcome="rejected", source=source)).notices == ()
    assert [c.kind for c in t.open_conditions] == ["rollback_triggered"]


def test_a_failed_rollback_pages_p0_until_a_completed_rollback_of_the_version() -> None:
    t = tracker()
    (p0,) = t.apply(entry(0, rollback=rollback("fraud", "2.0.0", None, "FAILED"))).notices
    assert states((p0,)) == [("firing", "ShadowgateModelRollbackFailed", "critical")]
    assert p0.summary.startswith("P0 MODEL_ROLLBACK_FAILED: fraud 2.0.0 -> none: Target model not found")
    assert p0.runbook == "page-on-call" and p0.labels["trigger"] == "command"
    notices = t.apply(entry(1, rollback=rollback("fraud", "2.0.0", "1.0.0", "COMPLETED", when=at(600)))).notices
    assert states(notices) == [("resolved", "ShadowgateModelRollbackFailed", "critical"),
                               ("firing", "ShadowgateRollbackCompleted", "warning")]


def test_a_pending_rollback_clears_when_the_version_moves() -> None:
    t = tracker()
    t.apply(entry(0, rollback=rollback("fraud", "2.0.0", "1.0.0", "SCHEDULED", action="scheduled")))
    assert [c.notice.labels["status"] for c in t.open_conditions] == ["SCHEDULED"]
    (resolved,) = t.apply(entry(1, facts=[moved("fraud", "2.0.0", "PRODUCTION", "RETIRED")])).notices
    assert (resolved.status, resolved.alertname) == ("resolved", "ShadowgateRollbackPending")


def test_approval_waiting_opens_on_a_ready_gate_blocked_by_an_approval_and_closes_on_the_approval() -> None:
    t = tracker()
    rules = ["[7.1] ALEX (GID-08) production approval required"]
    (waiting,) = t.apply(entry(0, gate=gate_record("fraud", "2.0.0"), blocked_rules=rules)).notices
    assert states((waiting,)) == [("firing", "ShadowgateApprovalWaiting", "info")]
    assert waiting.labels["version"] == "2.0.0" and waiting.annotations["description"] == rules[0]
    assert t.apply(entry(1, gate=gate_record("fraud", "2.0.0"), blocked_rules=rules)).notices == ()  # still open
    (closed,) = t.apply(entry(2, facts=[approved("fraud", "2.0.0")])).notices
    assert (closed.status, closed.alertname) == ("resolved", "ShadowgateApprovalWaiting")
    other = t.apply(entry(3, gate=gate_record("fraud", "3.0.0"), blocked_rules=["[7.1] a ProofPack is required"]))
    assert other.notices == ()  # blocked, but not by an approval


def test_a_stage_move_resolves_the_gates_of_the_stage_left_and_later_verdicts_about_it_are_stale() -> None:
    t = tracker()
    t.apply(verified(blocked(ts=at(0)), "gates", 0))
    (resolved,) = t.apply(entry(0, facts=[moved("fraud", "2.0.0", "SHADOW", "STAGING", when=at(30))])).notices
    assert (resolved.status, resolved.alertname) == ("resolved", "ShadowgateGateBlocked")
    assert t.apply(verified(blocked(ts=at(20)), "gates", 1)).notices == ()  # about SHADOW, which it left
    (staging,) = t.apply(verified(blocked(ts=at(40), stage="STAGING", gate="staging"), "gates", 2)).notices
    assert staging.labels["stage"] == "STAGING"


def test_when_production_changes_the_gates_of_comparisons_against_the_old_one_resolve() -> None:
    t = tracker()
    t.apply(verified(blocked("fraud", "3.0.0", ts=at(0)), "gates", 0))  # 3.0.0 (shadow) against 1.0.0
    (resolved,) = t.apply(entry(0, facts=[moved("fraud", "1.0.0", "PRODUCTION", "RETIRED", when=at(9))])).notices
    assert (resolved.status, resolved.labels["candidate_version"]) == ("resolved", "3.0.0")
    assert "the comparison against it ended" in resolved.summary and t.open_conditions == ()


def _scenario() -> tuple[list[VerifiedEvent], list[VerifiedEntry]]:
    """Two topics' worth of inputs: events (gates, rollbacks) and the audit entries that answer them."""
    immediate, review = trigger("fraud", "2.0.0"), trigger("risk", "5.0.0", name="kl_divergence",
                                                            action="manual_review")
    events = [verified(blocked("fraud", "3.0.0", ts=at(1)), "gates", 0),
              verified(immediate, "rollbacks", 0),
              verified(blocked("fraud", "3.0.0", verdict="INCONCLUSIVE", ts=at(2)), "gates", 1),
              verified(review, "rollbacks", 1),
              verified(blocked("risk", "6.0.0", ts=at(3)), "gates", 2),
              verified(ready("risk", "6.0.0", ts=at(9)), "gates", 3)]
    entries = [handled(0, immediate, "COMPLETED", when=at(4)),
               handled(1, review, "MANUAL_REVIEW", when=at(5)),
               entry(2, facts=[moved("fraud", "3.0.0", "SHADOW", "RETIRED", when=at(6))]),
               entry(3, rollback=rollback("risk", "5.0.0", None, "FAILED", when=at(7)))]
    return events, entries


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=10, max_size=10))
def test_open_conditions_do_not_depend_on_how_the_topics_interleave(picks: list[bool]) -> None:
    events, entries = _scenario()
    reference = tracker()
    for item in [*events, *entries]:
        reference.apply(item)
    order: list[VerifiedEvent | VerifiedEntry] = []
    queue_a, queue_b = list(events), list(entries)
    for pick in picks:
        source = queue_a if (pick and queue_a) or not queue_b else queue_b
        order.append(source.pop(0))
    t = tracker()
    for item in order:
        t.apply(item)
    assert [c.slot for c in t.open_conditions] == [c.slot for c in reference.open_conditions]
    assert sorted(c.kind for c in t.open_conditions) == ["rollback_failed", "rollback_pending"]
