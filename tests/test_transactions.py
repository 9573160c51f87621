"""The fenced transactional writer of the audit log, against the real broker: every failure it maps, made for real."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from governance.contract.kafkaio import make_consumer, read_range
from governance.errors import DeliveryError, FencedError, InfrastructureError
from governance.service.transactions import TransactionalProducer, transactional_id

pytestmark = pytest.mark.integration


def _committed(bootstrap: str, topic: str) -> list[bytes]:
    """What a read_committed reader sees (every reader of the audit log is one)."""
    consumer = make_consumer(bootstrap, "txn-test")
    try:
        return [record.value for record in read_range(consumer, topic, 0, 0, 30)]
    finally:
        consumer.close()


@pytest.fixture
def writer(kafka_bootstrap: str, make_topic: Callable[..., str]) -> tuple[str, str]:
    topic = make_topic("txn")
    return topic, transactional_id(topic) + uuid.uuid4().hex[:6]


def test_a_transaction_is_all_or_nothing_and_the_writer_goes_on_after_a_failure(kafka_bootstrap: str,
                                                                               writer: tuple[str, str]) -> None:
    topic, txn_id = writer
    producer = TransactionalProducer(kafka_bootstrap, txn_id)
    try:
        with pytest.raises(InfrastructureError, match="used before init"):
            producer.send(topic, b"too early")
        producer.init()
        assert producer.send(topic, b"one") == (0, 0)
        with pytest.raises(RuntimeError, match="the body failed"), producer.transaction() as txn:
            txn.produce(topic, b"aborted")
            raise RuntimeError("the body failed")
        with pytest.raises(DeliveryError, match="queueing a message .*too large"):
            producer.send(topic, b"x" * 5_000_000)  # over the producer's own message.max.bytes
        producer.timeout_s = 0.0  # no time for the broker's acknowledgement: a real timeout
        with pytest.raises(DeliveryError, match="no acknowledgement in 0 s"):
            producer.send(topic, b"unacknowledged")
        producer.timeout_s = 30.0
        producer.send(topic, b"two")
    finally:
        producer.close()
    assert _committed(kafka_bootstrap, topic) == [b"one", b"two"]


def test_a_message_the_broker_refuses_aborts_the_transaction(kafka_bootstrap: str, writer: tuple[str, str]) -> None:
    topic, txn_id = writer
    entry = ConfigEntry("max.message.bytes", "1000", incremental_operation=AlterConfigOpType.SET)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)
    producer = TransactionalProducer(kafka_bootstrap, txn_id)
    try:
        producer.init()
        with pytest.raises(DeliveryError, match="failed: .*(Message size too large|the broker refused)"), \
                producer.transaction() as txn:
            txn.produce(topic, b"small, but in the same transaction")
            txn.produce(topic, b"y" * 5000)
    finally:
        producer.close()
    assert _committed(kafka_bootstrap, topic) == []


def test_a_second_writer_fences_the_first_at_any_step(kafka_bootstrap: str, writer: tuple[str, str]) -> None:
    topic, txn_id = writer
    first, second = TransactionalProducer(kafka_bootstrap, txn_id), TransactionalProducer(kafka_bootstrap, txn_id)
    try:
        first.init()
        first.send(topic, b"first")
        flush = first._flush

        def flush_then_fenced(txn: object) -> None:  # another writer starts between the writes and the commit
            flush(txn)  # type: ignore[arg-type]
            second.init()

        first._flush = flush_then_fenced  # type: ignore[method-assign]
        with pytest.raises(FencedError, match=rf"committing a transaction .*: this writer was fenced: another "
                                              rf"process initialised transactional.id '{txn_id}'"):
            first.send(topic, b"never visible")
        with pytest.raises(FencedError, match="beginning a transaction"):
            first.send(topic, b"nor this")
        second.send(topic, b"second")
    finally:
        first.close()
        second.close()
    assert _committed(kafka_bootstrap, topic) == [b"first", b"second"]


def test_init_against_a_broker_that_does_not_answer_fails_in_one_line() -> None:
    producer = TransactionalProducer("127.0.0.1:1", "shadowgate-audit:nowhere", timeout_s=2.0)
    try:
        with pytest.raises(InfrastructureError, match="initialising the audit log's transactions"):
            producer.init()
    finally:
        producer.close()
