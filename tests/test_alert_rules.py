"""The Prometheus alert rules: every labelled counter starts at 0, promtool checks and unit-tests every rule.

``increase()`` needs two samples of a series: a counter whose series is born at 1 (its first increment) has
no earlier sample, so a rule on it never sees the first event. The consumer and the worker create every
known label value at 0; ``deploy/prometheus/tests/`` proves with ``promtool test rules`` that the first
failed rollback fires ``ShadowgateRollbackFailed`` only that way.
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry

from governance.contract.events import EventType
from governance.contract.stages import Stage
from governance.lifecycle.audit import RejectReason, RollbackStatus
from governance.service.consumer import Metrics
from streams.worker.telemetry import WorkerMetrics


def test_the_consumers_labelled_counters_start_at_zero_for_every_known_value() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for status in get_args(RollbackStatus):
        assert registry.get_sample_value("shadowgate_governance_rollbacks_total", {"status": status}) == 0.0, status
    for reason in get_args(RejectReason):
        assert registry.get_sample_value("shadowgate_governance_rejected_total", {"reason": reason}) == 0.0, reason
    for stage in Stage:
        assert registry.get_sample_value("shadowgate_governance_transitions_total", {"to_stage": stage.value}) == 0.0


def test_the_workers_event_counter_starts_at_zero_for_every_event_type() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    for event_type in get_args(EventType):
        assert registry.get_sample_value("shadowgate_governance_events_total", {"type": event_type}) == 0.0
