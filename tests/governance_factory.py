"""Snapshots and policies for the governance tests (plain data, built from numpy samples where it matters)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml

from governance.contract.comparison import ComparisonKey, DeltaSums, WindowSnapshot
from governance.policy.document import Policy, load_policy, parse_policy

__all__ = [
    "BINS",
    "T0",
    "GOOD_METRICS",
    "default_policy_data",
    "histogram",
    "key",
    "policy_with",
    "sample_pair",
    "snapshot",
    "sums_of",
]

T0 = datetime(2026, 3, 2, tzinfo=UTC)
BINS = 1000

# A candidate that passes every SHADOW and STAGING threshold with a margin, on plenty of data.
GOOD_METRICS: dict[str, float | None] = {
    "sample_count": 30_000,
    "label_count": 5_000,
    "label_coverage": 5_000 / 30_000,
    "brier_score": 0.05,
    "precision_at_10": 0.45,
    "auc_roc": 0.86,
    "calibration_slope": 1.0,
    "calibration_intercept": 0.0,
    "recall_at_10": 0.3,
    "mean_abs_delta": 0.02,
    "p50_abs_delta": 0.015,
    "p95_abs_delta": 0.06,
    "p99_abs_delta": 0.12,
    "mean_signed_delta": 0.001,
    "kl_divergence": 0.01,
    "psi": 0.02,
    "js_divergence": 0.004,
    "decision_flip_rate": 0.01,
    "orphan_rate": 0.0,
    "p50_latency_ms": 40.0,
    "p95_latency_ms": 120.0,
    "p99_latency_ms": 200.0,
    "error_rate": 0.0,
    "integrity_violations": 0,
    "production_calibration_slope": 1.0,
    "production_error_rate": 0.0,
    "production_p99_latency_ms": 180.0,
    "production_integrity_violations": 0,
}


def key(role: Literal["shadow", "canary"] = "shadow") -> ComparisonKey:
    return ComparisonKey("fraud-risk", "1.4.0", "1.5.0", role)


def sample_pair(n: int, seed: int = 7, shift: float = 0.01) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Production and candidate scores of ``n`` requests, in (0, 1), candidate slightly shifted."""
    rng = np.random.default_rng(seed)
    production = rng.beta(2.0, 5.0, size=n)
    candidate = np.clip(production + shift + rng.normal(0.0, 0.02, size=n), 1e-6, 1 - 1e-6)
    return production, candidate


def histogram(scores: npt.NDArray[np.float64], bins: int = BINS) -> npt.NDArray[np.int64]:
    counts, _ = np.histogram(scores, bins=bins, range=(0.0, 1.0))
    return counts.astype(np.int64)


def sums_of(production: npt.NDArray[np.float64], candidate: npt.NDArray[np.float64]) -> DeltaSums:
    d = candidate - production
    return DeltaSums(
        n=int(d.size),
        sum_delta=float(np.sum(d)),
        sum_delta_sq=float(np.sum(d * d)),
        sum_abs_delta=float(np.sum(np.abs(d))),
        sum_abs_delta_sq=float(np.sum(d * d)),
    )


def snapshot(
    role: Literal["shadow", "canary"] = "shadow",
    window: str = "stage",
    end: datetime = T0 + timedelta(days=15),
    start: datetime = T0,
    metrics: Mapping[str, float | None] | None = None,
    feature_drift: Mapping[str, float | None] | None = None,
    latest_event_ts: datetime | None | Literal["end"] = "end",
    with_statistics: bool = True,
    n: int | None = None,
    exact: bool = True,
    **overrides: float | None,
) -> WindowSnapshot:
    """A window snapshot with GOOD_METRICS, ``metrics``/``overrides`` applied, and real histograms/sums."""
    values: dict[str, float | None] = dict(GOOD_METRICS)
    values.update(metrics or {})
    values.update(overrides)
    size = n if n is not None else int(values["sample_count"] or 0)
    extra: dict[str, Any] = {}
    if with_statistics and size >= 2:
        production, candidate = sample_pair(size)
        extra = {
            "delta_sums": sums_of(production, candidate),
            "score_counts_production": histogram(production),
            "score_counts_candidate": histogram(candidate),
        }
    return WindowSnapshot(
        key=key(role),
        window=window,
        start=start,
        end=end,
        metrics=values,
        feature_drift=dict(feature_drift if feature_drift is not None else {"amount": 0.01, "country": 0.02}),
        latest_event_ts=end if latest_event_ts == "end" else latest_event_ts,
        first_event_ts=start,
        offsets={"scores:0": 1234, "scores:1": 987},
        exact=exact,
        **extra,
    )


def default_policy_data() -> dict[str, Any]:
    """The shipped default policy as plain YAML data, for mutation in tests."""
    import importlib.resources

    text = importlib.resources.files("governance.policy").joinpath("default_policy.yaml").read_text("utf-8")
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def policy_with(**changes: Any) -> Policy:
    """The default policy with dotted-path changes, e.g. ``policy_with(**{"triggers.rearm_s": 0})``."""
    if not changes:
        return load_policy()
    data = default_policy_data()
    for path, value in changes.items():
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return parse_policy(data, "test")
