"""Folding the audit log into the governance state, and the state materialised in Redis."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from governance.contract.comparison import ComparisonKey
from governance.contract.facts import gov_key, read_version_facts
from governance.contract.stages import Stage
from governance.errors import InfrastructureError, VerificationError
from governance.lifecycle.audit import GENESIS, AuditEntry, GateRecord, Input, Rejection
from governance.lifecycle.ledger import EscalationRaised, Registered, Transitioned
from governance.lifecycle.machine import FORWARD
from governance.lifecycle.state import GovernanceState, as_verdict, fold, latest_gate, rebuild
from governance.service.statestore import StateStore, version_facts
from streams.worker.lifecycle_view import RoundFacts, lifecycle_context, production_monitor
from tests.fault_servers import RedisServer
from tests.lifecycle_samples import MODEL_FEATURES, valid_metadata

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def _hash(seq: int) -> str:
    return hashlib.sha256(f"entry-{seq}".encode()).hexdigest()


def _source(seq: int, topic: str = "governance.commands", rejected: bool = False) -> Input:
    return Input(topic=topic, partition=0, offset=100 + seq, digest=_hash(seq), kind="command", id=f"in-{seq}",
                 type="advance", actor="GID-08")


def _moves(model: str, version: str, start: datetime, to: Stage) -> list[Any]:
    facts: list[Any] = [Registered(event_id=f"{version}-reg", at=start, model=model, version=version,
                                   model_type="classification", metadata=valid_metadata(version),
                                   features=MODEL_FEATURES)]
    path = FORWARD[: FORWARD.index(to) + 1]
    for i, (a, b) in enumerate(zip(path, path[1:], strict=False)):
        facts.append(Transitioned(event_id=f"{version}-t{i}", at=start + timedelta(days=i + 1), model=model,
                                  version=version, from_stage=a, to_stage=b))
    return facts


def _log() -> list[tuple[AuditEntry, str]]:
    gate = GateRecord(event_id="g-1", model="fraud", version="2.0.0", production_version="1.0.0", stage="STAGING",
                      gate="staging", passed=False, failures=["p99_latency_ms: 612 >= 500"], ts=T0,
                      policy_hash="0" * 64, event={"type": "GateBlocked"})
    bodies: list[dict[str, Any]] = [
        {"facts": _moves("fraud", "1.0.0", T0, Stage.PRODUCTION)},
        {"facts": _moves("fraud", "2.0.0", T0 + timedelta(days=1), Stage.STAGING)},
        {"facts": _moves("fraud", "3.0.0", T0 + timedelta(days=2), Stage.SHADOW)},
        {"outcome": "recorded", "gate": gate},
        {"facts": [EscalationRaised(event_id="esc#0", at=T0 + timedelta(days=9), model="fraud", version="3.0.0",
                                    escalation_id="ESC-1", reason="label delay")]},
        {"outcome": "rejected", "rejection": Rejection(reason="bad_signature", message="forged")},
        {"outcome": "rejected", "rejection": Rejection(reason="refused", message="no", rules=["r"])},
    ]
    log, head = [], GENESIS
    for seq, body in enumerate(bodies):
        source = _source(seq)
        entry = AuditEntry(seq=seq, prev_hash=head, at=T0 + timedelta(days=10, minutes=seq), input=source,
                           **{"outcome": "applied", **body})
        log.append((entry, _hash(seq)))
        head = _hash(seq)
    return log


def test_rebuild_applies_facts_gates_and_rejections() -> None:
    state = rebuild(_log())
    line = state.registry.models["fraud"]
    assert line.production == "1.0.0"
    assert {v: r.stage for v, r in line.versions.items()} == {
        "1.0.0": Stage.PRODUCTION, "2.0.0": Stage.STAGING, "3.0.0": Stage.SHADOW}
    assert (state.seq, state.head) == (6, _hash(6))
    record = latest_gate(state, "fraud", "2.0.0", "STAGING")
    assert record is not None and as_verdict(record) is not None
    assert as_verdict(record).failures == ("p99_latency_ms: 612 >= 500",)  # type: ignore[union-attr]
    assert as_verdict(latest_gate(state, "fraud", "3.0.0", "SHADOW")) is None
    assert state.rejections == {"bad_signature": 1, "refused": 1}
    assert state.positions == {"governance.commands:0": 106}
    # A forged input's claimed id is not remembered (it could burn a genuine id); a refused command's is.
    assert "in-5" not in state.seen and state.seen["in-6"] == 6
    assert state.handled("governance.commands", 0, 106) and not state.handled("governance.commands", 0, 107)


def test_state_json_round_trip_is_exact() -> None:
    state = rebuild(_log())
    assert GovernanceState.model_validate_json(state.model_dump_json()) == state


def test_fold_refuses_an_entry_that_does_not_continue_the_chain() -> None:
    log = _log()
    state = rebuild(log[:3])
    entry, digest = log[4]
    with pytest.raises(VerificationError, match="seq 4 does not follow seq 2"):
        fold(state, entry, digest)
    entry, digest = log[3]
    with pytest.raises(VerificationError, match="does not link"):
        fold(state, entry.model_copy(update={"prev_hash": _hash(99)}), digest)


def test_fold_refuses_a_fact_the_registry_refuses() -> None:
    log = _log()
    state = rebuild(log[:1])
    stale = Transitioned(event_id="x", at=T0, model="fraud", version="1.0.0", from_stage=Stage.SHADOW,
                         to_stage=Stage.STAGING)
    entry = AuditEntry(seq=1, prev_hash=state.head, at=T0, input=_source(1), outcome="applied", facts=[stale])
    with pytest.raises(VerificationError, match="registry refuses"):
        fold(state, entry, _hash(1))


def test_version_facts_are_computed_from_the_registry() -> None:
    state = rebuild(_log())
    canary = version_facts(state, "fraud", "2.0.0", 0.07)
    assert canary.stage is Stage.STAGING and canary.canary_share == 0.07
    assert canary.entered_stage_at == T0 + timedelta(days=1) + timedelta(days=4)
    assert canary.trained_at == datetime(2026, 1, 2, 18, 30, tzinfo=UTC)  # valid_metadata's training_date
    shadow = version_facts(state, "fraud", "3.0.0", 0.07)
    assert shadow.canary_share is None and shadow.open_escalations == ["ESC-1"]
    assert shadow.production_version == "1.0.0" and shadow.rollback_to is None


@pytest.mark.integration
def test_redis_round_trip_and_worker_lookup(redis_url: str, redis_prefix: str) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    try:
        store = StateStore(client, redis_prefix)
        assert store.load() is None
        state = rebuild(_log())
        store.save(state, 0.05, T0)
        assert store.load() == state
        facts = read_version_facts(client, redis_prefix, "fraud", "3.0.0")
        assert facts == version_facts(state, "fraud", "3.0.0", 0.05)
        assert read_version_facts(client, redis_prefix, "fraud", "9.9.9") is None
        assignment = store.assignment("fraud")
        assert assignment is not None and assignment.production == "1.0.0"
        assert assignment.canary is not None and assignment.canary.version == "2.0.0"
        assert assignment.shadow == ["3.0.0"]

        fallback_calls: list[ComparisonKey] = []

        def fallback(key: ComparisonKey, first: datetime | None) -> Any:
            fallback_calls.append(key)
            return None

        source = lifecycle_context(client, redis_prefix, fallback, clock=lambda: T0 + timedelta(days=12))
        context = source(ComparisonKey("fraud", "1.0.0", "3.0.0", "shadow"), None)
        assert context.stage == "SHADOW" and context.model_type == "classification"
        assert context.stage_started_at == T0 + timedelta(days=2) + timedelta(days=3)
        assert context.escalations_7d == 1
        canary = source(ComparisonKey("fraud", "1.0.0", "2.0.0", "canary"), None)
        assert canary.stage == "STAGING" and canary.canary_share == 0.05
        # A registered version outside the candidate's stage is not judged as a candidate at all;
        # only an unregistered one falls back (to the strictest rules, in the worker).
        assert source(ComparisonKey("fraud", "1.0.0", "2.0.0", "shadow"), None) is None
        assert fallback_calls == []
        assert source(ComparisonKey("fraud", "1.0.0", "9.9.9", "shadow"), None) is None
        assert fallback_calls == [ComparisonKey("fraud", "1.0.0", "9.9.9", "shadow")]
        # The serving production version is monitored whatever its candidate's stage.
        monitor = production_monitor(client, redis_prefix)
        watched = monitor(ComparisonKey("fraud", "1.0.0", "3.0.0", "shadow"))
        assert watched is not None and watched.stage == "PRODUCTION"
        assert monitor(ComparisonKey("fraud", "3.0.0", "1.0.0", "shadow")) is None
    finally:
        client.close()


@pytest.mark.integration
def test_a_round_reads_the_lifecycle_facts_of_all_its_comparisons_at_once(redis_url: str, redis_prefix: str) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    try:
        StateStore(client, redis_prefix).save(rebuild(_log()), 0.05, T0)
        fallback_calls: list[ComparisonKey] = []

        def fallback(key: ComparisonKey, first: datetime | None) -> Any:
            fallback_calls.append(key)
            return None

        def clock() -> datetime:
            return T0 + timedelta(days=12)

        keys = [ComparisonKey("fraud", "1.0.0", "3.0.0", "shadow"), ComparisonKey("fraud", "1.0.0", "2.0.0", "canary"),
                ComparisonKey("fraud", "1.0.0", "2.0.0", "shadow"), ComparisonKey("fraud", "1.0.0", "9.9.9", "shadow"),
                ComparisonKey("fraud", "3.0.0", "1.0.0", "shadow")]  # fmt: skip
        plain, plain_monitor = lifecycle_context(client, redis_prefix, fallback, clock=clock), production_monitor(
            client, redis_prefix)  # fmt: skip
        want = [(plain(key, None), plain_monitor(key)) for key in keys]
        assert want[0][0] is not None and want[1][0] is not None and want[0][1] is not None  # facts of both kinds
        facts = RoundFacts(client, redis_prefix)
        source = lifecycle_context(client, redis_prefix, fallback, clock=clock, facts=facts)
        monitor = production_monitor(client, redis_prefix, facts=facts)
        facts.prefetch(keys)
        # Gone from Redis after the prefetch: the round still judges by the facts as they stood when it began,
        # so it read them all in its one MGET, none afterwards.
        client.delete(*{gov_key(redis_prefix, "version", k.model, v) for k in keys
                        for v in (k.candidate_version, k.production_version)})  # fmt: skip
        assert [(source(key, None), monitor(key)) for key in keys] == want
        facts.clear()  # the end of the round: reads go to Redis again
        assert source(keys[0], None) is None and fallback_calls[-1] == keys[0]
        assert monitor(keys[0]) is None
    finally:
        client.close()


@pytest.mark.integration
def test_the_round_facts_fail_as_infrastructure_when_redis_stops(fault_redis: RedisServer) -> None:
    client: redis.Redis[bytes] = redis.Redis.from_url(fault_redis.url, socket_timeout=5.0)
    try:
        facts = RoundFacts(client, "sg")
        facts.prefetch([ComparisonKey("fraud", "1.0.0", "3.0.0", "shadow")])  # answered: nothing registered
        fault_redis.stop()
        with pytest.raises(InfrastructureError, match="lifecycle facts of 2 versions"):
            facts.prefetch([ComparisonKey("fraud", "1.0.0", "3.0.0", "shadow")])
    finally:
        client.close()
