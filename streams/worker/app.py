"""The worker process: ``create_app(settings)`` builds it; ``shadowgate worker`` runs it.

Faust is the application shell: it runs the evaluation timer (``SHADOWGATE_EVALUATE_INTERVAL_S``), publishes
the signed governance events with its producer, handles signals and the event loop. It consumes nothing: the
scores and labels topics are read underneath it by our own confluent-kafka consumer in one thread
(:mod:`streams.worker.ingest`), in large batches, handed to :class:`~streams.worker.processor.Processor`, with
offsets committed only after a batch's fenced apply succeeded and its dead letters were acknowledged
(:mod:`streams.worker.deadletters`); a failing batch is tried again with backoff, never skipped, and a worker
stuck on one reports unready on ``/readyz`` (:mod:`streams.worker.health`). See ``docs/reliability.md``.

Any number of workers share the partitions in one consumer group (``SHADOWGATE_CONSUMER_GROUP``); the
scores and labels topics must have the same partition count so partition ``p`` of both lands on the
same worker. Everything the worker talks through is given to :func:`create_app` (``clients``: a Redis client
and the Kafka client factories; ``store``), so tests can give fakes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import faust
import mode
from faust.app.base import BootStrategy

from governance.contract.connections import faust_broker, kafka_config, kafka_connection, redis_client, redis_connection
from governance.contract.events import GovernanceEvent
from governance.contract.settings import Settings
from governance.crypto import Signer
from governance.crypto.live import LiveKeyring
from governance.errors import InfrastructureError
from governance.policy.catalog import load_catalog
from governance.policy.document import Policy, load_policy
from governance.policy.evaluator import ContextSource
from streams.decode.bounds import EventTimeBounds
from streams.fold.aggregate import AggregateConfig, catalog_config
from streams.state.redis_store import RedisWindowStore
from streams.state.store import WindowStore
from streams.worker.clients import WorkerClients, consumer_config, dead_letter_config, kafka_answers
from streams.worker.deadletters import DeadLetterSink
from streams.worker.evaluator_states import RedisEvaluatorStates
from streams.worker.health import Health
from streams.worker.ingest import Ingest, IngestConfig, Pipeline
from streams.worker.lifecycle_view import RoundFacts, lifecycle_context, production_monitor
from streams.worker.processor import BatchOutcome, Processor
from streams.worker.rounds import Emission, EvaluationLoop, Evaluator, default_context
from streams.worker.telemetry import WorkerMetrics

__all__ = ["WorkerHandle", "create_app"]

log = logging.getLogger(__name__)

BATCH_WITHIN_S = 0.25
# How long the producer tries to deliver a governance event before it counts as not delivered (Faust's default
# is 20 minutes); the evaluation round waits for the acknowledgements, then evaluates what failed again.
PRODUCER_REQUEST_TIMEOUT_S = 30.0


class WorkerHandle:
    """What ``create_app`` wires together, for tests and the CLI."""

    def __init__(self, app: faust.App, processor: Processor, store: WindowStore, metrics: WorkerMetrics,
                 evaluator: Evaluator, ingest: Ingest, dead_letters: DeadLetterSink, health: Health) -> None:
        self.app = app
        self.processor = processor
        self.store = store
        self.metrics = metrics
        self.evaluator = evaluator
        self.ingest = ingest
        self.dead_letters = dead_letters
        self.health = health
        self.outcomes: list[Callable[[BatchOutcome], None]] = []  # told of every batch done, in the ingest thread
        self.emitted: list[Callable[[GovernanceEvent], None]] = []
        self.closers: list[Callable[[], object]] = []

    def close(self) -> None:
        """Release the Redis connections and the evaluation thread (the Faust app stops on its own)."""
        for close in self.closers:
            close()


def create_app(
    settings: Settings,
    *,
    store: WindowStore | None = None,
    metrics: WorkerMetrics | None = None,
    app_id: str | None = None,
    signer: Signer | LiveKeyring | None = None,
    policy: Policy | None = None,
    context: ContextSource | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    clients: WorkerClients | None = None,
) -> WorkerHandle:
    """Build the worker for ``settings`` (no I/O happens until the app starts).

    ``signer`` signs every governance event (ML-DSA-65; a :class:`LiveKeyring` signs with the key active at
    each event, following rotations without a restart); without one events go out unsigned and the
    governance consumer will refuse them, which is only useful in tests of the windows. ``clients``: the
    Redis client and Kafka client factories (default: the real ones for ``settings``).
    """
    clients = clients or WorkerClients.from_settings(settings)
    store = store if store is not None else RedisWindowStore(
        redis_client(redis_connection(settings)), prefix=settings.redis_prefix
    )
    metrics = metrics if metrics is not None else WorkerMetrics()
    app = _shell(settings, app_id, loop)
    # The feature catalog's bins for drift, its names and dtypes for the integrity check (spec 5.2).
    config = catalog_config(load_catalog(settings.catalog_path))
    processor = _processor(settings, store, config)
    evaluator = _evaluator(settings, store, clients, policy or load_policy(settings.policy_path), context, config)
    sink = DeadLetterSink(clients.producer(dead_letter_config(settings)), settings.topics.dlq, settings.dlq_timeout_s,
                          on_reference=lambda _dead, _why: metrics.dead_letter_references.inc())  # fmt: skip
    consumer = consumer_config(settings)
    observers: list[Callable[[BatchOutcome], None]] = []
    pipeline = Pipeline(processor.fold, lambda folded: processor.apply(folded, sink.deliver), processor.settle,
                        processor.discard)  # fmt: skip
    ingest = Ingest(lambda: clients.consumer(consumer), _ingest_config(settings),
                    lambda records: processor.process(records, sink.deliver), processor.revoke, metrics,
                    observers=observers, pipeline=pipeline)  # fmt: skip
    admin = clients.admin(kafka_config(kafka_connection(settings)))
    health = Health(ingest.status, clients.redis.ping, lambda: kafka_answers(admin, settings.topics.scores),
                    keys_loaded=signer is not None)  # fmt: skip
    metrics.watch(lambda: ingest.status().batch_age_s, lambda: health.ready()[0])
    handle = WorkerHandle(app, processor, store, metrics, evaluator, ingest, sink, health)
    handle.outcomes = observers
    handle.closers += [clients.redis.close, store.close, processor.close]
    _evaluation_timer(handle, settings, signer)
    # Faust starts (and stops) an instance given here as it does a class (``App._prepare_subservice``).
    app.service(cast(Any, _IngestThread(ingest, app)))
    return handle


class _NoConsumer(BootStrategy):
    """Faust without its consumer (and tables): the worker's own consumer reads the topics."""

    enable_kafka_consumer = False


