"""The test infrastructure itself: the servers answer and are the real ones."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.integration


def test_kafka_round_trip(kafka_bootstrap: str, make_topic, unique: str) -> None:  # type: ignore[no-untyped-def]
    topic = make_topic("infra")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, key=b"k", value=b"hello " + unique.encode())
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": kafka_bootstrap, "group.id": unique, "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        msg = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                break
        assert msg is not None and msg.error() is None
        assert msg.value() == b"hello " + unique.encode()
    finally:
        consumer.close()


def test_redis_round_trip(redis_url: str, redis_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hincrby(f"{redis_prefix}:h", "n", 3)
    client.hincrby(f"{redis_prefix}:h", "n", 4)
    assert client.hget(f"{redis_prefix}:h", "n") == b"7"
    info = client.info("persistence")
    client.close()
    assert info["aof_enabled"] == 1
