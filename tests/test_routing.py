"""Serving assignments: derived from the registry, signed, split by request id, read back by RoutingClient."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from scipy import stats

from governance.contract.kafkaio import SyncProducer
from governance.contract.stages import Stage
from governance.crypto.algorithms import Algorithm
from governance.crypto.keys import KeyPolicy, TrustStore, generate_key
from governance.crypto.record import sign_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError, VerificationError
from governance.lifecycle.ledger import Registered, Transitioned
from governance.lifecycle.machine import FORWARD
from governance.lifecycle.registry import Registry, replay
from governance.lifecycle.routing import Assignment, Canary, assignment_for, decode_assignment, encode_assignment
from shadowgate.routing_client import RoutingClient

T0 = datetime(2026, 11, 20, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


@pytest.fixture(scope="module")
def keys() -> tuple[Signer, TrustStore, Signer]:
    info, secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    other, other_secret = generate_key(Algorithm.ML_DSA_65, T0 - timedelta(days=1), KeyPolicy())
    return Signer(info, secret), TrustStore([info]), Signer(other, other_secret)


def _to(registry_events: list[object], version: str, stage: Stage) -> None:
    registry_events.append(Registered(event_id=f"{version}-r", at=T0, model="fraud", version=version,
                                      model_type="classification"))
    path = FORWARD[: FORWARD.index(stage) + 1]
    for a, b in zip(path, path[1:], strict=False):
        registry_events.append(Transitioned(event_id=f"{version}-{b}", at=T0, model="fraud", version=version,
                                            from_stage=a, to_stage=b))


def _registry() -> Registry:
    events: list[object] = []
    _to(events, "1.0.0", Stage.PRODUCTION)
    _to(events, "2.0.0", Stage.STAGING)
    _to(events, "3.0.0", Stage.SHADOW)
    _to(events, "3.1.0", Stage.SHADOW)
    _to(events, "4.0.0", Stage.TRAINING)
    return replay(events)  # type: ignore[arg-type]


def test_assignment_follows_the_registry() -> None:
    a = assignment_for(_registry(), "fraud", 0.05, 7, NOW)
    assert (a.production, a.canary, a.shadow, a.seq) == ("1.0.0", Canary(version="2.0.0", share=0.05),
                                                         ["3.0.0", "3.1.0"], 7)
    empty = assignment_for(_registry(), "unknown", 0.05, 7, NOW)
    assert (empty.production, empty.canary, empty.shadow) == (None, None, [])


def test_route_splits_by_share_deterministically() -> None:
    a = assignment_for(_registry(), "fraud", 0.08, 1, NOW)
    ids = [f"req-{i}" for i in range(20_000)]
    routed = [a.route(i) for i in ids]
    assert routed == [a.route(i) for i in ids]  # same request, same version
    canary = sum(1 for version, role in routed if role == "canary")
    assert all(v == ("2.0.0" if r == "canary" else "1.0.0") for v, r in routed)
    # Binomial(20000, 0.08): the observed share lies inside a 99.99 % interval.
    low, high = stats.binom.interval(0.9999, len(ids), 0.08)
    assert low <= canary <= high
    no_canary = Assignment(model="fraud", production="1.0.0", seq=1, issued_at=NOW)
    assert {no_canary.route(i) for i in ids[:100]} == {("1.0.0", "production")}


def test_signed_assignment_round_trips_and_refuses_tampering(keys: tuple[Signer, TrustStore, Signer]) -> None:
    signer, store, stranger = keys
    a = assignment_for(_registry(), "fraud", 0.05, 3, NOW)
    raw = encode_assignment(a, signer, NOW)
    assert decode_assignment(raw, store, NOW, Phase.PQC_ONLY) == a
    record = orjson.loads(raw)
    record["payload"]["production"] = "3.0.0"
    with pytest.raises(VerificationError):
        decode_assignment(orjson.dumps(record), store, NOW, Phase.PQC_ONLY)
    with pytest.raises(VerificationError, match="not in the trust store"):
        decode_assignment(encode_assignment(a, stranger, NOW), store, NOW, Phase.PQC_ONLY)
    # A validly signed event that is not a routing assignment is refused by type.
    event = sign_record({"type": "GateReady", "model": "fraud"}, Context.EVENT, signer, NOW)
    with pytest.raises(EventValidationError, match="not RoutingAssignment"):
        decode_assignment(orjson.dumps(event), store, NOW, Phase.PQC_ONLY)


@pytest.mark.integration
def test_routing_client_keeps_the_latest_valid_assignment(kafka_bootstrap: str, make_topic: Callable[..., str]) -> None:
    # Keys made now: the module's keys date from T0 and would expire under a wall clock 90 days later.
    now = datetime.now(UTC)
    info, secret = generate_key(Algorithm.ML_DSA_65, now - timedelta(days=1), KeyPolicy())
    other, other_secret = generate_key(Algorithm.ML_DSA_65, now - timedelta(days=1), KeyPolicy())
    signer, store, stranger = Signer(info, secret), TrustStore([info]), Signer(other, other_secret)
    topic = make_topic("routing", config={"cleanup.policy": "compact"})
    first = Assignment(model="fraud", production="1.0.0", seq=4, issued_at=now)
    second = Assignment(model="fraud", production="2.0.0", canary=Canary(version="3.0.0", share=0.1), seq=9,
                        issued_at=now)
    other = Assignment(model="churn", production="0.1.0", seq=9, issued_at=now)
    producer = SyncProducer(kafka_bootstrap)
    try:
        for value in (first, second, other):
            producer.send(topic, encode_assignment(value, signer, now), value.model.encode())
        # A replayed old record and a record by an untrusted key do not change anything.
        producer.send(topic, encode_assignment(first, signer, now), b"fraud")
        forged = Assignment(model="fraud", production="6.6.6", seq=99, issued_at=now)
        producer.send(topic, encode_assignment(forged, stranger, now), b"fraud")
        client = RoutingClient(kafka_bootstrap, topic, store)
        try:
            client.refresh()
            assert client.assignment("fraud") == second and client.assignment("churn") == other
            assert client.rejected == 1 and client.assignment("nope") is None
            assert client.route("nope", "r1") == (None, "production")
            client.start()
            third = Assignment(model="fraud", production="3.0.0", seq=12, issued_at=now)
            producer.send(topic, encode_assignment(third, signer, now), b"fraud")
            deadline = datetime.now(UTC) + timedelta(seconds=10)
            while client.assignment("fraud") != third and datetime.now(UTC) < deadline:
                client._stop.wait(0.05)
            assert client.assignment("fraud") == third
        finally:
            client.close()
    finally:
        producer.close()
    assert math.isclose(second.canary.share, 0.1)  # type: ignore[union-attr]