class _Shell(faust.App):
    BootStrategy = _NoConsumer


def _shell(settings: Settings, app_id: str | None, loop: asyncio.AbstractEventLoop | None) -> faust.App:
    """The Faust application shell: timer, producer of the governance events, signals; no consumer."""
    name = app_id or f"{settings.consumer_group}-shell"
    # Every bootstrap host (Faust splits the list into aiokafka's bootstrap_servers), and the same security.
    broker = faust_broker(kafka_connection(settings))
    return _Shell(
        name,
        broker=broker.urls,
        broker_credentials=broker.credentials,
        topic_partitions=4,
        topic_allow_declare=True,
        web_enabled=False,
        store="memory://",
        # Faust keeps nothing we need on disk (state is in Redis); keep its data dir out of the cwd.
        datadir=str(Path(tempfile.gettempdir()) / f"shadowgate-faust-{name}"),
        producer_compression_type="lz4",
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
        loop=loop,
    )


def _processor(settings: Settings, store: WindowStore, config: AggregateConfig) -> Processor:
    topics = settings.topics
    return Processor(
        store,
        config=config,
        scores_topic=topics.scores,
        labels_topic=topics.labels,
        fence_name=f"{settings.consumer_group}/{topics.scores}+{topics.labels}",
        join_window_s=settings.join_window_s,
        max_pending=settings.max_pending_pairs,
        label_horizon_s=settings.label_horizon_s,
        max_message_bytes=settings.max_message_bytes,
        bounds=EventTimeBounds(settings.max_event_lead_s, settings.max_event_lag_s),
        fold_threads=settings.fold_threads,
    )


def _ingest_config(settings: Settings) -> IngestConfig:
    return IngestConfig(
        topics=(settings.topics.scores, settings.topics.labels),
        batch_max_records=settings.batch_max_records,
        batch_within_s=BATCH_WITHIN_S,
        backoff_s=settings.retry_backoff_s,
        backoff_max_s=settings.retry_backoff_max_s,
        unready_after_s=settings.unready_after_s,
    )


def _evaluator(
    settings: Settings,
    store: WindowStore,
    clients: WorkerClients,
    policy: Policy,
    context: ContextSource | None,
    config: AggregateConfig,
) -> Evaluator:
    monitor = None
    facts = None
    if context is None:
        # Registered versions are judged by their lifecycle facts; others fail closed (strictest rules);
        # the serving production version is monitored whatever its candidates' stages. A round reads the facts
        # of all its comparisons in one MGET.
        facts = RoundFacts(clients.redis, settings.redis_prefix)
        context = lifecycle_context(clients.redis, settings.redis_prefix, default_context(policy), facts=facts)
        monitor = production_monitor(clients.redis, settings.redis_prefix, facts=facts)
    states = RedisEvaluatorStates(clients.redis, settings.redis_prefix)
    return Evaluator(store, policy, states, context, config, monitor=monitor, close_delay_s=close_delay_s(settings),
                     republish_s=settings.gate_republish_s, prefetch=facts)


