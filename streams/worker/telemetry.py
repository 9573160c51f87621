"""Prometheus metrics of the worker, updated once per batch (never per event) or computed at scrape time.

A :class:`WorkerMetrics` owns its collectors in the registry it is given (tests pass a fresh
``CollectorRegistry``; the worker uses the default one and serves it on ``SHADOWGATE_METRICS_PORT``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from governance.contract.events import EventType
from streams.worker.processor import BatchOutcome

__all__ = ["WorkerMetrics"]


class WorkerMetrics:
    """Counters of what the worker processed; ``observe`` takes one batch outcome."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = reg
        self.records = Counter("shadowgate_records", "Kafka records processed", registry=reg)
        self.skipped = Counter("shadowgate_records_skipped", "redelivered records skipped by the fence",
                               registry=reg)
        self.score_events = Counter("shadowgate_score_events", "valid score events", registry=reg)
        self.labels = Counter("shadowgate_labels", "valid label events", registry=reg)
        self.pairs = Counter("shadowgate_pairs", "production/candidate pairs formed", registry=reg)
        self.labeled = Counter("shadowgate_labeled_pairs", "pairs joined with their label", registry=reg)
        self.orphans = Counter("shadowgate_orphans", "events whose partner never arrived", registry=reg)
        self.duplicates = Counter("shadowgate_duplicates", "duplicate events dropped", registry=reg)
        self.evicted = Counter("shadowgate_evicted", "half-pairs evicted by the pending bound", registry=reg)
        self.retries = Counter("shadowgate_fence_retries", "batches redone after a concurrent fence move",
                               registry=reg)
        self.dead_letters = Counter("shadowgate_dead_letters", "invalid messages sent to the DLQ",
                                    ["model"], registry=reg)
        self.batch_size = Histogram("shadowgate_batch_records", "records per processed batch",
                                    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000), registry=reg)
        self.watermark = Gauge("shadowgate_watermark_seconds", "newest event time seen per partition",
                               ["partition"], registry=reg)
        self.governance_events = Counter("shadowgate_governance_events", "signed events the evaluator published",
                                         ["type"], registry=reg)
        self.evaluation_seconds = Histogram("shadowgate_evaluation_seconds", "duration of one evaluation round",
                                            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=reg)
        self.evaluation_errors = Counter("shadowgate_evaluation_errors", "evaluation rounds that failed",
                                         registry=reg)
        # Known label values start at 0, so increase() sees the first event of each type.
        for event_type in get_args(EventType):
            self.governance_events.labels(type=event_type)
        # The worker under faults (docs/reliability.md).
        self.batch_retries = Counter("shadowgate_batch_retries", "failed tries of a batch, tried again after a "
                                     "backoff (stage: apply, dead_letters, commit)", ["stage"], registry=reg)
        self.batch_age = Gauge("shadowgate_batch_age_seconds", "how long the batch in hand has been in progress "
                               "(0: none); past SHADOWGATE_UNREADY_AFTER_S the worker is unready", registry=reg)
        self.ready = Gauge("shadowgate_worker_ready", "1 when /readyz would answer 200", registry=reg)
        self.partitions_assigned = Gauge("shadowgate_partitions_assigned", "partitions of the scores and labels "
                                         "topics assigned to this worker", registry=reg)
        self.partitions_paused = Gauge("shadowgate_partitions_paused", "partitions paused while a batch fails",
                                       registry=reg)
        self.rebalances = Counter("shadowgate_rebalances", "partition assignments, revocations and losses",
                                  ["event"], registry=reg)
        self.dead_letter_references = Counter("shadowgate_dead_letter_references", "dead letters whose bytes the "
                                              "broker refused, written as a reference (sha256, coordinates)",
                                              registry=reg)
        self.event_time_refused = Counter("shadowgate_event_time_refused", "messages dead-lettered for an event "
                                          "time outside the bounds (bound: ahead, behind)", ["bound"], registry=reg)
        for stage in ("apply", "dead_letters", "commit"):
            self.batch_retries.labels(stage=stage)
        for bound in ("ahead", "behind"):
            self.event_time_refused.labels(bound=bound)
        for event in ("assigned", "revoked", "lost"):
            self.rebalances.labels(event=event)

    def watch(self, batch_age_s: Callable[[], float], ready: Callable[[], bool]) -> None:
        """Compute the batch age and readiness gauges at scrape time from these."""
        self.batch_age.set_function(batch_age_s)
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def observe(self, outcome: BatchOutcome) -> None:
        self.records.inc(outcome.records)
        self.skipped.inc(outcome.skipped)
        self.score_events.inc(outcome.score_events)
        self.labels.inc(outcome.labels)
        self.pairs.inc(outcome.pairs)
        self.labeled.inc(outcome.labeled_pairs)
        self.orphans.inc(outcome.orphans)
        self.duplicates.inc(outcome.duplicates)
        self.evicted.inc(outcome.evicted)
        self.retries.inc(outcome.retries)
        if outcome.ahead:
            self.event_time_refused.labels(bound="ahead").inc(outcome.ahead)
        if outcome.behind:
            self.event_time_refused.labels(bound="behind").inc(outcome.behind)
        self.batch_size.observe(outcome.records)
        per_model: dict[str, int] = {}
        for dead in outcome.dead_letters:
            per_model[dead.model or ""] = per_model.get(dead.model or "", 0) + 1
        for model, count in per_model.items():
            self.dead_letters.labels(model=model).inc(count)
        for partition, ts in outcome.watermark_s.items():
            self.watermark.labels(partition=str(partition)).set(ts)
