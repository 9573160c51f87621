"""The demo's live terminal view (rich): a progress bar while traffic is published, and while the demo waits for
the worker and the consumer, one line with the live window of the comparison it waits on (pairs, labels, mean
|Δ|, P99 latency of both sides) and the time waited. Stage changes and gate verdicts (with the checks that
failed) are printed above it as the audit log records them (:func:`shadowgate.commands.demo_kit.print_entry`).

On a terminal the bar and the line redraw in place and vanish when done; when the output is not a terminal
(a log, a test) nothing of them is written, so the transcript stays the story alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

__all__ = ["View"]


class View:
    """Progress for one demo run; ``windows`` reads the live 5m window of a comparison (or None)."""

    def __init__(self, windows: Callable[[str, str], dict[str, Any] | None]) -> None:
        self.console = Console(highlight=False)
        self.windows = windows

    def _progress(self, *columns: Any) -> Progress:
        return Progress(*columns, console=self.console, transient=True, redirect_stdout=True, redirect_stderr=True)

    @contextmanager
    def publishing(self, requests: int, what: str) -> Iterator[Callable[[int], None]]:
        """A bar of the requests served so far; yields the ``on_tick`` for :meth:`Service.burst`."""
        with self._progress(TextColumn("    [cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn()) as progress:
            task = progress.add_task(what, total=requests)
            yield lambda done: progress.update(task, completed=min(done, requests))

    @contextmanager
    def waiting(self, what: str, candidate: str, role: str) -> Iterator[Callable[[], None]]:
        """A line with the live window of ``candidate``'s comparison; yields the ``on_tick`` for ``Audit.wait``."""
        with self._progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as progress:
            task = progress.add_task(f"waiting: {what}")
            last = [0.0]

            def tick() -> None:
                if time.monotonic() - last[0] < 1.0:
                    return
                last[0] = time.monotonic()
                w = self.windows(candidate, role)
                if w is not None:
                    progress.update(task, description=f"{what} | 5m {candidate}: {_n(w.get('sample_count'))} pairs, "
                                    f"{_n(w.get('label_count'))} labels, mean|Δ| {_f(w.get('mean_abs_delta'))}, "
                                    f"P99 {_f(w.get('p99_latency_ms'))}/{_f(w.get('production_p99_latency_ms'))} ms")

            yield tick


def _n(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"
