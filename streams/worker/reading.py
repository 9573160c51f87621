"""Reading windows: from a window store to :class:`~governance.contract.comparison.WindowSnapshot` s and JSON.

``read_windows(store, model=..., windows=[...], now=...)`` is the Python read API behind
``shadowgate windows`` and the ``comparisons`` part of ``shadowgate replay --json``; both print the same
document shape::

    {"comparisons": [{"model", "production_version", "candidate_version", "role",
                      "windows": {"<window>": {metric: value, ...}}}],
     "errors": [{"model", "production_version", "candidate_version", "role", "error"}]}   # only if any

``now`` defaults to the comparison's newest event time (event time drives windows), so a replay of
recorded traffic and the live store give the same figures for the same events.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from governance.contract.comparison import CANDIDATE_ROLES, ComparisonKey, WindowSnapshot
from governance.errors import InfrastructureError
from streams.fold.aggregate import AggregateConfig
from streams.fold.readout import delta_sums, metrics_from_fields, score_counts
from streams.state.store import WindowRead, WindowStore
from streams.state.windows import named_window, to_epoch_s

__all__ = [
    "DEFAULT_WINDOWS",
    "comparison_keys",
    "read_snapshot",
    "read_spans",
    "read_windows",
    "snapshot_document",
]

DEFAULT_WINDOWS: tuple[str, ...] = ("5m", "1h", "24h", "7d", "14d")

log = logging.getLogger(__name__)


def comparison_keys(store: WindowStore, model: str | None = None) -> list[ComparisonKey]:
    """The comparisons the store knows (of ``model`` only, if given); pseudo ids are left out."""
    keys = []
    for cid in store.comparisons(model):
        parts = cid.split("|")
        if len(parts) == 4 and parts[3] in CANDIDATE_ROLES:
            keys.append(ComparisonKey.from_id(cid))
    return keys


def read_snapshot(
    store: WindowStore,
    key: ComparisonKey,
    window: str,
    now: datetime | None = None,
    config: AggregateConfig | None = None,
    *,
    start: datetime | None = None,
    tests: bool = True,
    full: bool = True,
    comparison_id: str | None = None,
    latency_above_ms: Sequence[float] = (),
    kl_bounds: bool = True,
) -> WindowSnapshot:
    """One comparison over one named window (or ``[start, now)`` when ``start`` is given).

    ``tests=False`` leaves out the inputs of the statistical tests (fine score counts, delta sums), which
    only the stage gate needs; ``full=False`` leaves out the costly ranking metrics (see
    :func:`streams.fold.readout.metrics_from_fields`, also for ``latency_above_ms``).
    """
    cfg = config or AggregateConfig()
    cid = comparison_id or key.as_id()  # another id: a pseudo comparison read on behalf of ``key``
    now_s = to_epoch_s(now or _latest(store, cid) or datetime.now(UTC))
    span = (to_epoch_s(start), now_s) if start is not None else named_window(window, now_s)
    read = store.read(cid, *span, now_s)
    return _snapshot(key, window, read, cfg, tests=tests, full=full, latency_above_ms=latency_above_ms,
                     kl_bounds=kl_bounds)


def read_spans(
    store: WindowStore,
    key: ComparisonKey,
    spans: Mapping[str, tuple[datetime, datetime]],
    now: datetime,
    config: AggregateConfig | None = None,
    *,
    full: Collection[str] = (),
    kl_bounds: Collection[str] = (),
    latency_above_ms: Sequence[float] = (),
) -> dict[str, WindowSnapshot]:
    """Windows ``name -> [start, end)`` of one comparison, all from one consistent read of the store at ``now``.

    What the evaluator reads at each closed minute of event time (the trigger windows ending there); no
    test inputs; the ranking metrics only for the names in ``full``, the KL bias and standard error only
    for those in ``kl_bounds``.
    """
    cfg = config or AggregateConfig()
    names = sorted(spans)
    ranges = [(to_epoch_s(spans[name][0]), to_epoch_s(spans[name][1])) for name in names]
    reads = store.read_many(key.as_id(), ranges, to_epoch_s(now))
    return {name: _snapshot(key, name, read, cfg, tests=False, full=name in full, latency_above_ms=latency_above_ms,
                            kl_bounds=name in kl_bounds)
            for name, read in zip(names, reads, strict=True)}  # fmt: skip


def _snapshot(
    key: ComparisonKey,
    window: str,
    read: WindowRead,
    cfg: AggregateConfig,
    *,
    tests: bool = True,
    full: bool = True,
    latency_above_ms: Sequence[float] = (),
    kl_bounds: bool = True,
) -> WindowSnapshot:
    metrics, drift = metrics_from_fields(read.fields, cfg, full=full, latency_above_ms=latency_above_ms,
                                         kl_bounds=kl_bounds)
    prod_counts, cand_counts = score_counts(read.fields, cfg) if tests else (None, None)
    meta = read.meta
    return WindowSnapshot(
        key=key,
        window=window,
        start=datetime.fromtimestamp(read.plan.start_s, UTC),
        end=datetime.fromtimestamp(read.plan.end_s, UTC),
        metrics=metrics,
        feature_drift=drift,
        delta_sums=delta_sums(read.fields, cfg) if tests else None,
        score_counts_production=prod_counts,
        score_counts_candidate=cand_counts,
        latest_event_ts=datetime.fromtimestamp(meta.last_event_ms / 1000, UTC) if meta else None,
        first_event_ts=datetime.fromtimestamp(meta.first_event_ms / 1000, UTC) if meta else None,
        exact=read.plan.exact,
    )


def _latest(store: WindowStore, cid: str) -> datetime | None:
    meta = store.meta(cid)
    return None if meta is None else datetime.fromtimestamp(meta.last_event_ms / 1000, UTC)


def snapshot_document(snapshots: Iterable[WindowSnapshot]) -> list[dict[str, Any]]:
    """Group snapshots per comparison into the documented JSON shape (metrics rounded to 12 digits)."""
    out: dict[ComparisonKey, dict[str, Any]] = {}
    for snap in snapshots:
        entry = out.setdefault(snap.key, {
            "model": snap.key.model,
            "production_version": snap.key.production_version,
            "candidate_version": snap.key.candidate_version,
            "role": snap.key.role,
            "windows": {},
        })
        values: dict[str, Any] = {name: _round(value) for name, value in snap.metrics.items()}
        values["feature_drift"] = {name: _round(value) for name, value in sorted(snap.feature_drift.items())}
        values["window_start"] = snap.start.isoformat().replace("+00:00", "Z")
        values["window_end"] = snap.end.isoformat().replace("+00:00", "Z")
        entry["windows"][snap.window] = values
    return [out[k] for k in sorted(out)]


def read_windows(
    store: WindowStore,
    *,
    model: str | None = None,
    windows: Sequence[str] = DEFAULT_WINDOWS,
    now: datetime | None = None,
    config: AggregateConfig | None = None,
) -> dict[str, Any]:
    """Every comparison (of ``model``) over ``windows``, as the documented JSON document.

    The windows of one comparison come from one consistent read of the store, so a document taken while
    a worker applies batches never shows a short window newer than a long one. A comparison whose windows
    cannot be read is left out of ``comparisons`` and listed under ``errors`` (its key and why); the others
    are read as usual. A store that does not answer raises.
    """
    cfg = config or AggregateConfig()
    snaps: list[WindowSnapshot] = []
    errors: list[dict[str, Any]] = []
    for key in comparison_keys(store, model):
        cid = key.as_id()
        try:
            now_s = to_epoch_s(now or _latest(store, cid) or datetime.now(UTC))
            reads = store.read_many(cid, [named_window(window, now_s) for window in windows], now_s)
            snaps += [_snapshot(key, window, read, cfg) for window, read in zip(windows, reads, strict=True)]
        except InfrastructureError:
            raise  # the store itself does not answer: no comparison can be read
        except Exception as exc:  # this comparison's data cannot be read (e.g. an instant past year 9999)
            log.warning("cannot read the windows of %s: %s: %s", cid, type(exc).__name__, exc)
            errors.append({**_identity(key), "error": f"cannot read its windows: {type(exc).__name__}: {exc}"})
    doc: dict[str, Any] = {"comparisons": snapshot_document(snaps)}
    if errors:
        doc["errors"] = errors
    return doc


def _identity(key: ComparisonKey) -> dict[str, str]:
    return {"model": key.model, "production_version": key.production_version,
            "candidate_version": key.candidate_version, "role": key.role}  # fmt: skip


def _round(value: float | int | None) -> float | int | None:
    if value is None or isinstance(value, int):
        return value
    return round(float(value), 12)
