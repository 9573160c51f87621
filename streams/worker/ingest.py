"""Reading the scores and labels topics: batches in, offsets committed only once a batch is done.

Our own consumer (confluent-kafka, one consumer group ``SHADOWGATE_CONSUMER_GROUP``) runs in one thread,
underneath the Faust application shell, and drives the processor::

    consume(≤ 20,000 records, 32 MiB) ─► process: decode, fold, deliver dead letters (broker ack), apply
                     ▲                          │ raises?  pause every partition, wait 0.25 s, 0.5 s, … ≤ 5 s
                     │                          ▼          (consume() meanwhile: membership kept, rebalances served)
                     └──────── commit(offsets, sync) ◄─────  then the SAME batch again, never the next one

With a :class:`Pipeline` (the worker's) the steps of two batches overlap: the ingest thread folds batch n+1
(``Pipeline.fold``) while the applier thread delivers batch n's dead letters and applies it
(``Pipeline.apply``); once batch n is applied, batch n+1's apply starts and batch n is committed. If batch
n's apply failed (or a fence refused it), the in-memory state of both batches' partitions is dropped and the
two are done again whole by ``process``, as above, that failure counted as their first try.

Guarantees:

* A batch's offsets are committed only after its fenced apply succeeded and its dead letters were acknowledged
  (the processor delivers them before the apply), by this thread (the only user of the consumer); a revocation
  first waits for the batch in flight and commits it. Nothing is skipped: a failing batch is tried again until
  it is done, or until its partitions are revoked (their next owner reads them again from the committed
  offset). The fence makes every retry and every redelivery harmless.
* A failure pauses every assigned partition (nothing more is fetched) and the batch is tried again with
  exponential backoff (``SHADOWGATE_RETRY_BACKOFF_S`` doubling up to ``SHADOWGATE_RETRY_BACKOFF_MAX_S``),
  each try logged and counted (``shadowgate_batch_retries{stage}``). A batch not done after
  ``SHADOWGATE_UNREADY_AFTER_S`` (failing, or blocked in a call) makes :meth:`Ingest.status` unready; when it is
  done the partitions resume and the worker is ready again.
* Rebalances are eager (the ``range`` assignor, which keeps partition ``p`` of both co-partitioned topics on
  one worker): a revoked partition's processor state is dropped (:meth:`Processor.revoke`) and its records
  of the unfinished batch are given up.
* A consumer that fails for good (librdkafka's fatal errors: e.g. fenced as a static member, which also
  happens when a broker restarted with stale group metadata) is replaced: the worker drops its partitions'
  state, closes it and joins with a new consumer. A second such failure within ``refence_window_s`` (another
  process uses the same ``group.instance.id``, and they would fence each other in turn) ends :meth:`run` with
  :class:`~governance.errors.InfrastructureError`: the worker stops rather than share an identity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from governance.contract.kafkaio import Record
from governance.errors import DeliveryError, InfrastructureError
from streams.decode.records import BatchOutcome
from streams.worker.telemetry import WorkerMetrics

__all__ = ["ConsumerLike", "Ingest", "IngestConfig", "IngestStatus", "Pipeline"]

log = logging.getLogger(__name__)


class ConsumerLike(Protocol):
    """The part of ``confluent_kafka.Consumer`` the ingest loop uses."""

    def subscribe(self, topics: list[str], **callbacks: Any) -> None: ...

    def consume(self, num_messages: int = ..., timeout: float = ...) -> list[Any]: ...

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> Any: ...

    def assign(self, partitions: list[TopicPartition]) -> None: ...

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def assignment(self) -> list[TopicPartition]: ...

    def close(self) -> None: ...


def _is_fatal(err: KafkaError) -> bool:
    # librdkafka reports a fatal error to the consumer as an event of code _FATAL, not always flagged fatal.
    return bool(err.fatal()) or err.code() == KafkaError._FATAL


#: While a batch is applied and nothing more is fetched: how long each look for the next batch waits.
_WHILE_APPLIED_S = 0.005


class _ConsumerFailed(Exception):
    """The consumer failed for good (a librdkafka fatal error): only a new one can go on."""


class _NoConsumer:
    """Stands in before the first consumer is made."""

    def close(self) -> None:
        """Nothing to close."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no consumer yet ({name})")


