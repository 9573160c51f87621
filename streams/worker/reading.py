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
from typing import Any, Protocol

from governance.contract.comparison import CANDIDATE_ROLES, ComparisonKey, WindowSnapshot
from governance.errors import InfrastructureError
from streams.fold.aggregate import AggregateConfig
from streams.fold.readout import delta_sums, metrics_from_fields, score_counts
from streams.state.store import ComparisonMeta, ReadRequest, WindowRead, WindowStore
from streams.state.windows import named_window, to_epoch_s

__all__ = [
    "DEFAULT_WINDOWS",
    "ReadAhead",
    "WindowReader",
    "comparison_keys",
    "read_snapshot",
    "read_spans",
    "snapshot_request",
    "spans_request",
    "read_windows",
    "snapshot_document",
]

DEFAULT_WINDOWS: tuple[str, ...] = ("5m", "1h", "24h", "7d", "14d")

log = logging.getLogger(__name__)


class WindowReader(Protocol):
    """What reading a comparison's windows needs of a store: a :class:`WindowStore`, or a :class:`ReadAhead`."""

    def meta(self, comparison_id: str) -> ComparisonMeta | None: ...

    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]: ...


class ReadAhead:
    """Reads of many comparisons fetched ahead in a few round trips, served to the code that planned them.

    The evaluation round plans every window read of every comparison it evaluates (the same requests
    :func:`snapshot_request` and :func:`spans_request` make for the direct reads), fetches them with ONE
    :meth:`WindowStore.read_batch` and the metas with ONE :meth:`WindowStore.metas`, then evaluates each
    comparison as it would against the store: a request fetched ahead is answered from the batch (the same
    :class:`WindowRead` the store would give, each request from one consistent state), any other goes to
    the store. The results are therefore those of the direct reads; only the
    number of round trips differs. Lives for one round: it holds what it fetched.
    """

    def __init__(self, store: WindowStore, metas: Mapping[str, ComparisonMeta | None] | None = None) -> None:
        self.store = store
        self._metas: dict[str, ComparisonMeta | None] = dict(metas or {})
        self._reads: dict[ReadRequest, list[WindowRead]] = {}

    def fetch_metas(self, comparison_ids: Iterable[str]) -> None:
        """Fetch the metas of the ids not fetched yet, in one batch."""
        wanted = [cid for cid in dict.fromkeys(comparison_ids) if cid not in self._metas]
        if wanted:
            self._metas.update(zip(wanted, self.store.metas(wanted), strict=True))

    def fetch(self, requests: Iterable[ReadRequest]) -> None:
        """Fetch the window reads of ``requests`` not fetched yet, in one batch."""
        wanted = [request for request in dict.fromkeys(requests) if request not in self._reads]
        if wanted:
            self._reads.update(zip(wanted, self.store.read_batch(wanted), strict=True))

    def meta(self, comparison_id: str) -> ComparisonMeta | None:
        if comparison_id in self._metas:
            return self._metas[comparison_id]
        return self.store.meta(comparison_id)

    def read_many(self, comparison_id: str, ranges: Sequence[tuple[int, int]], now_s: int) -> list[WindowRead]:
        reads = self._reads.get((comparison_id, tuple(ranges), now_s))
        if reads is not None:
            return reads
        return self.store.read_many(comparison_id, ranges, now_s)


def snapshot_request(comparison_id: str, window: str, now: datetime, start: datetime | None = None) -> ReadRequest:
    """The store read :func:`read_snapshot` makes for ``window`` at ``now`` (``[start, now)`` if ``start``)."""
    now_s = to_epoch_s(now)
    span = (to_epoch_s(start), now_s) if start is not None else named_window(window, now_s)
    return comparison_id, (span,), now_s


def spans_request(
    comparison_id: str, spans: Mapping[str, tuple[datetime, datetime]], now: datetime
) -> tuple[list[str], ReadRequest]:
    """The window names in the order :func:`read_spans` reads them, and the store read it makes."""
    names = sorted(spans)
    ranges = tuple((to_epoch_s(spans[name][0]), to_epoch_s(spans[name][1])) for name in names)
    return names, (comparison_id, ranges, to_epoch_s(now))


def comparison_keys(store: WindowStore, model: str | None = None) -> list[ComparisonKey]:
    """The comparisons the store knows (of ``model`` only, if given); pseudo ids are left out."""
    keys = []
    for cid in store.comparisons(model):
        parts = cid.split("|")
        if len(parts) == 4 and parts[3] in CANDIDATE_ROLES:
            keys.append(ComparisonKey.from_id(cid))
    return keys


def read_snapshot(
    store: WindowReader,
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
    _, ranges, now_s = snapshot_request(cid, window, now or _latest(store, cid) or datetime.now(UTC), start)
    read = store.read_many(cid, ranges, now_s)[0]
    return _snapshot(key, window, read, cfg, tests=tests, full=full, latency_above_ms=latency_above_ms,
                     kl_bounds=kl_bounds)


def read_spans(
    store: WindowReader,
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
    names, (cid, ranges, now_s) = spans_request(key.as_id(), spans, now)
    reads = store.read_many(cid, ranges, now_s)
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


def _latest(store: WindowReader, cid: str) -> datetime | None:
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
