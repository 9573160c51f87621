"""The forwarder's Prometheus metrics: counters of what it read and delivered, state read at scrape time.

Counters (every known label value created at 0, so ``increase()`` sees the first event; a model's series
are created when the model is first seen, in the start-up replay for every model the topics hold):

====================================================  =========================================================
``shadowgate_alerts_received_total``                  verified inputs, by ``model``, ``kind``, ``severity``
``shadowgate_alerts_rejected_total``                  forged, unsigned, unknown-key or invalid messages, by
                                                      ``source`` and ``reason`` (never forwarded)
``shadowgate_alerts_duplicates_total``                inputs seen before (same event id or audit seq)
``shadowgate_alerts_superseded_total``                the consumer's rollback alerts, told by the audit log
``shadowgate_alerts_delivery_attempts_total``         HTTP attempts, by ``receiver`` and ``result``
``shadowgate_alerts_delivered_total``                 notices delivered, by ``receiver``
``shadowgate_alerts_dead_lettered_total``             notices or inputs dead-lettered, by ``receiver``, ``reason``
``shadowgate_alerts_commit_failures_total``           offset commits that failed (retried), by ``receiver``
====================================================  =========================================================

Inputs are counted once per delivery: the start-up replay (re-reading what every lane had already
committed, to rebuild the open conditions) counts nothing.

Gauges, computed at scrape time (:class:`StateCollector`): ``shadowgate_alerts_conditions_open{kind,model}``,
``shadowgate_alerts_condition_age_seconds{kind,model}`` (the oldest open one; 0 when none),
``shadowgate_alerts_pending{receiver}``, ``shadowgate_alerts_oldest_pending_seconds{receiver}``,
``shadowgate_alerts_backoff_seconds{receiver}`` and ``shadowgate_alerts_ready``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from governance.service.alerting.delivery import RESULTS
from governance.service.alerting.intake import REJECT_REASONS, SOURCES
from governance.service.alerting.notices import CONDITION_KINDS, KINDS, SEVERITIES
from governance.service.alerting.tracker import Condition

__all__ = ["DEAD_LETTER_REASONS", "SCRAPED", "ForwarderMetrics", "LaneView", "StateCollector", "View"]

DEAD_LETTER_REASONS = ("refused", "garbage", "rejected_input")
#: Series computed at scrape time: name -> (type, label names).
SCRAPED: dict[str, tuple[str, tuple[str, ...]]] = {
    "shadowgate_alerts_conditions_open": ("gauge", ("kind", "model")),
    "shadowgate_alerts_condition_age_seconds": ("gauge", ("kind", "model")),
    "shadowgate_alerts_pending": ("gauge", ("receiver",)),
    "shadowgate_alerts_oldest_pending_seconds": ("gauge", ("receiver",)),
    "shadowgate_alerts_backoff_seconds": ("gauge", ("receiver",)),
    "shadowgate_alerts_ready": ("gauge", ()),
}


class ForwarderMetrics:
    """The counters, registered in the registry passed in; ``lanes`` are the receiver names (and the DLQ's)."""

    def __init__(self, registry: CollectorRegistry, lanes: Iterable[str]) -> None:
        self.received = Counter("shadowgate_alerts_received", "Verified inputs, by model, kind and severity",
                                ["model", "kind", "severity"], registry=registry)
        self.rejected = Counter("shadowgate_alerts_rejected", "Messages refused (never forwarded), by source, reason",
                                ["source", "reason"], registry=registry)
        self.duplicates = Counter("shadowgate_alerts_duplicates", "Inputs seen before, by source", ["source"],
                                  registry=registry)
        self.superseded = Counter("shadowgate_alerts_superseded",
                                  "Consumer rollback alerts not delivered: the audit log's record is",
                                  registry=registry)
        self.attempts = Counter("shadowgate_alerts_delivery_attempts", "HTTP attempts, by receiver and result",
                                ["receiver", "result"], registry=registry)
        self.delivered = Counter("shadowgate_alerts_delivered", "Notices delivered, by receiver", ["receiver"],
                                 registry=registry)
        self.dead_lettered = Counter("shadowgate_alerts_dead_lettered", "Dead-lettered, by receiver and reason",
                                     ["receiver", "reason"], registry=registry)
        self.commit_failures = Counter("shadowgate_alerts_commit_failures", "Offset commits that failed (retried)",
                                       ["receiver"], registry=registry)
        self._models: set[str] = set()
        for source in SOURCES:
            self.duplicates.labels(source=source)
            for reason in REJECT_REASONS:
                self.rejected.labels(source=source, reason=reason)
        for lane in lanes:
            self.delivered.labels(receiver=lane)
            self.commit_failures.labels(receiver=lane)
            for result in RESULTS:
                self.attempts.labels(receiver=lane, result=result)
            for why in DEAD_LETTER_REASONS:
                self.dead_lettered.labels(receiver=lane, reason=why)

    def model_seen(self, model: str) -> None:
        """Create ``model``'s received series at 0 (once)."""
        if model in self._models:
            return
        self._models.add(model)
        for kind in KINDS:
            for severity in SEVERITIES:
                self.received.labels(model=model, kind=kind, severity=severity)


@dataclass(frozen=True)
class LaneView:
    receiver: str
    pending: int
    oldest_pending_s: float
    backoff_s: float


@dataclass(frozen=True)
class View:
    """What the collector reads at scrape time (built by the forwarder, immutable)."""

    conditions: tuple[Condition, ...]
    models: frozenset[str]
    lanes: tuple[LaneView, ...]
    ready: bool


class StateCollector(Collector):
    """Gauges of the forwarder's state, computed from ``view()`` at each scrape."""

    def __init__(self, view: Callable[[], View], clock: Callable[[], datetime]) -> None:
        self._view, self._clock = view, clock

    def collect(self) -> Iterator[Metric]:
        view, now = self._view(), self._clock()
        opened = GaugeMetricFamily("shadowgate_alerts_conditions_open", "Open conditions, by kind and model",
                                   labels=["kind", "model"])
        age = GaugeMetricFamily("shadowgate_alerts_condition_age_seconds",
                                "Age of the oldest open condition (0: none), by kind and model",
                                labels=["kind", "model"])
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[tuple[str, str], datetime] = {}
        for condition in view.conditions:
            key = (condition.kind, condition.notice.model)
            counts[key] = counts.get(key, 0) + 1
            oldest[key] = min(oldest.get(key, condition.since), condition.since)
        models = view.models | {model for _, model in counts}
        for model in sorted(models):
            for kind in CONDITION_KINDS:
                opened.add_metric([kind, model], counts.get((kind, model), 0))
                since = oldest.get((kind, model))
                age.add_metric([kind, model], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield opened
        yield age
        pending = GaugeMetricFamily("shadowgate_alerts_pending", "Notices not yet delivered", labels=["receiver"])
        oldest_pending = GaugeMetricFamily("shadowgate_alerts_oldest_pending_seconds",
                                           "Age of the oldest notice not yet delivered (0: none)", labels=["receiver"])
        backoff = GaugeMetricFamily("shadowgate_alerts_backoff_seconds", "Current retry delay (0: not retrying)",
                                    labels=["receiver"])
        for lane in view.lanes:
            pending.add_metric([lane.receiver], lane.pending)
            oldest_pending.add_metric([lane.receiver], lane.oldest_pending_s)
            backoff.add_metric([lane.receiver], lane.backoff_s)
        yield pending
        yield oldest_pending
        yield backoff
        yield GaugeMetricFamily("shadowgate_alerts_ready", "1 when the start-up replay is done and Kafka answers",
                                value=1.0 if view.ready else 0.0)
