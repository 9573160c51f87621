"""What a trigger window shows a rollback trigger: its value and what the trigger's confidence bound rests on.

:func:`inputs_from_snapshots` turns the snapshots of the trigger windows (keyed by window name) into one
:class:`Observation` per metric trigger (:mod:`governance.policy.triggers` judges them). The bound inputs are
read from the window's metrics when the worker reports them, else derived conservatively:

=====================  ==============================================  ==========================================
trigger                exact inputs (``production_`` for that side)    fallback
=====================  ==============================================  ==========================================
error rate             ``error_count`` / ``request_count``             ``error_rate x sample_count`` of
                                                                       ``sample_count`` (a wider bound)
P99 latency            ``latency_above_ms[T]`` / ``latency_count``     a lower bound on the slow requests from
                                                                       the P50 / P95 / P99 quantiles
KL divergence          ``kl_divergence_bias``, ``kl_divergence_se``    none: point estimate on
                                                                       ``triggers.fallback.min_pairs`` pairs
calibration slope      ``calibration_slope_se``                        none: point estimate on
                                                                       ``triggers.fallback.min_labels`` labels
=====================  ==============================================  ==========================================

Pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from governance.contract.comparison import WindowSnapshot
from governance.policy.checks import metric_count
from governance.policy.document import Policy, RangeTrigger, ThresholdTrigger

__all__ = [
    "ERROR_COUNT",
    "KL_BIAS",
    "KL_SE",
    "LATENCY_COUNT",
    "METRIC_TRIGGERS",
    "RATE_TRIGGERS",
    "REQUEST_COUNT",
    "SLOPE_SE",
    "Observation",
    "TriggerInputs",
    "finite",
    "inputs_from_snapshots",
    "latency_above_metric",
    "latency_hits",
    "trigger_policy",
]

METRIC_TRIGGERS: tuple[str, ...] = (
    "error_rate",
    "p99_latency_ms",
    "kl_divergence",
    "integrity_violations",
    "calibration_slope",
)
# The sufficient statistics a window may carry for the bounds (side-prefixed like every side metric, except
# the KL ones, which compare the sides). Without them the triggers fall back as inputs_from_snapshots says.
ERROR_COUNT = "error_count"  # requests of the side that reported an error (error_rate's numerator)
REQUEST_COUNT = "request_count"  # requests of the side (error_rate's denominator)
LATENCY_COUNT = "latency_count"  # latencies folded on the side
KL_BIAS = "kl_divergence_bias"  # governance.policy.bounds.kl_estimate of the drift histograms
KL_SE = "kl_divergence_se"
SLOPE_SE = "calibration_slope_se"  # governance.policy.bounds.logistic_slope_se of the label-joined counts
RATE_TRIGGERS: tuple[str, ...] = ("error_rate", "p99_latency_ms")
_QUANTILE_RELATIVE_ERROR = 0.01  # the latency sketch's quantiles are within 1 % of the exact value


def latency_above_metric(threshold_ms: float) -> str:
    """The metric counting latencies above ``threshold_ms`` (bins wholly above it), e.g. ``latency_above_ms[1000]``."""
    return f"latency_above_ms[{threshold_ms:g}]"


@dataclass(frozen=True)
class Observation:
    """One trigger's input: the value and what its confidence bound rests on.

    ``samples`` is the pairs (labels for the calibration slope) the value rests on. For the rate triggers
    ``hits`` of ``trials`` are the errors among requests, or the requests slower than the latency
    threshold among latencies; None: derived from ``value`` and ``samples`` (error rate) or unknown.
    ``bias`` / ``se`` are the KL bias and standard errors of KL and of the calibration slope; None: the
    trigger falls back to the point estimate on ``triggers.fallback`` samples. ``basis`` says where the
    counts came from, for the evidence.
    """

    value: float | None
    samples: int | None = None
    window: str | None = None
    hits: int | None = None
    trials: int | None = None
    bias: float | None = None
    se: float | None = None
    basis: str = ""


@dataclass(frozen=True)
class TriggerInputs:
    """What one step sees: an observation per metric trigger and the newest event time of the sources."""

    observations: Mapping[str, Observation] = field(default_factory=dict)
    latest_event_ts: datetime | None = None


def trigger_policy(policy: Policy, name: str) -> ThresholdTrigger | RangeTrigger:
    trigger: ThresholdTrigger | RangeTrigger = getattr(policy.triggers, name)
    return trigger


def finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _count(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) and value >= 0 else None


def _error_counts(snapshot: WindowSnapshot, prefix: str) -> tuple[int | None, int | None, str]:
    errors, requests = _count(snapshot.metric(prefix + ERROR_COUNT)), _count(snapshot.metric(prefix + REQUEST_COUNT))
    if errors is not None and requests is not None and errors <= requests:
        return errors, requests, "exact counts"
    rate, pairs = finite(snapshot.metric(prefix + "error_rate")), metric_count(snapshot, "sample_count")
    if rate is None or not pairs:
        return None, None, ""
    # error_rate is errors / (pairs + that side's orphans); the same share of the pairs alone is a smaller
    # sample with the same rate, so its bound is wider: conservative when orphans are not counted.
    return min(math.floor(rate * pairs + 1e-9), pairs), pairs, "error_rate x pairs (orphans left out: conservative)"


def latency_hits(quantiles: Mapping[float, float | None], n: int, threshold_ms: float) -> int:
    """At least this many of ``n`` latencies exceed ``threshold_ms``, given the sketch's quantiles.

    A ``q``-quantile (numpy's linear definition, rank ``(n - 1) q``) above the threshold by more than the
    sketch's error means every order statistic from rank ``ceil((n - 1) q)`` up is above it.
    """
    hits = 0
    for q, value in quantiles.items():
        if value is not None and math.isfinite(value) and value > threshold_ms * (1.0 + _QUANTILE_RELATIVE_ERROR):
            hits = max(hits, n - math.ceil((n - 1) * q - 1e-9))
    return hits


def _latency_counts(
    snapshot: WindowSnapshot, prefix: str, threshold_ms: float
) -> tuple[int | None, int | None, str]:
    above = _count(snapshot.metric(prefix + latency_above_metric(threshold_ms)))
    total = _count(snapshot.metric(prefix + LATENCY_COUNT))
    if above is not None and total is not None and above <= total:
        return above, total, "exact counts"
    pairs = metric_count(snapshot, "sample_count")
    if not pairs:
        return None, None, ""
    quantiles = {q: snapshot.metric(f"{prefix}p{round(q * 100)}_latency_ms") for q in (0.5, 0.95, 0.99)}
    return latency_hits(quantiles, pairs, threshold_ms), pairs, "from the P50/P95/P99 quantiles (a lower bound)"


def inputs_from_snapshots(
    policy: Policy,
    snapshots: Mapping[str, WindowSnapshot],
    side: Literal["candidate", "production"] = "candidate",
) -> TriggerInputs:
    """Pick each trigger's metric, and what its bound needs, from the window its policy entry names.

    ``side`` chooses the judged model: bare metric names for the candidate, ``production_`` names for the
    production model; the KL divergence compares the two sides, so it has no side. A window the store
    could only answer with rounded edges (``exact`` False) is another measurement than the policy's: its
    trigger sees no observation (unknown). The newest event time is the maximum over all snapshots.

    Bound inputs, exact when the window carries them, else the documented fallback:

    * error rate: ``error_count`` / ``request_count``; else ``error_rate x sample_count`` of
      ``sample_count`` (the pairs: a smaller sample at the same rate, so a wider, conservative bound);
    * P99 latency: ``latency_above_ms[T]`` / ``latency_count``; else a lower bound on the requests slower
      than ``T`` from the P50 / P95 / P99 quantiles (assumes every pair reported its latency);
    * KL: ``kl_divergence_bias`` and ``kl_divergence_se``; calibration slope: ``calibration_slope_se``;
      else none (the trigger judges the point estimate on ``triggers.fallback`` samples).
    """
    prefix = "production_" if side == "production" else ""
    observations: dict[str, Observation] = {}
    for name in METRIC_TRIGGERS:
        trigger = trigger_policy(policy, name)
        snapshot = snapshots.get(trigger.window)
        if snapshot is None or not snapshot.exact:
            continue
        metric = name if name == "kl_divergence" else prefix + name
        value = snapshot.metric(metric)
        pairs = metric_count(snapshot, "sample_count") or 0
        if name == "error_rate":
            hits, trials, basis = _error_counts(snapshot, prefix)
            observation = Observation(value, pairs, trigger.window, hits, trials, basis=basis)
        elif name == "p99_latency_ms" and isinstance(trigger, ThresholdTrigger):
            hits, trials, basis = _latency_counts(snapshot, prefix, trigger.threshold)
            observation = Observation(value, pairs, trigger.window, hits, trials, basis=basis)
        elif name == "kl_divergence":
            bias, se = finite(snapshot.metric(KL_BIAS)), finite(snapshot.metric(KL_SE))
            observation = Observation(value, pairs, trigger.window, bias=bias, se=se)
        elif name == "calibration_slope":
            labels = metric_count(snapshot, "label_count") or 0
            observation = Observation(value, labels, trigger.window, se=finite(snapshot.metric(prefix + SLOPE_SE)))
        else:
            observation = Observation(value, None, trigger.window, basis="exact count")
        observations[name] = observation
    stamps = [s.latest_event_ts for s in snapshots.values() if s.latest_event_ts is not None]
    return TriggerInputs(observations, max(stamps) if stamps else None)
