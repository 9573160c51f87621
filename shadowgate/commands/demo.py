"""``shadowgate demo``: the main job, end to end on the running servers."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import click

from governance.settings import load_settings
from governance.topics import ensure_topics, topic_specs
from governance.wire import decode_scores

__all__ = ["demo"]


@click.command()
@click.option("--pairs", default=20_000, show_default=True, type=click.IntRange(1))
def demo(pairs: int) -> None:
    """Publish synthetic shadow traffic through the SDK and read it back from Kafka."""
    from confluent_kafka import Consumer

    from shadowgate.sdk import ScorePublisher
    from shadowgate.traffic import TrafficSpec, generate

    settings = load_settings()
    run = uuid.uuid4().hex[:8]
    topic = f"{settings.topics.scores}.demo-{run}"
    ensure_topics(settings.kafka_bootstrap, {topic: (4, {"retention.ms": "3600000"})})
    ensure_topics(settings.kafka_bootstrap, topic_specs(settings))
    click.echo(f"1. publishing {pairs:,} production/shadow pairs to {topic} with the SDK (envelopes of 500)")
    spec = TrafficSpec(pairs=pairs, start=datetime.now(UTC), rate_per_s=1000.0, label_share=0.0)
    t0 = time.perf_counter()
    with ScorePublisher(settings.kafka_bootstrap, topic, batch_size=500) as pub:
        for event in generate(spec):
            event.pop("kind")
            pub.publish(event)
    click.echo(f"   {pub.stats.delivered:,} events in {pub.stats.messages:,} messages, "
               f"{time.perf_counter() - t0:.1f} s, failed {pub.stats.failed}")
    click.echo("2. consuming them back with a plain confluent-kafka consumer")
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"demo-{run}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    roles: Counter[str] = Counter()
    partitions: dict[str, set[int]] = {}
    deadline = time.monotonic() + 60
    while sum(roles.values()) < 2 * pairs and time.monotonic() < deadline:
        for msg in consumer.consume(num_messages=1000, timeout=1.0):
            for ev in decode_scores(msg.value()):
                roles[ev.role] += 1
                partitions.setdefault(ev.request_id, set()).add(msg.partition())
    consumer.close()
    together = sum(1 for p in partitions.values() if len(p) == 1)
    click.echo(f"   read {sum(roles.values()):,} events: {dict(roles)}; "
               f"{together:,}/{len(partitions):,} requests have both sides on one partition")
