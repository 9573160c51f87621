"""What the window store hands to the gates: one comparison's merged window, as plain data.

A :class:`WindowSnapshot` is produced by ``streams`` (which merges the Redis or memory slots and computes
the metrics from the sketches) and consumed by the pure gate functions in ``governance``. It carries no
sketch objects, only numbers and numpy arrays, so ``governance`` never imports ``streams``.

Metric names (keys of ``metrics``) follow the spec. Candidate-side metrics (the shadow or canary model,
the one being judged) use the bare name; the production side's use the ``production_`` prefix:

==============================  =================================================================
name                            meaning
==============================  =================================================================
sample_count                    pairs (production + candidate for one request) in the window
label_count                     pairs whose ground-truth label arrived
label_coverage                  label_count / sample_count
mean_abs_delta                  mean of |candidate - production| (exact, fixed-point sums)
p50_abs_delta, p95_abs_delta,   quantiles of |delta|, within +-0.001 of the exact quantile
p99_abs_delta
mean_signed_delta               mean of candidate - production
kl_divergence                   D_KL(candidate || production) over the 20-bin score histograms
psi, js_divergence              population stability index, Jensen-Shannon divergence (same bins)
decision_flip_rate              share of pairs where exactly one side is in its own top 10 %
orphan_rate                     orphans / (pairs + orphans)
p50_latency_ms, p95_latency_ms, latency quantiles, within 1 % relative error
p99_latency_ms
error_rate                      requests with an error / requests
brier_score, auc_roc,           label-joined metrics (None until labels arrive)
precision_at_10, recall_at_10,
calibration_slope,
calibration_intercept
integrity_violations            invalid messages attributed to this model in the window
==============================  =================================================================

A metric that cannot be computed (no data, one-class labels for AUC) is ``None``, never a made-up number:
the gates turn ``None`` into INCONCLUSIVE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["CANDIDATE_ROLES", "ComparisonKey", "DeltaSums", "Role", "WindowSnapshot"]

Role = Literal["production", "shadow", "canary"]
CANDIDATE_ROLES: tuple[Role, ...] = ("shadow", "canary")


@dataclass(frozen=True, order=True)
class ComparisonKey:
    """One production version compared with one candidate version of the same model."""

    model: str
    production_version: str
    candidate_version: str
    role: Literal["shadow", "canary"]

    def as_id(self) -> str:
        """A stable string id, safe in Redis keys (``|`` never appears in a validated name)."""
        return f"{self.model}|{self.production_version}|{self.candidate_version}|{self.role}"

    @classmethod
    def from_id(cls, value: str) -> ComparisonKey:
        model, prod, cand, role = value.split("|")
        if role not in CANDIDATE_ROLES:
            raise ValueError(f"comparison id {value!r}: role must be shadow or canary")
        return cls(model, prod, cand, role)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DeltaSums:
    """Sufficient statistics of the signed deltas d = candidate - production, for paired tests."""

    n: int
    sum_delta: float
    sum_delta_sq: float
    sum_abs_delta: float
    sum_abs_delta_sq: float


@dataclass(frozen=True)
class WindowSnapshot:
    """One comparison over one time range [start, end), merged from the window slots.

    ``score_counts_production`` / ``score_counts_candidate`` are the fine score histograms (equal-width
    bins of logit(score), identical for both sides) from which the two-sample KS test is computed; KS is
    invariant under the monotone logit, and logit bins keep the ranks of scores crowded near 0 or 1.
    ``latest_event_ts`` is the newest event time folded into the window; the gates call a window whose
    newest event is too old SOURCE_UNHEALTHY. ``exact`` is False when the store had to round the window's
    edges to whole hours or days because its finer slots had expired (``start``/``end`` are then the range
    actually merged): the rollback triggers do not judge such a window.
    """

    key: ComparisonKey
    window: str
    start: datetime
    end: datetime
    metrics: Mapping[str, float | None]
    feature_drift: Mapping[str, float | None] = field(default_factory=dict)
    delta_sums: DeltaSums | None = None
    score_counts_production: npt.NDArray[np.int64] | None = None
    score_counts_candidate: npt.NDArray[np.int64] | None = None
    latest_event_ts: datetime | None = None
    first_event_ts: datetime | None = None
    offsets: Mapping[str, int] = field(default_factory=dict)
    exact: bool = True

    def metric(self, name: str) -> float | None:
        """The named metric, or None when the window could not compute it."""
        return self.metrics.get(name)
