"""The evidence report's plots, drawn with matplotlib (object API, Agg canvas, no pyplot state) as inline SVG.

Each function takes plain numbers and returns one ``<svg ...>...</svg>`` element: text kept as text
(``svg.fonttype = none``, so the report stays searchable and small) and ids made deterministic
(``svg.hashsalt``), so the same evidence renders the same bytes. Titles and labels are given by the caller;
matplotlib writes them as XML-escaped text.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["bars", "calibration", "delta_histogram", "score_histograms"]

_RC: dict[str, Any] = {"svg.fonttype": "none", "svg.hashsalt": "shadowgate-report", "font.size": 9.0,
       "axes.spines.top": False, "axes.spines.right": False}
_CANDIDATE, _PRODUCTION, _LIMIT = "#1f6feb", "#8b949e", "#d1242f"


def _svg(draw: Callable[[Axes], None]) -> str:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        figure = Figure(figsize=(6.4, 2.8), layout="constrained")
        draw(figure.add_subplot())
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def delta_histogram(counts: npt.NDArray[np.int64], limits: Sequence[tuple[str, float]], title: str) -> str:
    """|Δ| histogram (``counts`` equal-width bins on [0, 1], regrouped to about 60 bars over the range shown) with
    vertical limit lines."""
    upper = min(1.0, max(0.02, max((v for _, v in limits), default=0.0) * 1.15, _upper_quantile(counts, 0.999)))
    factor = max(1, round(upper * counts.size / 60))
    while counts.size % factor:
        factor -= 1
    grouped = counts.reshape(-1, factor).sum(axis=1)
    edges = np.linspace(0.0, 1.0, grouped.size + 1)

    def draw(ax: Axes) -> None:
        ax.stairs(grouped, edges, fill=True, color=_CANDIDATE, alpha=0.75, label="pairs")
        for label, value in limits:
            ax.axvline(value, color=_LIMIT, linestyle="--", linewidth=1.0)
            ax.annotate(label, (value, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=7, color=_LIMIT)
        ax.set_xlim(0.0, upper)
        ax.set_xlabel("|candidate score − production score|")
        ax.set_ylabel("pairs")
        ax.set_title(title, loc="left")

    return _svg(draw)


def _upper_quantile(counts: npt.NDArray[np.int64], q: float) -> float:
    total = int(counts.sum())
    if total == 0:
        return 0.0
    index = int(np.searchsorted(np.cumsum(counts), q * total))
    return (index + 1) / counts.size


def score_histograms(production: npt.NDArray[np.int64], candidate: npt.NDArray[np.int64], title: str) -> str:
    """The two score distributions (equal-width bins on [0, 1]) as shares, production and candidate."""
    edges = np.linspace(0.0, 1.0, production.size + 1)

    def draw(ax: Axes) -> None:
        for counts, name, color in ((production, "production", _PRODUCTION), (candidate, "candidate", _CANDIDATE)):
            total = counts.sum()
            share = counts / total if total else counts.astype(float)
            ax.stairs(share, edges, label=f"{name} (n={int(total):,})", color=color, linewidth=1.6)
        ax.set_xlabel("score")
        ax.set_ylabel("share of pairs")
        ax.set_title(title, loc="left")
        ax.legend(frameon=False)

    return _svg(draw)


def calibration(curves: Sequence[tuple[str, npt.NDArray[np.float64], npt.NDArray[np.float64]]], title: str) -> str:
    """Reliability diagram: observed positive rate against mean predicted score, one curve per side."""

    def draw(ax: Axes) -> None:
        ax.plot([0, 1], [0, 1], color="#57606a", linestyle=":", linewidth=1.0, label="perfectly calibrated")
        for (name, predicted, observed), color in zip(curves, (_PRODUCTION, _CANDIDATE), strict=False):
            ax.plot(predicted, observed, marker="o", markersize=3, color=color, label=name)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted score")
        ax.set_ylabel("observed rate of label 1")
        ax.set_title(title, loc="left")
        ax.legend(frameon=False)

    return _svg(draw)


def bars(names: Sequence[str], values: Sequence[float], limit: float | None, title: str, xlabel: str) -> str:
    """Horizontal bars (e.g. drift per feature) with a vertical limit line."""

    def draw(ax: Axes) -> None:
        positions = np.arange(len(names))
        colors = [_LIMIT if limit is not None and v >= limit else _CANDIDATE for v in values]
        ax.barh(positions, values, color=colors)
        ax.set_yticks(positions, labels=list(names))
        if limit is not None:
            ax.axvline(limit, color=_LIMIT, linestyle="--", linewidth=1.0, label=f"limit {limit:g}")
            ax.legend(frameon=False)
        ax.set_xlim(0.0, max([*values, limit or 0.0]) * 1.2 or 1.0)
        ax.set_xlabel(xlabel)
        ax.set_title(title, loc="left")

    return _svg(draw)
