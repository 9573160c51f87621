"""The publisher SDK against the real broker: round trips, partitioning, refusal of bad input."""

from __future__ import annotations

import gc
import time
import weakref
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from governance.contract.wire import decode_label, decode_scores
from governance.errors import EventValidationError, InfrastructureError
from shadowgate.partitioner import murmur2, partition_for
from shadowgate.sdk import LabelPublisher, ScorePublisher

pytestmark = pytest.mark.integration

TS = datetime(2026, 11, 1, tzinfo=UTC)


def _events(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n // 2):
        base = {"request_id": f"req-{i}", "model": "fraud", "ts": TS + timedelta(milliseconds=i)}
        out.append({**base, "version": "1.0.0", "role": "production", "score": (i % 1000) / 1000,
                    "latency_ms": float(i % 97)})
        out.append({**base, "version": "1.1.0", "role": "shadow", "score": ((i * 7) % 1000) / 1000,
                    "latency_ms": float(i % 89), "features": {"amount": i * 0.5, "country": "DE"}})
    return out


def _consume_all(bootstrap: str, topic: str, expected: int, group: str, timeout_s: float = 120.0) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    msgs: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=1.0)
            for msg in batch:
                assert msg.error() is None, msg.error()
                msgs.append(msg)
            if sum(len(decode_scores(m.value())) if b'"role"' in m.value() else 1 for m in msgs) >= expected:
                break
    finally:
        consumer.close()
    return msgs


def test_murmur2_matches_kafka_reference_values() -> None:
    # Reference values of org.apache.kafka.common.utils.Utils.murmur2 (Kafka's own unit test).
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-long-string") == (-985981536) & 0xFFFFFFFF
    assert murmur2(b"a-little-bit-longer-string") == (-1486304829) & 0xFFFFFFFF
    assert murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") == (-58897971) & 0xFFFFFFFF
    assert murmur2(b"abc") == 479470107


