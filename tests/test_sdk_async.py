"""The asyncio publishers and the partition-count refresh of every publisher, against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient, NewPartitions

from governance.contract.wire import decode_label, decode_scores, encode, validate_label
from governance.errors import DeliveryError, EventValidationError, InfrastructureError
from shadowgate.partitioner import partition_for
from shadowgate.sdk import LabelPublisher, ScorePublisher
from shadowgate.sdk_async import AsyncLabelPublisher, AsyncScorePublisher

pytestmark = pytest.mark.integration

TS = datetime(2026, 11, 1, tzinfo=UTC)


def _scores(rids: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, rid in enumerate(rids):
        base = {"request_id": rid, "model": "fraud", "ts": TS + timedelta(milliseconds=i), "latency_ms": 5.0}
        out.append({**base, "version": "1.0.0", "role": "production", "score": 0.25})
        out.append({**base, "version": "1.1.0", "role": "shadow", "score": 0.5})
    return out


def _label(rid: str) -> dict[str, Any]:
    return {"request_id": rid, "model": "fraud", "label": 1, "ts": TS}


def _read(bootstrap: str, topic: str, group: str, done: Callable[[list[Message]], bool]) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while not done(got) and time.monotonic() < deadline:
            got += [m for m in consumer.consume(num_messages=1000, timeout=1.0) if m.error() is None]
    finally:
        consumer.close()
    return got


def _score_partitions(msgs: list[Message]) -> dict[str, set[int]]:
    where: dict[str, set[int]] = {}
    for m in msgs:
        for ev in decode_scores(m.value()):
            where.setdefault(ev.request_id, set()).add(m.partition())
    return where


def _label_partitions(msgs: list[Message]) -> dict[str, int]:
    return {decode_label(m.value()).request_id: m.partition() for m in msgs}


async def test_async_scores_and_labels_meet_on_the_partition_of_their_request(  # type: ignore[no-untyped-def]
    kafka_bootstrap: str, make_topic, unique: str
) -> None:
    scores, labels = make_topic("scores", partitions=5), make_topic("labels", partitions=5)
    rids = [f"r-{i}" for i in range(400)]
    async with AsyncScorePublisher(kafka_bootstrap, scores, batch_size=50) as pub:
        await pub.publish_many(_scores(rids))  # returns once every event is delivered
        assert pub.stats.delivered == 800 and pub.stats.failed == 0 and pub.stats.partitions == 5
        with pytest.raises(EventValidationError, match="score"):
            pub.publish_nowait({**_scores(["bad"])[0], "score": 2.0})
        assert pub.stats.queued == 800  # the refused event queued nothing
    async with AsyncLabelPublisher(kafka_bootstrap, labels) as lab:
        pending = [lab.publish_nowait(_label(rid)) for rid in rids]
        await asyncio.gather(*pending)
        assert all(f.done() and f.exception() is None for f in pending) and lab.stats.delivered == 400

    by_score = _score_partitions(
        _read(kafka_bootstrap, scores, unique, lambda m: sum(len(decode_scores(x.value())) for x in m) >= 800)
    )
    by_label = _label_partitions(_read(kafka_bootstrap, labels, unique, lambda m: len(m) >= 400))
    assert set(by_score) == set(by_label) == set(rids)
    for rid in rids:
        assert by_score[rid] == {by_label[rid]} == {partition_for(rid.encode(), 5)}


async def test_an_undeliverable_event_fails_its_future_and_reaches_the_callback(unique: str) -> None:
    errors: list[DeliveryError] = []
    pub = AsyncScorePublisher("127.0.0.1:1", f"nowhere-{unique}", batch_size=0, on_delivery_error=errors.append,
                              producer_config={"message.timeout.ms": 1500})  # fmt: skip
    await pub.start()
    try:
        with pytest.raises(DeliveryError, match=f"nowhere-{unique}.*r-1"):
            await asyncio.wait_for(pub.publish(_scores(["r-1"])[0]), timeout=20)
        for _ in range(200):  # the callback is scheduled on the loop beside the future, not before it
            if errors:
                break
            await asyncio.sleep(0.01)
        assert pub.stats.failed == 1 and len(errors) == 1
    finally:
        await pub.close()


async def test_an_async_publisher_must_be_started_and_says_so(kafka_bootstrap: str) -> None:
    pub = AsyncLabelPublisher(kafka_bootstrap, "labels")
    with pytest.raises(InfrastructureError, match="not started"):
        pub.publish_nowait(_label("r-1"))


def test_publishers_pick_up_added_partitions(kafka_bootstrap: str, make_topic, unique: str) -> None:  # type: ignore[no-untyped-def]
    scores, labels = make_topic("scores", partitions=2), make_topic("labels", partitions=2)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    spub = ScorePublisher(kafka_bootstrap, scores, batch_size=20, linger_s=0.05, metadata_refresh_s=0.5)
    lpub = LabelPublisher(kafka_bootstrap, labels, metadata_refresh_s=0.5)
    try:
        assert spub.stats.partitions == 2
        for fut in admin.create_partitions([NewPartitions(scores, 6), NewPartitions(labels, 6)]).values():
            fut.result(timeout=30)
        deadline = time.monotonic() + 30
        while spub.stats.partitions != 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spub.stats.partitions == 6, "the score publisher did not read the new partition count"
        # librdkafka places keyed labels by its own metadata, refreshed every metadata_refresh_s: wait until a
        # label whose request hashes to a new partition lands there.
        probe = next(f"probe-{i}" for i in range(1000) if partition_for(f"probe-{i}".encode(), 6) >= 2)
        placed: list[int] = []
        deadline = time.monotonic() + 30
        while partition_for(probe.encode(), 6) not in placed and time.monotonic() < deadline:
            lpub._producer.produce(labels, key=probe.encode(), value=encode(validate_label(_label(probe))),
                                   on_delivery=lambda err, msg: placed.append(msg.partition()))  # fmt: skip
            lpub._producer.flush(10)
            time.sleep(0.2)
        assert partition_for(probe.encode(), 6) in placed, "the label publisher did not read the new count"

        rids = [f"after-{i}" for i in range(300)]
        spub.publish_many(_scores(rids))
        for rid in rids:
            lpub.publish(_label(rid))
        assert spub.flush(30) == 0 and lpub.flush(30) == 0
    finally:
        spub.close()
        lpub.close()
    by_score = _score_partitions(
        _read(kafka_bootstrap, scores, unique, lambda m: sum(len(decode_scores(x.value())) for x in m) >= 600)
    )
    by_label = {
        k: v
        for k, v in _label_partitions(
            _read(kafka_bootstrap, labels, unique, lambda m: len(m) >= 300 + len(placed))
        ).items()
        if k.startswith("after-")
    }
    assert set(by_score) == set(by_label) == set(rids)
    for rid in rids:
        assert by_score[rid] == {by_label[rid]} == {partition_for(rid.encode(), 6)}
    assert {by_label[rid] for rid in rids} == set(range(6))  # the new partitions are used


def test_a_failed_refresh_keeps_the_last_count(kafka_bootstrap: str, unique: str) -> None:
    from confluent_kafka.admin import NewTopic

    topic = f"test.refresh.{unique}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    pub = ScorePublisher(kafka_bootstrap, topic, batch_size=10, metadata_timeout_s=2.0, metadata_refresh_s=3600)
    try:
        assert pub.refresh_partitions() == 3
        admin.delete_topics([topic])[topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while pub.stats.metadata_errors == 0 and time.monotonic() < deadline:
            assert pub.refresh_partitions() == 3
            time.sleep(0.2)
        assert pub.stats.metadata_errors >= 1 and pub.stats.partitions == 3
    finally:
        pub._closed = True  # the topic is gone: nothing to flush
        pub.close()
        for fut in admin.delete_topics([topic]).values():  # a metadata read may have created it again
            with contextlib.suppress(Exception):
                fut.result(timeout=30)