@dataclass(frozen=True)
class Pipeline:
    """A batch in steps, so that the next batch is folded while this one is applied (see the module doc).

    ``fold`` runs in the ingest thread and advances the in-memory state as if the batch were applied;
    ``apply`` (dead letters, then the fenced apply) runs in the applier thread and touches nothing ``fold``
    does; False means a fence refused. ``settle`` gives the outcome of an applied batch; ``discard`` drops the
    in-memory state of partitions whose folds were not applied (reloaded from the store when next needed)."""

    fold: Callable[[list[Record]], Any]
    apply: Callable[[Any], bool]
    settle: Callable[[Any], BatchOutcome]
    discard: Callable[[Iterable[int]], None]


@dataclass
class _InFlight:
    """A folded batch whose apply runs in the applier thread."""

    pipeline: Pipeline
    records: list[Record]
    folded: Any
    partitions: set[int]
    applied: Future[bool]
    since: float


class _Refused(Exception):
    """A fence refused a pipelined apply: another worker moved it (redone from the stored state)."""


@dataclass(frozen=True)
class IngestConfig:
    """What the loop reads and how it waits (see the module doc for the settings behind them)."""

    topics: tuple[str, ...]
    batch_max_records: int = 20_000
    batch_max_bytes: int = 32 * 1024 * 1024
    batch_chunk_records: int = 2000  # records per consume() call; a backlog takes several
    batch_within_s: float = 0.25
    backoff_s: float = 0.25
    backoff_max_s: float = 5.0
    unready_after_s: float = 30.0

    def backoff(self, attempt: int) -> float:
        """The delay after the ``attempt``-th failure of a batch (1-based): doubling, capped."""
        return min(self.backoff_max_s, self.backoff_s * 2.0 ** min(attempt - 1, 30))


@dataclass(frozen=True)
class IngestStatus:
    """A snapshot for ``/readyz`` and the metrics."""

    running: bool  # the loop runs (False before start and after it ended)
    joined: bool  # the consumer has an assignment from its group (possibly empty)
    partitions: int  # assigned partitions (both topics)
    paused: bool  # a failing batch paused every partition
    batch_age_s: float  # how long the batch in hand has been in progress (0: none)
    failures: int  # failed tries of the batch in hand
    last_error: str | None  # the last failure of the batch in hand
    stuck: bool  # batch_age_s beyond the unready limit
    fatal: str | None  # why the loop ended, if it ended on an error


