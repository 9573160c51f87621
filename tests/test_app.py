"""``create_app`` wired to fakes (issue 13: its clients are injected): raw bytes in, windows, dead letters
and commits out, no server. The same wiring against the real servers and their faults is in
tests/test_worker_e2e.py and tests/test_worker_faults.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from governance.contract.settings import Settings
from governance.errors import ConfigError
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.worker.app import create_app
from streams.worker.clients import WorkerClients, consumer_config, dead_letter_config
from streams.worker.processor import BatchOutcome
from streams.worker.reading import read_windows
from streams.worker.telemetry import WorkerMetrics
from tests.kafka_fakes import FakeAdmin, FakeConsumer, FakeProducer, FakeRedis
from tests.worker_kit import wait_for


def _settings(**over: Any) -> Settings:
    return Settings(consumer_group="g", redis_prefix="t", **over)


def _wired(settings: Settings, consumer: FakeConsumer, producer: FakeProducer) -> Any:
    clients = WorkerClients(FakeRedis(), consumer=lambda config: consumer, producer=lambda config: producer,  # type: ignore[arg-type]
                            admin=lambda config: FakeAdmin())  # fmt: skip
    return create_app(settings, store=MemoryWindowStore(), app_id="test-app", clients=clients,
                      context=lambda key, first: None, metrics=WorkerMetrics())  # fmt: skip


def test_the_worker_folds_raw_messages_dead_letters_invalid_ones_and_commits_after() -> None:
    settings = _settings()
    consumer, producer = FakeConsumer(), FakeProducer()
    handle = _wired(settings, consumer, producer)
    outcomes: list[BatchOutcome] = []
    handle.outcomes.append(outcomes.append)
    spec = TrafficSpec(pairs=200, start=datetime.now(UTC) - timedelta(minutes=5), rate_per_s=10, label_share=0.0)
    messages = [orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in generate(spec)]
    messages.insert(7, b'{"model":"fraud-risk","score":"high"}')
    messages.insert(20, b"\xff not json")
    for raw in messages:
        consumer.put(settings.topics.scores, 0, raw)
    stop = threading.Event()
    thread = threading.Thread(target=handle.ingest.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: sum(o.records for o in outcomes) >= len(messages), 30, "every message processed")
    finally:
        stop.set()
        thread.join(30)
        handle.close()
    assert consumer.closed
    assert sum(o.pairs for o in outcomes) == 200
    assert consumer.committed == {(settings.topics.scores, 0): len(messages)}
    assert sorted(value for _, _, value, _ in producer.sent) == sorted([messages[7], messages[20]])
    assert all(topic == settings.topics.dlq for topic, *_ in producer.sent)
    assert {h["shadowgate.source"] for *_, h in producer.sent} == {
        f"{settings.topics.scores}/0/7".encode(), f"{settings.topics.scores}/0/20".encode()}
    window = read_windows(handle.store, windows=["24h"])["comparisons"][0]["windows"]["24h"]
    assert window["sample_count"] == 200
    assert window["integrity_violations"] == 1  # the undecodable message names no model
    assert handle.health.ready()[0] is False  # no signing keys given: never ready to publish
    assert handle.health.ready()[1]["failing"] == ["keys", "running"]


def test_the_consumer_and_dead_letter_producer_are_configured_from_the_settings() -> None:
    config = consumer_config(_settings(instance_id="worker-3", session_timeout_s=12, heartbeat_interval_s=3))
    assert config["group.id"] == "g" and config["group.instance.id"] == "worker-3"
    assert config["partition.assignment.strategy"] == "range"  # partition p of scores and labels together
    assert config["enable.auto.commit"] is False
    assert (config["session.timeout.ms"], config["heartbeat.interval.ms"]) == (12_000, 3_000)
    assert "group.instance.id" not in consumer_config(_settings())
    producer = dead_letter_config(_settings(dlq_timeout_s=4))
    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    assert producer["message.timeout.ms"] == 4000
    with pytest.raises(ConfigError, match="at most a third"):
        consumer_config(_settings(session_timeout_s=6, heartbeat_interval_s=3))


def test_a_lead_bound_reaching_the_join_window_fails_at_start() -> None:
    with pytest.raises(ConfigError, match="SHADOWGATE_MAX_EVENT_LEAD_S=60 must be under"):
        _wired(_settings(max_event_lead_s=60), FakeConsumer(), FakeProducer())