def close_delay_s(settings: Settings) -> float:
    """How far past a minute's end the newest event must be before the triggers judge it (SHADOWGATE_MINUTE_CLOSE_S,
    default the join window)."""
    return settings.join_window_s if settings.minute_close_s is None else settings.minute_close_s


def _evaluation_timer(handle: WorkerHandle, settings: Settings, signer: Signer | LiveKeyring | None) -> None:
    """Every ``evaluate_interval_s``: one evaluation round in its own thread, its events published."""
    app, metrics, topics = handle.app, handle.metrics, settings.topics
    rounds = EvaluationLoop(
        handle.evaluator, signer, {"gates": topics.gates, "rollbacks": topics.rollbacks, "alerts": topics.alerts},
        lease_s=max(3 * settings.evaluate_interval_s, 2.0), owner=uuid.uuid4().hex,
        idle_s=settings.reevaluate_idle_s, idle_horizon_s=settings.label_horizon_s,
        on_error=lambda _cid: metrics.evaluation_errors.inc(),
    )  # fmt: skip
    out_topics = {
        name: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        for name in (topics.gates, topics.rollbacks, topics.alerts)
    }
    # Evaluation has its own thread: a rollback trigger must not wait behind a long ingestion batch.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowgate-evaluate")
    handle.closers.append(lambda: executor.shutdown(wait=True))

    async def send(emissions: list[Emission]) -> set[str]:
        """Produce every emission and wait for the broker's acknowledgements (the producer gives up on a message
        after PRODUCER_REQUEST_TIMEOUT_S); returns the comparisons all of whose events were acknowledged."""
        sent: list[tuple[Emission, asyncio.Future[Any]]] = []
        failed: set[str] = set()
        for emission in emissions:
            try:
                ack = await out_topics[emission.topic].send(key=emission.key, value=emission.value)
                sent.append((emission, asyncio.ensure_future(ack)))
            except Exception as exc:  # refused before it was queued: this comparison is evaluated again
                log.warning("publishing %s of %s failed: %s", type(emission.event).__name__, emission.comparison, exc)
                failed.add(emission.comparison)
        if sent:
            await asyncio.wait([ack for _, ack in sent])
        for emission, ack in sent:
            if ack.exception() is not None:
                log.warning("%s of %s was not acknowledged: %s", type(emission.event).__name__, emission.comparison,
                            ack.exception())  # fmt: skip
                failed.add(emission.comparison)
                continue
            metrics.governance_events.labels(type=type(emission.event).__name__).inc()
            for callback in handle.emitted:
                callback(emission.event)
        return {e.comparison for e in emissions} - failed

    def publish(emissions: list[Emission], loop: asyncio.AbstractEventLoop) -> set[str]:
        """In the evaluation thread: the events sent by the event loop's producer, back when acknowledged."""
        future = asyncio.run_coroutine_threadsafe(send(emissions), loop)
        deadline = time.monotonic() + PRODUCER_REQUEST_TIMEOUT_S + 30.0
        while True:
            try:
                return future.result(0.5)
            except concurrent.futures.TimeoutError:
                if loop.is_running() and time.monotonic() < deadline:
                    continue
                reason = "past the producer's own limit" if loop.is_running() else "the worker is stopping"
            except Exception as exc:
                reason = str(exc)
            future.cancel()  # none counts as sent: evaluated again (in this worker or the next one)
            log.warning("publishing %d events failed (%s)", len(emissions), reason)
            return set()

    async def evaluate() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await loop.run_in_executor(executor, rounds.round, lambda emissions: publish(emissions, loop))
        except InfrastructureError as exc:  # Redis away: one line a tick, no traceback; tried again next tick
            metrics.evaluation_errors.inc()
            log.warning("evaluation round failed: %s", exc)
            return
        except Exception:  # an evaluation error must not stop ingestion; it is logged and retried next tick
            metrics.evaluation_errors.inc()
            log.exception("evaluation round failed")
            return
        metrics.evaluation_seconds.observe(loop.time() - started)

    app.timer(settings.evaluate_interval_s, name="evaluate")(evaluate)


class _IngestThread(mode.Service):
    """Runs :meth:`Ingest.run` in a thread for the life of the app; a fatal error there crashes the app."""

    def __init__(self, ingest: Ingest, app: faust.App, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ingest = ingest
        self._app = app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="shadowgate-ingest", daemon=True)
        self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._ingest.run(self._stop)
        except Exception as exc:
            log.critical("the ingest loop stopped: %s", exc, exc_info=True)
            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(self._app.crash(exc), loop)

    async def on_stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
