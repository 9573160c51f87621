"""The Faust worker: ``create_app(settings)`` builds it; ``shadowgate worker`` runs it.

One agent reads the scores and labels topics as raw bytes (the agent validates; Faust never
deserialises), takes batches of events, and hands them to :class:`streams.processor.Processor` in a
worker thread so CPU-bound folding and the blocking Redis call never stall the event loop. Invalid
messages go to the dead-letter topic with the reason in headers. Offsets are acknowledged only after a
batch has been applied, and the store's per-partition fence makes redelivery harmless.

Any number of workers share the partitions in one consumer group (``SHADOWGATE_CONSUMER_GROUP``); the
scores and labels topics must have the same partition count so partition ``p`` of both lands on the
same worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
from faust.types import TP, EventT

from governance.settings import Settings
from streams.processor import BatchOutcome, Processor, Record
from streams.redis_store import RedisWindowStore
from streams.store import WindowStore
from streams.telemetry import WorkerMetrics

__all__ = ["WorkerHandle", "create_app"]

log = logging.getLogger(__name__)

BATCH_MAX_EVENTS = 2000
BATCH_WITHIN_S = 0.25


class WorkerHandle:
    """What ``create_app`` wires together, for tests and the CLI: the app, its processor and store."""

    def __init__(self, app: faust.App, processor: Processor, store: WindowStore, metrics: WorkerMetrics) -> None:
        self.app = app
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.outcomes: list[Callable[[BatchOutcome], None]] = []


def create_app(
    settings: Settings,
    *,
    store: WindowStore | None = None,
    metrics: WorkerMetrics | None = None,
    app_id: str | None = None,
) -> WorkerHandle:
    """Build the Faust app for ``settings`` (no I/O happens until the app starts)."""
    app = faust.App(
        app_id or settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap.split(',')[0]}",
        broker_commit_every=BATCH_MAX_EVENTS,
        broker_commit_interval=1.0,
        stream_buffer_maxsize=4 * BATCH_MAX_EVENTS,
        consumer_auto_offset_reset="earliest",
        topic_partitions=4,
        topic_allow_declare=True,
        web_enabled=False,
        store="memory://",
        producer_compression_type="lz4",
    )
    store = store if store is not None else RedisWindowStore.from_url(
        settings.redis_url_value(), prefix=settings.redis_prefix
    )
    metrics = metrics if metrics is not None else WorkerMetrics()
    topics = settings.topics
    processor = Processor(
        store,
        scores_topic=topics.scores,
        labels_topic=topics.labels,
        fence_name=f"{settings.consumer_group}/{topics.scores}+{topics.labels}",
        join_window_s=settings.join_window_s,
        max_pending=settings.max_pending_pairs,
        label_horizon_s=settings.label_horizon_s,
        max_message_bytes=settings.max_message_bytes,
    )
    handle = WorkerHandle(app, processor, store, metrics)
    source = app.topic(topics.scores, topics.labels, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    dlq = app.topic(topics.dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowgate-fold")

    @app.agent(source, name="ingest", concurrency=1)
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            records = [_record(e) for e in events]
            outcome = await loop.run_in_executor(executor, processor.process, records)
            for dead in outcome.dead_letters:
                await dlq.send(key=dead.record.key, value=dead.record.value or b"", headers=dead.headers())
            metrics.observe(outcome)
            for callback in handle.outcomes:
                callback(outcome)

    @app.on_partitions_revoked.connect
    async def _revoked(app: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        processor.revoke({tp.partition for tp in revoked if tp.topic in (topics.scores, topics.labels)})

    return handle


def _record(event: EventT) -> Record:
    msg = event.message
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value)
