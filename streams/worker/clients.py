"""The clients a worker talks through, given to ``create_app`` (fakes in tests), and their configuration.

:class:`WorkerClients` holds a Redis client and the factories of the two Kafka clients the worker makes: the
consumer of the scores and labels topics (:mod:`streams.worker.ingest`) and the dead-letter producer
(:mod:`streams.worker.deadletters`). :func:`consumer_config` and :func:`dead_letter_config` turn settings
into their librdkafka configuration (pure, tested on their own):

* ``partition.assignment.strategy=range``: partition ``p`` of the scores and of the labels topic (same
  partition count) go to the same worker, whose one state pairs and joins them; eager rebalancing.
* ``enable.auto.commit=false``: offsets are committed by the ingest loop, only once a batch is done.
* ``session.timeout.ms`` / ``heartbeat.interval.ms`` from ``SHADOWGATE_SESSION_TIMEOUT_S`` /
  ``SHADOWGATE_HEARTBEAT_INTERVAL_S`` (10 s / 2 s: a dead worker's partitions move in seconds, not a minute).
* ``group.instance.id`` from ``SHADOWGATE_INSTANCE_ID`` (``--instance-id``): static membership. A worker
  restarted within the session timeout gets its partitions back without a rebalance of the group; without
  one every start and stop rebalances (every worker pauses for it). Two processes must never share one: the
  broker fences the older, whose consumer fails for good, and it stops.
* The dead-letter producer is idempotent, ``acks=all``, and gives up on a message after
  ``SHADOWGATE_DLQ_TIMEOUT_S`` (the batch is then tried again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import confluent_kafka
import redis
from confluent_kafka.admin import AdminClient

from governance.contract.connections import kafka_config, kafka_connection, redis_client, redis_connection
from governance.contract.settings import Settings
from governance.errors import ConfigError
from streams.worker.deadletters import ProducerLike
from streams.worker.ingest import ConsumerLike

__all__ = ["AdminLike", "WorkerClients", "consumer_config", "dead_letter_config", "kafka_answers"]


# librdkafka's own lines (a broker away: one per reconnection) go to this logger, not straight to stderr.
_KAFKA_LOG = logging.getLogger("shadowgate.kafka")


def consumer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration of the worker's consumer (see module doc)."""
    session_ms = round(settings.session_timeout_s * 1000)
    heartbeat_ms = round(settings.heartbeat_interval_s * 1000)
    if heartbeat_ms * 3 > session_ms:
        raise ConfigError(
            f"SHADOWGATE_HEARTBEAT_INTERVAL_S={settings.heartbeat_interval_s:g} must be at most a third of "
            f"SHADOWGATE_SESSION_TIMEOUT_S={settings.session_timeout_s:g}"
        )
    config: dict[str, Any] = {
        **kafka_config(kafka_connection(settings)),
        "group.id": settings.consumer_group,
        "partition.assignment.strategy": "range",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": heartbeat_ms,
        "enable.partition.eof": False,
        "logger": _KAFKA_LOG,
    }
    if settings.instance_id:
        config["group.instance.id"] = settings.instance_id
    return config


def dead_letter_config(settings: Settings) -> dict[str, Any]:
    """librdkafka configuration of the dead-letter producer."""
    return {
        **kafka_config(kafka_connection(settings)),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "linger.ms": 5,
        "message.timeout.ms": round(settings.dlq_timeout_s * 1000),
        "logger": _KAFKA_LOG,
    }


class AdminLike(Protocol):
    """The part of ``confluent_kafka.admin.AdminClient`` the readiness probe uses."""

    def list_topics(self, topic: str | None = ..., timeout: float = ...) -> Any: ...


def kafka_answers(admin: AdminLike, topic: str, timeout_s: float = 2.0) -> bool:
    """Whether a broker answers a metadata request for ``topic`` within ``timeout_s``."""
    return bool(admin.list_topics(topic, timeout=timeout_s).brokers)


def _admin(config: dict[str, Any]) -> AdminLike:
    return cast(AdminLike, AdminClient({**config, "log_level": 0}))


def _consumer(config: dict[str, Any]) -> ConsumerLike:
    return cast(ConsumerLike, confluent_kafka.Consumer(config))


def _producer(config: dict[str, Any]) -> ProducerLike:
    return cast(ProducerLike, confluent_kafka.Producer(config))


def _redis_client(settings: Settings) -> redis.Redis[bytes]:
    # Timeouts (SHADOWGATE_REDIS__*): a Redis that hangs fails the batch (tried again), never hangs the worker.
    return redis_client(redis_connection(settings))


@dataclass
class WorkerClients:
    """The worker's Redis client and Kafka client factories (each factory takes a librdkafka config)."""

    redis: redis.Redis[bytes]
    consumer: Callable[[dict[str, Any]], ConsumerLike] = field(default=lambda config: _consumer(config))
    producer: Callable[[dict[str, Any]], ProducerLike] = field(default=lambda config: _producer(config))
    #: Probes whether the brokers answer (a client of its own: a consumer blocks other threads' calls).
    admin: Callable[[dict[str, Any]], AdminLike] = field(default=lambda config: _admin(config))

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerClients:
        """The real clients (nothing connects before they are used)."""
        return cls(_redis_client(settings))
