"""What the evidence report adds to a ProofPack, and where it comes from.

A ProofPack (signed) holds every check with its value and threshold, the statistical tests and the drift
checks, but no distributions. The distributions behind the gate decisions are in the window store for as long
as its slots are retained (hour slots 15 days, day slots 35 days): :func:`gate_windows` reads, for each gate of
the pack, the comparison and time range its evidence names (``evidence.windows``), and gives the histograms the
plots need. They are the worker's data, not part of the signed pack; the report says so, and says when they are
gone. Approvals are cross-checked against the audit log: :func:`approval_entries` maps each approval's event id
to the verified audit entry that recorded it.

Pure except :func:`gate_windows`, which reads a :class:`~streams.state.store.WindowStore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from governance.contract.comparison import ComparisonKey
from streams.fold.aggregate import AggregateConfig
from streams.fold.readout import histograms, metrics_from_fields
from streams.state.store import WindowStore
from streams.state.windows import to_epoch_s

__all__ = ["CHECK_SECTIONS", "GateWindow", "approval_entries", "calibration_curve", "gate_windows", "section_of"]

#: Spec section and policy key of each check a gate event carries (``metrics.<name>`` is the SHADOW table).
CHECK_SECTIONS: dict[str, tuple[str, str]] = {
    "min_duration_met": ("1.2, 3.1, 3.2 (1)", "lifecycle.<stage>.min_days, shadow.model_types"),
    "min_samples_met": ("3.1, 3.2 (2)", "shadow.model_types.<type>.min_samples"),
    "drift_severity_acceptable": ("3.2 (3)", "drift_severity, shadow.acceptable_drift"),
    "metrics_pass_gate": ("2.1, 3.2 (4)", "shadow.*"),
    "no_integrity_violations": ("3.2 (5)", "shadow.lookback_days"),
    "no_recent_escalations": ("3.2 (6)", "shadow.lookback_days"),
    "performance_budget_met": ("3.2 (7)", "shadow.p99_latency_ms"),
    "statistical_tests_documented": ("3.2 (8)", "conclusive.min_pairs"),
    "source_fresh": ("8 (source health)", "source.staleness_limit_s"),
    "duration_guidance": ("1.2", "lifecycle.<stage>.max_days"),
    "canary_traffic_share": ("1.2", "staging.canary_traffic_share"),
    "p99_latency_ms": ("2.1 STAGING", "staging.p99_latency_ms"),
    "error_rate": ("2.1 STAGING", "staging.error_rate"),
    "kl_divergence": ("2.1 STAGING", "staging.kl_divergence"),
}


def section_of(name: str) -> tuple[str, str]:
    """(spec section, policy key) of a check name; ``("", "")`` when unknown."""
    if name.startswith("metrics."):
        return "2.1 SHADOW", f"shadow.{name.removeprefix('metrics.')}"
    if name.startswith("feature_drift"):
        return "2.1 STAGING", "staging.feature_drift"
    return CHECK_SECTIONS.get(name, ("", ""))


@dataclass(frozen=True)
class GateWindow:
    """The window store's view of one gate's evidence window (``found`` False: ``reason`` says why)."""

    stage: str
    key: ComparisonKey | None
    start: datetime | None
    end: datetime | None
    found: bool
    reason: str = ""
    counts: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    sample_count: int = 0
    label_count: int = 0
    exact: bool = True


def _window_of(gate: Mapping[str, Any]) -> tuple[ComparisonKey, datetime, datetime] | None:
    event = gate.get("event")
    if not isinstance(event, dict):
        return None
    versions, evidence = event.get("versions") or {}, event.get("evidence") or {}
    windows = evidence.get("windows") or []
    if not windows or not versions.get("candidate") or versions.get("role") not in ("shadow", "canary"):
        return None
    ref = windows[0]
    key = ComparisonKey(str(event.get("model")), str(versions["production"]), str(versions["candidate"]),
                        versions["role"])
    return key, datetime.fromisoformat(ref["start"]), datetime.fromisoformat(ref["end"])


def gate_windows(gates: Mapping[str, Mapping[str, Any]], store: WindowStore, now: datetime,
                 config: AggregateConfig | None = None) -> list[GateWindow]:
    """For each gate of a ProofPack's ``gate_evidence`` (by stage), the histograms of its evidence window."""
    cfg = config or AggregateConfig()
    out = []
    for stage, gate in sorted(gates.items(), key=lambda item: item[0] != "SHADOW"):
        found = _window_of(gate)
        if found is None:
            out.append(GateWindow(stage, None, None, None, False, "the gate event names no comparison window"))
            continue
        key, start, end = found
        read = store.read(key.as_id(), to_epoch_s(start), to_epoch_s(end), max(to_epoch_s(end), to_epoch_s(now)))
        if not read.fields:
            out.append(GateWindow(stage, key, start, end, False, "the window store no longer holds (or never held) "
                                  "this window: slots expire (hour slots after 15 days, day slots after 35)"))
            continue
        metrics, _ = metrics_from_fields(read.fields, cfg, full=False)
        out.append(GateWindow(stage, key, start, end, True, "", histograms(read.fields, cfg),
                              int(metrics["sample_count"] or 0), int(metrics["label_count"] or 0), read.plan.exact))
    return out


def calibration_curve(negatives: npt.NDArray[np.int64], positives: npt.NDArray[np.int64],
                      config: AggregateConfig | None = None, groups: int = 10) -> tuple[npt.NDArray[np.float64],
                                                                                        npt.NDArray[np.float64]]:
    """(mean predicted score, observed rate of label 1) per equal-width group of predicted score, empty ones left
    out, from the labelled pairs per fine logit bin."""
    cfg = config or AggregateConfig()
    predicted = 1.0 / (1.0 + np.exp(-cfg.logit_centers()))
    group = np.minimum((predicted * groups).astype(np.int64), groups - 1)
    total = (negatives + positives).astype(np.float64)
    n = np.bincount(group, weights=total, minlength=groups)
    mean_predicted = np.bincount(group, weights=total * predicted, minlength=groups)
    ones = np.bincount(group, weights=positives.astype(np.float64), minlength=groups)
    kept = n > 0
    return mean_predicted[kept] / n[kept], ones[kept] / n[kept]


def approval_entries(items: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Approval event id -> the verified audit entry that recorded it (``seq``, ``at``, ``key_id``, input)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if item.get("status", "verified") != "verified":
            continue
        for approval in item.get("approvals") or []:
            out[approval["event_id"]] = {"seq": item["seq"], "at": item["at"], "key_id": item.get("key_id"),
                                         "input": item.get("input") or {}}
    return out
