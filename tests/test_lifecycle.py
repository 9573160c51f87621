"""The lifecycle state machine: the full Stage x Stage matrix, minimum durations, every gate's rules."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from governance.contract.stages import Stage
from governance.errors import ConfigError, EventValidationError, PolicyViolation
from governance.lifecycle.machine import (
    ALLOWED_TRANSITIONS,
    SPEC_MIN_DURATION,
    Assessment,
    LifecycleState,
    TransitionRequest,
    spec_min_durations,
    transition,
)
from tests.lifecycle_samples import SPEC_FORWARD, SPEC_LEGAL, T0, complete_documents, valid_metadata

LONG_AGO = T0 - timedelta(days=365)
PASS = Assessment(passed=True)
# Spec 1.2 minimum durations (SHADOW at the spec 10.2 floor), and spec 3.1 shadow durations by model type.
SPEC_DAYS = {"PROPOSAL": 1, "PROTOTYPE": 3, "TRAINING": 2, "SHADOW": 7, "STAGING": 3}
SPEC_SHADOW_DAYS = {"risk_scoring": 14, "classification": 7, "anomaly_detection": 21, "ranking": 14}


def full_request(target: Stage, **changes: Any) -> TransitionRequest:
    """Evidence that satisfies every gate of every transition."""
    request = TransitionRequest(
        target=target,
        reason="planned",
        approvals=frozenset({"GID-02", "GID-08"}),
        documents={Stage(s): d for s, d in complete_documents().items()},
        metadata=valid_metadata(),
        feature_linkage=PASS,
        shadow_checklist=PASS,
        staging_gate=PASS,
        proofpack_id="PP-2026-0001",
    )
    return replace(request, **changes)


def refused(state: LifecycleState, request: TransitionRequest, now: datetime = T0) -> list[str]:
    with pytest.raises(PolicyViolation) as info:
        transition(state, request, now)
    assert str(info.value).count("[") >= len(info.value.rules)  # the message carries every rule
    return info.value.rules


def test_table_is_exactly_the_spec_diagram() -> None:
    table = {(a.value, b.value) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == SPEC_LEGAL
    assert set(ALLOWED_TRANSITIONS) == set(Stage)
    assert ALLOWED_TRANSITIONS[Stage.RETIRED] == frozenset()


@pytest.mark.parametrize(("source", "target"), list(itertools.product(Stage, Stage)), ids=lambda s: s.value)
def test_every_pair_of_stages(source: Stage, target: Stage) -> None:
    state = LifecycleState(source, LONG_AGO)
    if (source.value, target.value) in SPEC_LEGAL:
        assert transition(state, full_request(target), T0) == LifecycleState(target, T0)
    else:
        rules = refused(state, full_request(target))
        assert len(rules) == 1
        assert rules[0].startswith(f"[1.1] transition {source} -> {target} is not allowed")


@pytest.mark.parametrize("source", SPEC_FORWARD[:-1])
@pytest.mark.parametrize("offset", [timedelta(0), timedelta(microseconds=-1), timedelta(microseconds=1)])
def test_minimum_duration_boundary(source: str, offset: timedelta) -> None:
    minimum = timedelta(days=SPEC_DAYS[source])
    target = Stage(SPEC_FORWARD[SPEC_FORWARD.index(source) + 1])
    state = LifecycleState(Stage(source), T0 - minimum - offset)
    if offset >= timedelta(0):
        assert transition(state, full_request(target), T0).stage is target
    else:
        rules = refused(state, full_request(target))
        assert rules == [rules[0]] and rules[0].startswith(f"[1.2] minimum duration in {source} not met")


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SPEC_FORWARD[:-1]), st.integers(min_value=0, max_value=30 * 86_400))
def test_duration_refused_exactly_when_too_short(source: str, elapsed_s: int) -> None:
    target = Stage(SPEC_FORWARD[SPEC_FORWARD.index(source) + 1])
    state = LifecycleState(Stage(source), T0 - timedelta(seconds=elapsed_s))
    too_short = elapsed_s < SPEC_DAYS[source] * 86_400
    try:
        transition(state, full_request(target), T0)
        assert not too_short
    except PolicyViolation as exc:
        assert too_short and len(exc.rules) == 1


@pytest.mark.parametrize("model_type", sorted(SPEC_SHADOW_DAYS))
def test_shadow_duration_by_model_type(model_type: Any) -> None:
    durations = spec_min_durations(model_type)
    days = SPEC_SHADOW_DAYS[model_type]
    assert durations[Stage.SHADOW] == timedelta(days=days)
    ok = LifecycleState(Stage.SHADOW, T0 - timedelta(days=days))
    short = LifecycleState(Stage.SHADOW, T0 - timedelta(days=days) + timedelta(seconds=1))
    assert transition(ok, full_request(Stage.STAGING), T0, min_duration=durations).stage is Stage.STAGING
    with pytest.raises(PolicyViolation):
        transition(short, full_request(Stage.STAGING), T0, min_duration=durations)
    assert {s: durations[s] for s in Stage if s is not Stage.SHADOW} == {
        s: SPEC_MIN_DURATION[s] for s in Stage if s is not Stage.SHADOW
    }


def test_spec_default_durations() -> None:
    assert {s.value: SPEC_MIN_DURATION[s] for s in Stage if s.value in SPEC_DAYS} == {
        s: timedelta(days=d) for s, d in SPEC_DAYS.items()
    }
    with pytest.raises(ConfigError, match="'fraud'"):
        spec_min_durations("fraud")  # type: ignore[arg-type]


def test_missing_duration_fails_closed() -> None:
    state = LifecycleState(Stage.TRAINING, LONG_AGO)
    with pytest.raises(ConfigError, match="TRAINING"):
        transition(state, full_request(Stage.SHADOW), T0, min_duration={Stage.PROPOSAL: timedelta(0)})


@pytest.mark.parametrize("source", ["SHADOW", "STAGING", "PRODUCTION"])
def test_a_rollback_is_immediate_and_needs_only_a_reason(source: str) -> None:
    # Entered this very instant, open escalations, no documents at all: a rollback (8.2) still goes through.
    state = LifecycleState(Stage(source), T0)
    bare = TransitionRequest(target=Stage.RETIRED, reason="error rate 2.3 % > 1 % for 5 min", open_escalations=("E1",),
                             rollback=True)
    assert transition(state, bare, T0) == LifecycleState(Stage.RETIRED, T0)
    assert refused(state, replace(bare, reason="  ")) == ["[8.2] a rollback or retirement needs a reason"]


@pytest.mark.parametrize("source", ["SHADOW", "STAGING", "PRODUCTION"])
def test_a_retirement_that_is_not_a_rollback_needs_the_retired_documents(source: str) -> None:
    # Spec 9.1 RETIRED: "Retirement justification, migration notes"; no duration, escalation or other stage's paper.
    state = LifecycleState(Stage(source), T0)
    bare = TransitionRequest(target=Stage.RETIRED, reason="superseded by 3.0.0", open_escalations=("E1",))
    assert refused(state, bare) == [
        "[9] RETIRED document 'retirement_justification' (retirement justification) is missing; record it as Markdown",
        "[9] RETIRED document 'migration_notes' (migration notes) is missing; record it as Markdown",
    ]
    retired_docs = {Stage.RETIRED: complete_documents()["RETIRED"]}
    assert transition(state, replace(bare, documents=retired_docs), T0) == LifecycleState(Stage.RETIRED, T0)


# ------------------------------------------------------------------------------------------------ gates


def test_prototype_gate_names_both_rules() -> None:
    state = LifecycleState(Stage.PROPOSAL, LONG_AGO)
    rules = refused(state, TransitionRequest(target=Stage.PROTOTYPE))
    assert rules == [
        "[7.1] Model proposal document required: record the PROPOSAL document 'proposal'",
        "[7.1] Maggie (GID-02) approval required for PROTOTYPE",
    ]


def test_prototype_gate_wants_gid02_not_any_approver() -> None:
    state = LifecycleState(Stage.PROPOSAL, LONG_AGO)
    rules = refused(state, full_request(Stage.PROTOTYPE, approvals=frozenset({"GID-08", "GID-01"})))
    assert rules == ["[7.1] Maggie (GID-02) approval required for PROTOTYPE"]


def test_prototype_gate_checks_proposal_sections() -> None:
    documents = complete_documents()
    documents["PROPOSAL"]["proposal"] = "# Proposal\n\n## Objective\n\nCatch more fraud.\n"
    state = LifecycleState(Stage.PROPOSAL, LONG_AGO)
    rules = refused(state, full_request(Stage.PROTOTYPE, documents={Stage(s): d for s, d in documents.items()}))
    missing = ["business_justification", "technical_approach", "risk_assessment", "success_criteria"]
    assert len(rules) == len(missing)
    for rule, section in zip(rules, missing, strict=True):
        assert rule.startswith("[9] PROPOSAL document 'proposal'") and f"no section {section!r}" in rule


def test_training_gate_needs_the_baseline() -> None:
    state = LifecycleState(Stage.PROTOTYPE, LONG_AGO)
    rules = refused(state, TransitionRequest(target=Stage.TRAINING))
    assert rules == [
        "[1.2] Metrics baseline required: record the PROTOTYPE document 'baseline_metrics'",
        "[9] PROTOTYPE document 'feature_analysis' (feature analysis) is missing; record it as Markdown",
    ]


def test_shadow_gate_with_nothing() -> None:
    state = LifecycleState(Stage.TRAINING, LONG_AGO)
    rules = refused(state, TransitionRequest(target=Stage.SHADOW))
    assert rules[0] == ("[1.2] Training approval required: Maggie (GID-02) approves the training run (approve the "
                        "move to SHADOW while in TRAINING)")
    assert rules[1].startswith("[4.2] Missing required fields: ['model_id', 'model_type', 'version'")
    assert "[7.1] Training data hash required" in rules
    assert "[7.1] Model type must be glass-box (EBM/GAM/LogReg)" in rules
    assert any(r.startswith("[5.2] Feature catalog linkage not validated") for r in rules)
    assert sum(r.startswith("[9] TRAINING document") for r in rules) == 2  # training, training_config


def test_training_is_approved_by_gid02_only() -> None:
    # Spec 1.2 TRAINING exit "Training approved": ML engineering (GID-02) approves the training run.
    state = LifecycleState(Stage.TRAINING, LONG_AGO)
    rules = refused(state, full_request(Stage.SHADOW, approvals=frozenset({"GID-08"})))
    assert rules == ["[1.2] Training approval required: Maggie (GID-02) approves the training run (approve the move "
                     "to SHADOW while in TRAINING)"]
    assert transition(state, full_request(Stage.SHADOW, approvals=frozenset({"GID-02"})), T0).stage is Stage.SHADOW


def test_shadow_gate_refuses_a_black_box_in_spec_words() -> None:
    state = LifecycleState(Stage.TRAINING, LONG_AGO)
    metadata = valid_metadata() | {"model_type": "XGBoost"}
    rules = refused(state, full_request(Stage.SHADOW, metadata=metadata))
    assert rules == [
        "[4.2] Invalid model_type: XGBoost. Allowed: ['EBM', 'GAM', 'LogisticRegression', 'MonotoneGBDT']",
        rules[1],
        "[7.1] Model type must be glass-box (EBM/GAM/LogReg)",
    ]
    assert "black-box models (XGBoost, RandomForest, etc.) cannot be used (spec 11)" in rules[1]


def test_shadow_gate_reports_feature_linkage_failures() -> None:
    state = LifecycleState(Stage.TRAINING, LONG_AGO)
    linkage = Assessment(passed=False, failures=("Model uses features not in catalog: {'zip_code'}",))
    rules = refused(state, full_request(Stage.SHADOW, feature_linkage=linkage))
    assert rules == ["[5.2] Model uses features not in catalog: {'zip_code'}"]


def test_shadow_gate_missing_hash_is_named_twice_as_the_spec_does() -> None:
    metadata = valid_metadata()
    del metadata["training_data_hash"]
    rules = refused(LifecycleState(Stage.TRAINING, LONG_AGO), full_request(Stage.SHADOW, metadata=metadata))
    assert rules == ["[4.2] Missing required fields: ['training_data_hash']", "[7.1] Training data hash required"]


def test_staging_gate() -> None:
    state = LifecycleState(Stage.SHADOW, LONG_AGO)
    assert refused(state, full_request(Stage.STAGING, shadow_checklist=None)) == [
        "[3.2] Shadow completion checklist not evaluated: no verdict, so no promotion"
    ]
    failed = Assessment(passed=False, failures=("min_samples_met", "metrics_pass_gate"))
    assert refused(state, full_request(Stage.STAGING, shadow_checklist=failed)) == [
        "[7.1] Shadow completion failed: ['min_samples_met', 'metrics_pass_gate']"
    ]


def test_staging_needs_alex_shadow_review_unless_the_policy_turns_it_off() -> None:
    # Spec 9.2 shadow: "alex_review: required"; GID-02's approval is not ALEX's review.
    state = LifecycleState(Stage.SHADOW, LONG_AGO)
    review = ("[9.2] ALEX (GID-08) shadow review required: ALEX approves the move to STAGING while in SHADOW")
    assert refused(state, full_request(Stage.STAGING, approvals=frozenset({"GID-02"}))) == [review]
    assert refused(state, full_request(Stage.STAGING, approvals=frozenset(), shadow_checklist=None)) == [
        "[3.2] Shadow completion checklist not evaluated: no verdict, so no promotion", review]
    off = full_request(Stage.STAGING, approvals=frozenset(), shadow_review_required=False)
    assert transition(state, off, T0).stage is Stage.STAGING


def test_production_gate_with_nothing_names_every_rule() -> None:
    state = LifecycleState(Stage.STAGING, LONG_AGO)
    rules = refused(state, TransitionRequest(target=Stage.PRODUCTION))
    assert rules[:3] == [
        "[2.1] Staging gate not evaluated: no verdict, so no promotion",
        "[7.1] ALEX (GID-08) production approval required",
        "[7.1] ProofPack artifact required",
    ]
    assert [r.split("'")[1] for r in rules[3:]] == ["production", "canary_results", "performance_report"]


def test_production_gate_each_rule_alone() -> None:
    state = LifecycleState(Stage.STAGING, LONG_AGO)
    failed = Assessment(passed=False, failures=("P99 latency 612ms >= 500ms", "Error rate 0.0021 >= 0.1%"))
    assert refused(state, full_request(Stage.PRODUCTION, staging_gate=failed)) == [
        "[2.1] P99 latency 612ms >= 500ms",
        "[2.1] Error rate 0.0021 >= 0.1%",
    ]
    gid02_only = full_request(Stage.PRODUCTION, approvals=frozenset({"GID-02"}))
    assert refused(state, gid02_only) == ["[7.1] ALEX (GID-08) production approval required"]
    assert refused(state, full_request(Stage.PRODUCTION, proofpack_id=None)) == ["[7.1] ProofPack artifact required"]
    other = refused(state, full_request(Stage.PRODUCTION, proofpack_id="PP-2026-0002"))
    assert len(other) == 1 and "'PP-2026-0002' is not the metadata's proof_pack_id 'PP-2026-0001'" in other[0]


def test_open_escalation_blocks_every_promotion() -> None:
    for source, target in zip(SPEC_FORWARD, SPEC_FORWARD[1:], strict=False):
        state = LifecycleState(Stage(source), LONG_AGO)
        rules = refused(state, full_request(Stage(target), open_escalations=("ESC-7",)))
        assert rules == ["[escalation] open escalation(s) ['ESC-7'] block promotion; resolve them first"]


def test_a_resolved_escalation_still_blocks_until_its_until() -> None:
    state = LifecycleState(Stage.SHADOW, LONG_AGO)
    until = T0 + timedelta(days=2)
    rules = refused(state, full_request(Stage.STAGING, held_escalations=(("ESC-9", until),)))
    assert rules == ["[escalation] resolved escalation(s) still block promotion until their blocks_until: "
                     f"ESC-9 until {until.isoformat()}"]


def test_all_broken_rules_at_once_in_order() -> None:
    # Too early, escalated, PROPOSAL undocumented, no approval: four different rules, all named.
    state = LifecycleState(Stage.PROPOSAL, T0 - timedelta(hours=3))
    request = TransitionRequest(target=Stage.PROTOTYPE, open_escalations=("E1", "E2"))
    rules = refused(state, request)
    assert [r.split(" ")[0] for r in rules] == ["[7.1]", "[7.1]", "[1.2]", "[escalation]"]
    assert "3:00:00 elapsed of 1 day, 0:00:00" in rules[2]


def test_times_must_be_aware_utc() -> None:
    with pytest.raises(EventValidationError, match="entered_stage_at"):
        LifecycleState(Stage.SHADOW, datetime(2026, 1, 1))  # noqa: DTZ001
    state = LifecycleState(Stage.SHADOW, LONG_AGO)
    with pytest.raises(EventValidationError, match="now"):
        transition(state, full_request(Stage.STAGING), datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    assert transition(state, full_request(Stage.STAGING), T0.astimezone(UTC)).stage is Stage.STAGING


def test_verdict_must_be_consistent() -> None:
    with pytest.raises(ValidationError, match="names no failure"):
        Assessment(passed=False)
    with pytest.raises(ValidationError, match="lists failures"):
        Assessment(passed=True, failures=("x",))
    with pytest.raises(ValidationError):
        Assessment.model_validate({"passed": "yes"})