class Ingest:
    """The consume → process → commit loop of one worker (see module doc); :meth:`run` is the thread body.

    ``process`` takes a batch and returns its outcome once applied (it delivers the dead letters itself),
    raising on any failure; ``revoke`` drops the state of partitions this worker lost.
    """

    def __init__(
        self,
        consumer: Callable[[], ConsumerLike],
        config: IngestConfig,
        process: Callable[[list[Record]], BatchOutcome],
        revoke: Callable[[Iterable[int]], None],
        metrics: WorkerMetrics,
        *,
        observers: Sequence[Callable[[BatchOutcome], None]] = (),
        clock: Callable[[], float] = time.monotonic,
        refence_window_s: float = 60.0,
        pipeline: Pipeline | None = None,
    ) -> None:
        """``consumer`` makes a new consumer (one at start, another after one failed for good). With a
        ``pipeline`` each batch is folded while the one before it is applied (``process`` does a batch whole:
        after a failure, and without a pipeline)."""
        self._new_consumer = consumer
        self._consumer: ConsumerLike = _NoConsumer()
        self._refence_window_s = refence_window_s
        self._last_fatal: float | None = None
        self._broken = False  # the consumer failed for good: no call on it but close
        self.config = config
        self._process = process
        self._revoke = revoke
        self._metrics = metrics
        self._observers = observers
        self._clock = clock
        self._running = False
        self._joined = False
        self._partitions: set[tuple[str, int]] = set()
        self._lost: set[tuple[str, int]] = set()  # revoked while a batch was in hand: its records are given up
        self._revoked_meanwhile: set[tuple[str, int]] = set()  # revoked while a batch is being taken
        self._held: list[Record] = []  # consumed while a batch failed (none while paused): the next batch
        self._paused = False
        self._batch_since: float | None = None
        self._failures = 0
        self._last_error: str | None = None
        self._fatal: str | None = None
        self._pipeline = pipeline
        self._inflight: _InFlight | None = None
        # The applier thread (started at the first apply, ended with run()).
        self._applier = ThreadPoolExecutor(1, thread_name_prefix="shadowgate-apply")

    # -- the thread ---------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Consume and process until ``stop`` is set; close the consumer (static members keep their partitions
        for the session timeout, so a restart takes them back without a rebalance)."""
        self._running = True
        try:
            while not stop.is_set():
                self._consumer, self._broken = self._new_consumer(), False
                try:
                    self._consume(stop)
                except _ConsumerFailed as exc:
                    self._replace(exc)
                finally:
                    self._close()
        except Exception as exc:
            self._fatal = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._running = False
            self._applier.shutdown()

    def _consume(self, stop: threading.Event) -> None:
        self._consumer.subscribe(
            list(self.config.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        try:
            while not stop.is_set():
                # First: a rebalance in it may drop held records. While a batch is applied, only what is fetched.
                polled = self._next_batch(wait=self._inflight is None)
                records, self._held = self._held + polled, []
                if records and self._pipeline is not None:
                    self._overlap(self._pipeline, records, stop)
                elif records:
                    self._complete(records, stop)
                else:
                    self._land(stop)
        finally:
            self._land_now()

    def _next_batch(self, *, wait: bool = True) -> list[Record]:
        """What is fetched already, at once (a backlog is never kept waiting), up to ``batch_max_records`` and
        ``batch_max_bytes``; when nothing is, the first record to arrive within ``batch_within_s`` and what is
        fetched with it. Never a wait to fill a batch: ``consume`` waits out its timeout to fill one, which
        held every batch of a moderate load for ``batch_within_s`` (window freshness p50 0.38 s at 5,500
        pairs/s). Under load the batches grow by themselves: what arrives while one is processed is the next.
        Each batch costs a Redis apply and a synchronous commit whatever its size (~30 ms on a loaded
        machine), so a backlog is taken in several ``consume`` calls of ``batch_chunk_records``: single-event
        messages in batches of one call (2,000 records, 1,000 pairs) spent most of their time there. While a
        batch is applied, the next is taken as soon as its first record is fetched (``wait`` False: none once
        the apply is done)."""
        records = self._take([])
        if records:
            return records
        inflight = self._inflight
        while inflight is not None and not inflight.applied.done():  # the next batch, or the apply done: first
            if first := self._poll(_WHILE_APPLIED_S, 1):
                return self._take(first)
        if not wait:
            return []
        first = self._poll(self.config.batch_within_s, 1)
        return self._take(first) if first else []

    def _take(self, records: list[Record]) -> list[Record]:
        """``records`` and what is fetched already, within the batch bounds. A rebalance served by one of the
        ``consume`` calls leaves out what came before it from the partitions it revoked (their next owner reads
        them from the committed offset; what the call returns is of the new assignment)."""
        self._revoked_meanwhile = set()
        size = sum(len(r.value) for r in records)
        while len(records) < self.config.batch_max_records and size < self.config.batch_max_bytes:
            want = min(self.config.batch_chunk_records, self.config.batch_max_records - len(records))
            more = self._poll(0.0, want)
            if self._revoked_meanwhile:
                records = [r for r in records if (r.topic, r.partition) not in self._revoked_meanwhile]
                self._revoked_meanwhile = set()
                size = sum(len(r.value) for r in records)
            records += more
            size += sum(len(r.value) for r in more)
            if len(more) < want:
                break
        return records

    def _replace(self, exc: _ConsumerFailed) -> None:
        """After the consumer failed for good: forget every partition (a new consumer joins the group), or give
        up when it already failed within ``refence_window_s``."""
        now = self._clock()
        if self._last_fatal is not None and now - self._last_fatal < self._refence_window_s:
            raise InfrastructureError(
                f"{exc}, again within {self._refence_window_s:g} s: is another process using this worker's "
                "group.instance.id (SHADOWGATE_INSTANCE_ID)? Each process needs its own"
            ) from exc
        self._last_fatal = now
        log.error("%s: dropping this worker's partitions and joining the group with a new consumer", exc)
        self._on_revoke(self._consumer, [TopicPartition(t, p) for t, p in self._partitions], event="lost")
        self._held, self._paused = [], False
        self._metrics.partitions_paused.set(0)

    def _close(self) -> None:
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:  # a consumer that failed for good may refuse to close
            log.warning("closing the consumer: %s", exc)

    def status(self) -> IngestStatus:
        inflight = self._inflight
        started = [t for t in (self._batch_since, inflight.since if inflight else None) if t is not None]
        since = min(started) if started else None
        age = 0.0 if since is None else max(0.0, self._clock() - since)
        return IngestStatus(
            running=self._running, joined=self._joined, partitions=len(self._partitions), paused=self._paused,
            batch_age_s=age, failures=self._failures, last_error=self._last_error,
            stuck=age > self.config.unready_after_s, fatal=self._fatal,
        )  # fmt: skip

    # -- one batch, overlapped with the next ----------------------------------------------------------------

    def _overlap(self, pipeline: Pipeline, records: list[Record], stop: threading.Event) -> None:
        """Fold ``records`` while the batch in flight is applied; once that one is, apply these and commit it.
        If the one in flight was not applied, both are done again whole (:meth:`_complete`), its failure
        counted as their first try: the fold of ``records`` went on from its unapplied state."""
        since = self._clock()
        partitions = {r.partition for r in records}
        try:
            folded, failure = pipeline.fold(records), None
        except Exception as exc:  # the fold dropped the states it advanced
            folded, failure = None, ("apply", exc)
        before, self._inflight = self._inflight, None
        if before is not None and (lost := self._landed(before)) is not None:
            pipeline.discard(before.partitions | partitions)
            self._complete(before.records + records, stop, first=lost)
            return
        if folded is None:
            if before is not None:
                self._commit_landed(before, stop)
            self._complete(records, stop, first=failure)
            return
        applied = self._applier.submit(pipeline.apply, folded)
        self._inflight = _InFlight(pipeline, records, folded, partitions, applied, since)
        if before is not None:
            self._commit_landed(before, stop)

    def _landed(self, inflight: _InFlight) -> tuple[str, Exception] | None:
        """Wait for the apply of ``inflight``: None once applied, else the failure (stage, exception)."""
        try:
            if inflight.applied.result():
                return None
            return "apply", _Refused("a fence moved (another worker)")
        except Exception as exc:
            return ("dead_letters" if isinstance(exc, DeliveryError) else "apply"), exc

    def _commit_landed(self, inflight: _InFlight, stop: threading.Event) -> None:
        self._complete(inflight.records, stop, outcome=inflight.pipeline.settle(inflight.folded))

    def _land(self, stop: threading.Event) -> None:
        """Nothing more fetched: finish the batch in flight (commit it, or do it again whole if it failed)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        if (lost := self._landed(inflight)) is None:
            self._commit_landed(inflight, stop)
        else:
            inflight.pipeline.discard(inflight.partitions)
            self._complete(inflight.records, stop, first=lost)

    def _land_now(self) -> None:
        """Finish the batch in flight without waiting for retries (stopping, a rebalance, a failed consumer):
        commit it once if it was applied, else hold its records for the next batch (its failure counted)."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        lost = self._landed(inflight)
        if lost is not None:
            inflight.pipeline.discard(inflight.partitions)
            self._count_failure(*lost)
            self._held = inflight.records + self._held
            return
        outcome = inflight.pipeline.settle(inflight.folded)
        if not self._broken:
            try:
                self._commit(inflight.records)
            except Exception as exc:  # noqa: BLE001 - applied; the fence skips what is delivered again
                self._count_failure("commit", exc)
        self._done(outcome)

    # -- one batch ----------------------------------------------------------------------------------------

    def _complete(
        self, records: list[Record], stop: threading.Event, *, outcome: BatchOutcome | None = None,
        first: tuple[str, Exception] | None = None,
    ) -> None:
        """Process and commit ``records`` (only commit them when their ``outcome`` is known), trying again
        until done, revoked or stopped; ``first``: the failure of a try already made (counted, then waited
        out, unless a fence refused: that batch is redone at once)."""
        self._batch_since = self._clock()
        self._lost.clear()
        try:
            if first is not None and not isinstance(first[1], _Refused):
                self._failed(*first, stop)
            elif first is not None:
                log.warning("%s: redoing the batch from the stored state", first[1])
            while not stop.is_set():
                records = self._owned(records)
                if not records:
                    return
                stage = "apply"
                try:
                    if outcome is None:
                        outcome = self._process(records)
                    stage = "commit"
                    self._commit(records)
                except Exception as exc:  # any failure, a bug included: the same batch again, never the next
                    if isinstance(exc, DeliveryError) and stage == "apply":
                        stage = "dead_letters"
                    self._fatal_or(exc)
                    self._failed(stage, exc, stop)
                    continue
                self._done(outcome)
                return
        finally:
            # Done, or given up to a rebalance (its partitions' next owner reads them again): what is
            # assigned now is consumed again either way (unless the consumer failed for good).
            if not self._broken:
                self._resume()
            self._batch_since = None
            self._failures = 0
            self._last_error = None

    def _failed(self, stage: str, exc: Exception, stop: threading.Event) -> None:
        """Count and log a failed try, pause, and wait the backoff serving the consumer (membership,
        rebalances); records it returns meanwhile (none while paused) are held for the next batch."""
        self._failures += 1
        self._last_error = f"{stage}: {type(exc).__name__}: {exc}"
        delay = self.config.backoff(self._failures)
        self._count_failure(stage, exc, f"trying the same batch again in {delay:.2f} s")
        self._pause()
        deadline = self._clock() + delay
        while not stop.is_set() and (left := deadline - self._clock()) > 0:
            self._held += self._poll(min(left, 0.5))

    def _count_failure(self, stage: str, exc: Exception, then: str = "its records are read again") -> None:
        self._metrics.batch_retries.labels(stage=stage).inc()
        log.warning("batch of %s failed at %s (try %d): %s: %s; %s", "+".join(self.config.topics), stage,
                    max(self._failures, 1), type(exc).__name__, exc, then)  # fmt: skip

    def _done(self, outcome: BatchOutcome) -> None:
        if self._failures:
            log.warning("batch done after %d failed tries (%.1f s)", self._failures,
                        self._clock() - (self._batch_since or self._clock()))  # fmt: skip
        self._metrics.observe(outcome)
        for observe in self._observers:
            observe(outcome)

    def _owned(self, records: list[Record]) -> list[Record]:
        if not self._lost:
            return records
        return [r for r in records if (r.topic, r.partition) not in self._lost]

    def _commit(self, records: list[Record]) -> None:
        """Commit the next offset of every (topic, partition) of ``records``, synchronously."""
        nxt: dict[tuple[str, int], int] = {}
        for record in records:
            key = (record.topic, record.partition)
            if record.offset >= nxt.get(key, 0):
                nxt[key] = record.offset + 1
        offsets = [TopicPartition(topic, partition, offset) for (topic, partition), offset in nxt.items()]
        result = self._consumer.commit(offsets=offsets, asynchronous=False)
        failed = [tp for tp in result or [] if tp.error is not None]
        if failed:
            raise InfrastructureError(
                f"commit of {failed[0].topic}/{failed[0].partition} at {failed[0].offset} failed: {failed[0].error}"
            )

    # -- the consumer -------------------------------------------------------------------------------------

    def _poll(self, timeout_s: float, num_messages: int | None = None) -> list[Record]:
        records = []
        for msg in self._consumer.consume(num_messages=num_messages or self.config.batch_chunk_records,
                                          timeout=timeout_s):  # fmt: skip
            err = msg.error()
            if err is None:
                records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value() or b""))
            elif _is_fatal(err):
                self._broken = True
                raise _ConsumerFailed(f"the consumer failed for good: {err.str()}")
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer: %s", err.str())
        return records

    def _fatal_or(self, exc: Exception) -> None:
        """Re-raise a fatal consumer error (no retry can help); anything else is retried."""
        err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        if isinstance(err, KafkaError) and _is_fatal(err):
            self._broken = True
            raise _ConsumerFailed(f"the consumer failed for good: {err.str()}") from exc

    def _pause(self) -> None:
        if not self._paused:
            assigned = self._consumer.assignment()
            self._consumer.pause(assigned)
            self._paused = True
            self._metrics.partitions_paused.set(len(assigned))
            log.warning("paused %d partitions until the failing batch is done", len(assigned))

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(self._consumer.assignment())
            self._paused = False
            self._metrics.partitions_paused.set(0)
            log.warning("resumed consuming")

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._partitions = {(tp.topic, tp.partition) for tp in partitions}
        self._joined = True
        self._metrics.rebalances.labels(event="assigned").inc()
        self._metrics.partitions_assigned.set(len(partitions))
        # librdkafka keeps a partition's pause across a revocation and a new assignment: set it either way.
        consumer.assign(partitions)
        if self._paused:  # a batch is failing: what comes in waits too
            consumer.pause(partitions)
            self._metrics.partitions_paused.set(len(partitions))
        else:
            consumer.resume(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition], event: str = "revoked") -> None:
        self._land_now()  # its offsets committed (or its records held) while its partitions are still ours
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked_meanwhile |= gone
        if self._paused and not self._broken:
            consumer.resume(partitions)  # no pause outlives the assignment (librdkafka would keep it)
        self._lost |= gone
        self._held = [r for r in self._held if (r.topic, r.partition) not in gone]
        self._partitions -= gone
        self._joined = False
        self._revoke({partition for _, partition in gone})
        self._metrics.rebalances.labels(event=event).inc()
        self._metrics.partitions_assigned.set(len(self._partitions))
        if self._paused:
            self._metrics.partitions_paused.set(len(self._partitions))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions, event="lost")