def test_partition_for_matches_librdkafka_murmur2(kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("part", partitions=7)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    placed: dict[str, int] = {}

    def record(err: Any, msg: Any) -> None:
        assert err is None
        placed[msg.key().decode()] = msg.partition()

    for i in range(300):
        producer.produce(topic, key=f"request-{i}".encode(), value=b"x", on_delivery=record)
    assert producer.flush(30) == 0
    assert len(placed) == 300
    assert all(partition_for(k.encode(), 7) == p for k, p in placed.items())


@pytest.mark.parametrize("batch_size", [0, 500])
def test_round_trip_100k_events(kafka_bootstrap: str, make_topic, unique: str, batch_size: int) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("rt", partitions=4)
    sent = _events(100_000)
    with ScorePublisher(kafka_bootstrap, topic, batch_size=batch_size) as pub:
        for ev in sent:
            pub.publish(ev)
    assert pub.stats.queued == pub.stats.delivered == 100_000 and pub.stats.failed == 0
    if batch_size:
        assert pub.stats.messages < 100_000 / 100
    msgs = _consume_all(kafka_bootstrap, topic, 100_000, f"g-{unique}")
    received = []
    partition_of: dict[str, set[int]] = {}
    for msg in msgs:
        for ev in decode_scores(msg.value()):
            received.append(ev)
            partition_of.setdefault(ev.request_id, set()).add(msg.partition())
    assert len(received) == 100_000
    # Intact: every field of every event comes back as sent (order within a partition kept).
    want = Counter((e["request_id"], e["role"], e["score"], e["latency_ms"], e["ts"]) for e in sent)
    got = Counter((e.request_id, e.role, e.score, e.latency_ms, e.ts) for e in received)
    assert got == want
    assert all(e.features == {"amount": int(e.request_id.split("-")[1]) * 0.5, "country": "DE"}
               for e in received if e.role == "shadow")
    # Both sides of every request meet on one partition, with or without envelopes.
    assert all(len(parts) == 1 for parts in partition_of.values())
    assert all(parts == {partition_for(rid.encode(), 4)} for rid, parts in partition_of.items())


@pytest.mark.parametrize(
    "over",
    [{"score": 1.5}, {"score": float("nan")}, {"ts": datetime(2026, 11, 1)},  # noqa: DTZ001
     {"request_id": None}, {"role": "champion"}],
)
def test_bad_input_raises_and_sends_nothing(kafka_bootstrap: str, make_topic, over: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("bad")
    good = _events(2)
    bad = {**good[1], **over}
    if over.get("request_id", "") is None:
        del bad["request_id"]
    field = next(iter(over))
    for batch_size in (0, 10):
        pub = ScorePublisher(kafka_bootstrap, topic, batch_size=batch_size)
        with pytest.raises(EventValidationError) as info:
            pub.publish_many([good[0], bad])
        assert info.value.field == field
        with pytest.raises(EventValidationError):
            pub.publish(bad)
        pub.close()
        assert pub.stats.queued == 0 and pub.stats.messages == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    assert consumer.consume(num_messages=10, timeout=3.0) == []
    consumer.close()


def test_label_publisher_round_trip(kafka_bootstrap: str, make_topic, unique: str) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("labels", partitions=2)
    with LabelPublisher(kafka_bootstrap, topic) as pub:
        for i in range(1000):
            pub.publish({"request_id": f"req-{i}", "model": "fraud", "label": i % 2, "ts": TS})
        with pytest.raises(EventValidationError, match="label"):
            pub.publish({"request_id": "x", "model": "fraud", "label": 3, "ts": TS})
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got = []
    for _ in range(30):
        got += [decode_label(m.value()) for m in consumer.consume(num_messages=1000, timeout=1.0)]
        if len(got) >= 1000:
            break
    consumer.close()
    assert sorted((x.request_id, x.label) for x in got) == sorted((f"req-{i}", i % 2) for i in range(1000))


def test_the_default_publisher_sends_envelopes(kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("default", partitions=1)
    # A long linger, so a slow machine cannot send an envelope before it is full: only the size is tested.
    with ScorePublisher(kafka_bootstrap, topic, linger_s=60.0) as pub:
        for ev in _events(1200):
            pub.publish(ev)
    assert pub.batch_size == 500 and pub.stats.delivered == 1200
    assert pub.stats.messages == 3  # 500 + 500 + 200 on the one partition


def test_an_envelope_publisher_without_a_broker_fails_at_once_naming_the_topic(unique: str) -> None:
    with pytest.raises(InfrastructureError, match=f"cannot read metadata of topic nowhere-{unique}"):
        ScorePublisher("127.0.0.1:1", f"nowhere-{unique}", metadata_timeout_s=1.0)


def test_delivery_errors_reach_the_callback(unique: str) -> None:
    errors = []
    # batch_size=0: an envelope publisher reads the topic's partitions when created (tested below).
    pub = ScorePublisher("127.0.0.1:1", f"nowhere-{unique}", batch_size=0, on_delivery_error=errors.append,
                         producer_config={"message.timeout.ms": 1500})
    pub.publish(_events(2)[0])
    assert pub.flush(10) == 0
    assert pub.stats.failed == 1 and len(errors) == 1
    assert f"nowhere-{unique}" in str(errors[0]) and "req-0" in str(errors[0])


def test_a_half_full_envelope_is_sent_after_linger_even_when_publishing_stops(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, make_topic, unique: str
) -> None:
    topic = make_topic("scores", partitions=1)
    pub = ScorePublisher(kafka_bootstrap, topic, batch_size=500, linger_s=0.2)
    try:
        for event in _events(4):
            pub.publish(event)
        # No further publish, no flush: only the background linger can send the envelope.
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique,
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        got = []
        for _ in range(20):
            got += [m for m in consumer.consume(num_messages=10, timeout=1.0) if m.error() is None]
            if got:
                break
        consumer.close()
        assert len(got) == 1
        assert [e.request_id for e in decode_scores(got[0].value())] == ["req-0", "req-0", "req-1", "req-1"]
        deadline = time.monotonic() + 5
        while pub.stats.delivered < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.stats.delivered == 4  # delivery reports are served while idle too
    finally:
        pub.close()
    assert pub._lingerer is not None and not pub._lingerer.is_alive()


def test_an_unclosed_envelope_publisher_can_be_collected(kafka_bootstrap: str, make_topic) -> None:  # type: ignore[no-untyped-def]
    pub = ScorePublisher(kafka_bootstrap, make_topic("scores", partitions=1), batch_size=10, linger_s=0.05)
    thread, ref = pub._lingerer, weakref.ref(pub)
    assert thread is not None
    del pub
    gc.collect()
    assert ref() is None
    thread.join(5)
    assert not thread.is_alive()


def test_consume_prints_headers_such_as_a_dead_letters_reason(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, make_topic, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from shadowgate.cli import cli

    topic = make_topic("dlq", partitions=1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"r-1", value=b"not json", headers=[("shadowgate.reason", b"not valid JSON: x")])
    producer.produce(topic, key=b"r-2", value=b'{"a": 1}')
    assert producer.flush(10) == 0
    monkeypatch.setenv("SHADOWGATE_KAFKA_BOOTSTRAP", kafka_bootstrap)
    result = CliRunner().invoke(cli, ["consume", topic, "--max-messages", "2", "--idle-timeout", "20"])
    assert result.exit_code == 0, result.output
    first, second = (orjson.loads(line) for line in result.output.splitlines())
    assert first == {"partition": 0, "offset": 0, "key": "r-1", "headers": {"shadowgate.reason": "not valid JSON: x"},
                     "value": "not json"}  # fmt: skip
    assert second == {"partition": 0, "offset": 1, "key": "r-2", "value": {"a": 1}}
