"""The Faust worker: ``create_app(settings)`` builds it; ``shadowgate worker`` runs it.

One agent reads the scores and labels topics as raw bytes (the agent validates; Faust never
deserialises), takes batches of events, and hands them to :class:`streams.worker.processor.Processor` in a
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
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
import redis
from faust.types import TP, EventT

from governance.contract.events import GovernanceEvent
from governance.contract.kafkaio import Record
from governance.contract.settings import Settings
from governance.crypto import Signer
from governance.policy.document import Policy, load_policy
from governance.policy.evaluator import ContextSource
from streams.state.redis_store import RedisWindowStore
from streams.state.store import WindowStore
from streams.worker.lifecycle_view import lifecycle_context, production_monitor
from streams.worker.processor import BatchOutcome, DeadLetter, Processor
from streams.worker.rounds import EvaluationLoop, Evaluator, RedisEvaluatorStates, default_context
from streams.worker.telemetry import WorkerMetrics

__all__ = ["WorkerHandle", "create_app"]

log = logging.getLogger(__name__)

BATCH_MAX_EVENTS = 2000
BATCH_WITHIN_S = 0.25


class WorkerHandle:
    """What ``create_app`` wires together, for tests and the CLI: the app, its processor and store."""

    def __init__(
        self, app: faust.App, processor: Processor, store: WindowStore, metrics: WorkerMetrics, evaluator: Evaluator
    ) -> None:
        self.app = app
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.evaluator = evaluator
        self.outcomes: list[Callable[[BatchOutcome], None]] = []
        self.emitted: list[Callable[[GovernanceEvent], None]] = []
        # Publishes invalid messages to the dead-letter topic; replaceable where no broker runs (agent tests).
        self.send_dead_letters: Callable[[list[DeadLetter]], Awaitable[None]] = _no_dead_letters
        self.closers: list[Callable[[], object]] = []

    def close(self) -> None:
        """Release the Redis connections and the fold thread (the Faust app stops on its own)."""
        for close in self.closers:
            close()


def create_app(
    settings: Settings,
    *,
    store: WindowStore | None = None,
    metrics: WorkerMetrics | None = None,
    app_id: str | None = None,
    signer: Signer | None = None,
    policy: Policy | None = None,
    context: ContextSource | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> WorkerHandle:
    """Build the Faust app for ``settings`` (no I/O happens until the app starts).

    ``signer`` signs every governance event (ML-DSA-65); without one events go out unsigned and the
    governance consumer will refuse them, which is only useful in tests of the windows.
    """
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
        # Faust keeps nothing we need on disk (state is in Redis); keep its data dir out of the cwd.
        datadir=str(Path(tempfile.gettempdir()) / f"shadowgate-faust-{app_id or settings.consumer_group}"),
        producer_compression_type="lz4",
        loop=loop,
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
    policy = policy or load_policy(settings.policy_path)
    client = redis.Redis.from_url(settings.redis_url_value())
    monitor = None
    if context is None:
        # Registered versions are judged by their lifecycle facts; others fail closed (strictest rules);
        # the serving production version is monitored whatever its candidates' stages.
        context = lifecycle_context(client, settings.redis_prefix, default_context(policy))
        monitor = production_monitor(client, settings.redis_prefix)
    evaluator = Evaluator(store, policy, RedisEvaluatorStates(client, settings.redis_prefix), context, monitor=monitor)
    handle = WorkerHandle(app, processor, store, metrics, evaluator)
    handle.closers += [client.close, store.close]
    loop_ = EvaluationLoop(
        evaluator,
        signer,
        {"gates": topics.gates, "rollbacks": topics.rollbacks, "alerts": topics.alerts},
        lease_s=max(3 * settings.evaluate_interval_s, 2.0),
        owner=uuid.uuid4().hex,
        idle_s=settings.reevaluate_idle_s,
        idle_horizon_s=settings.label_horizon_s,
    )
    out_topics = {
        name: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        for name in (topics.gates, topics.rollbacks, topics.alerts)
    }
    source = app.topic(topics.scores, topics.labels, key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")
    dlq = app.topic(topics.dlq, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowgate-fold")
    # Evaluation has its own thread: a rollback trigger must not wait behind a long ingestion batch.
    evaluation_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowgate-evaluate")

    async def send_dead_letters(dead_letters: list[DeadLetter]) -> None:
        for dead in dead_letters:
            await dlq.send(key=dead.record.key, value=dead.record.value or b"", headers=dead.headers())

    handle.send_dead_letters = send_dead_letters
    handle.closers += [lambda: executor.shutdown(wait=True), lambda: evaluation_executor.shutdown(wait=True)]

    @app.agent(source, name="ingest", concurrency=1)  # the handle's ``ingest`` for tests: app.agents
    async def ingest(stream: Any) -> None:
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            records = [_record(e) for e in events]
            outcome = await loop.run_in_executor(executor, processor.process, records)
            await handle.send_dead_letters(outcome.dead_letters)
            metrics.observe(outcome)
            for callback in handle.outcomes:
                callback(outcome)

    async def evaluate() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            produced = await loop.run_in_executor(evaluation_executor, loop_.round)
        except Exception:  # an evaluation error must not stop ingestion; it is logged and retried next tick
            metrics.evaluation_errors.inc()
            log.exception("evaluation round failed")
            return
        metrics.evaluation_seconds.observe(loop.time() - started)
        for topic, key, value, event in produced:
            await out_topics[topic].send(key=key, value=value)
            metrics.governance_events.labels(type=type(event).__name__).inc()
            for callback in handle.emitted:
                callback(event)

    app.timer(settings.evaluate_interval_s, name="evaluate")(evaluate)

    async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked: set[TP] = args[0] if args else kwargs.get("revoked", set())
        processor.revoke({tp.partition for tp in revoked if tp.topic in (topics.scores, topics.labels)})

    app.on_partitions_revoked.connect(_revoked)

    return handle


async def _no_dead_letters(dead_letters: list[DeadLetter]) -> None:
    if dead_letters:
        raise RuntimeError("no dead-letter sink configured")


def _record(event: EventT[Any]) -> Record:
    msg = event.message
    return Record(msg.topic, msg.partition, msg.offset, msg.key, msg.value or b"")
