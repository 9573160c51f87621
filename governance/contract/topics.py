"""Creating shadowgate's Kafka topics with the right settings (idempotent)."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from governance.contract.connections import KafkaTarget, kafka_config
from governance.contract.refusals import check_kafka, denied
from governance.contract.settings import Settings
from governance.errors import InfrastructureError

__all__ = ["ensure_topics", "topic_specs"]

_DAY_MS = 86_400_000


def topic_specs(settings: Settings, partitions: int = 4) -> dict[str, tuple[int, dict[str, str]]]:
    """Topic name -> (partitions, config) for every topic shadowgate uses."""
    t = settings.topics
    week = str(7 * _DAY_MS)
    return {
        t.scores: (partitions, {"retention.ms": week, "compression.type": "producer"}),
        t.labels: (partitions, {"retention.ms": str(14 * _DAY_MS)}),
        t.dlq: (1, {"retention.ms": str(30 * _DAY_MS)}),
        t.gates: (1, {"retention.ms": str(90 * _DAY_MS)}),
        t.rollbacks: (1, {"retention.ms": str(90 * _DAY_MS)}),
        t.alerts: (1, {"retention.ms": str(30 * _DAY_MS)}),
        t.approvals: (1, {"retention.ms": "-1"}),
        t.commands: (1, {"retention.ms": "-1"}),
        # The audit log is the source of truth: kept forever.
        t.lifecycle: (1, {"retention.ms": "-1", "retention.bytes": "-1"}),
        # Current serving assignment per model: compacted, latest value wins.
        t.routing: (1, {"cleanup.policy": "compact"}),
        # Signed checkpoints of the audit log's head, keyed by the audit topic: compacted, small segments so
        # the newest stays cheap to find.
        t.checkpoints: (1, {"cleanup.policy": "compact", "segment.ms": str(3_600_000)}),
    }


def ensure_topics(
    bootstrap: KafkaTarget, specs: Mapping[str, tuple[int, dict[str, str]]], timeout_s: float = 30.0
) -> list[str]:
    """Create the topics that do not exist yet; return the names created. Existing ones are kept as is."""
    # librdkafka would print a line per failed connection attempt; the error below says it once.
    check_kafka(bootstrap, timeout_s=timeout_s)  # a refused login, no TLS, a wrong CA: one line saying so
    admin = AdminClient({**kafka_config(bootstrap), "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise InfrastructureError(f"Kafka at {bootstrap} does not answer: {exc}") from None
    wanted = [
        NewTopic(name, num_partitions=parts, replication_factor=-1, config=dict(config))
        for name, (parts, config) in specs.items()
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                why = denied(bootstrap, exc.args[0], f"creating topic {name}")
                raise InfrastructureError(why or f"cannot create topic {name}: {exc}") from None
    return created
