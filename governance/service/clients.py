"""What the governance consumer is configured with, and the clients it talks through.

:class:`ConsumerConfig` says where it reads and writes; :class:`ConsumerClients` holds every client (Redis,
the fenced transactional producer, the input consumer, the audit log reader) so a test can hand the
consumer fakes or clients it controls; :meth:`ConsumerClients.connect` builds the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import redis
from confluent_kafka import Consumer, KafkaException

from governance.contract.connections import KafkaTarget, RedisTarget, kafka_connection, redis_client, redis_connection
from governance.contract.kafkaio import make_consumer
from governance.contract.settings import Settings
from governance.errors import InfrastructureError
from governance.service.auditlog import AuditLogReader
from governance.service.transactions import TransactionalProducer, transactional_id

__all__ = ["DEFAULT_COMMANDS_TOPIC", "ConsumerClients", "ConsumerConfig", "cluster_id"]

DEFAULT_COMMANDS_TOPIC = "governance.commands"


@dataclass(frozen=True)
class ConsumerConfig:
    """Where the consumer reads and writes; ``canary_share`` must lie in the policy's canary range.

    ``summary_interval_s``: rejected inputs become one summary entry per partition per this interval;
    ``command_skew_s``: how far ahead of the consumer's clock a command's ``issued_at`` may lie. How keys are
    followed is the business of the :class:`~governance.crypto.live.LiveKeyring` / ``LiveTrust`` it is given.
    """

    bootstrap: KafkaTarget
    redis_url: RedisTarget
    prefix: str
    gates_topic: str
    rollbacks_topic: str
    approvals_topic: str
    commands_topic: str
    lifecycle_topic: str
    routing_topic: str
    alerts_topic: str
    canary_share: float
    lease_ttl_s: float = 15.0
    proofpack_dir: Path | None = None
    checkpoints_topic: str = "governance.checkpoints"
    summary_interval_s: float = 5.0
    command_skew_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings, canary_share: float, commands_topic: str = DEFAULT_COMMANDS_TOPIC,
                      **overrides: object) -> ConsumerConfig:
        t = settings.topics
        values: dict[str, object] = dict(
            bootstrap=kafka_connection(settings), redis_url=redis_connection(settings), prefix=settings.redis_prefix,
            gates_topic=t.gates, rollbacks_topic=t.rollbacks, approvals_topic=t.approvals,
            commands_topic=commands_topic, lifecycle_topic=t.lifecycle, routing_topic=t.routing,
            alerts_topic=t.alerts, canary_share=canary_share, checkpoints_topic=t.checkpoints,
            summary_interval_s=settings.rejection_summary_s, command_skew_s=settings.command_skew_s,
        )
        return cls(**{**values, **overrides})  # type: ignore[arg-type]

    def inputs(self) -> dict[str, Literal["command", "event"]]:
        return {self.gates_topic: "event", self.rollbacks_topic: "event",
                self.approvals_topic: "command", self.commands_topic: "command"}


def cluster_id(consumer: Consumer, timeout_s: float = 10.0) -> str:
    """The Kafka cluster's id (what scopes the lease to one audit log on one cluster)."""
    try:
        found = consumer.list_topics(timeout=timeout_s).cluster_id
    except KafkaException as exc:
        raise InfrastructureError(f"cannot read the Kafka cluster id: {exc}") from None
    if not found:
        raise InfrastructureError("the Kafka broker did not say its cluster id")
    return str(found)


@dataclass
class ConsumerClients:
    """The consumer's clients; it closes them in :meth:`close`."""

    redis: redis.Redis[bytes]
    producer: TransactionalProducer
    consumer: Consumer
    log: AuditLogReader
    cluster_id: str
    closed: bool = field(default=False, init=False)

    @classmethod
    def connect(cls, config: ConsumerConfig, timeout_s: float = 10.0) -> ConsumerClients:
        """The real clients for ``config`` (nothing is fenced yet: the consumer calls ``producer.init()``);
        InfrastructureError, with nothing left open, when Kafka does not say its cluster id within ``timeout_s``."""
        client: redis.Redis[bytes] = redis_client(config.redis_url)
        consumer = make_consumer(config.bootstrap, "governance")
        try:
            found = cluster_id(consumer, timeout_s)
            producer = TransactionalProducer(config.bootstrap, transactional_id(config.lifecycle_topic))
        except BaseException:
            consumer.close()
            client.close()
            raise
        log = AuditLogReader(config.bootstrap, config.lifecycle_topic, config.checkpoints_topic)
        return cls(client, producer, consumer, log, found)

    def close(self) -> None:
        """Close every client (once: a second call does nothing)."""
        if self.closed:
            return
        self.closed = True
        self.producer.close()
        self.consumer.close()
        self.redis.close()
