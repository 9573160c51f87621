"""The standing fault suite (``make reliability``): its scale, and the table every scenario adds a row to.

Collected only when ``RELIABILITY`` is ``short`` or ``full`` (``tests/conftest.py`` leaves this directory out
otherwise, so ``make test`` never runs it). Each scenario calls the ``report`` fixture once with its figures;
at the end of the session the table is printed and written as JSON (``RELIABILITY_OUT``; default
``.local/reliability/<form>.json``, and for the full form also ``benchmarks/results/reliability.json``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.kit import Row, Scale, scale_of

REPO = Path(__file__).resolve().parents[2]
_ROWS: list[Row] = []
_STARTED: dict[str, float] = {}


@pytest.fixture(scope="session")
def scale() -> Scale:
    return scale_of(os.environ.get("RELIABILITY", "short"), os.environ.get("RELIABILITY_SOAK_S"))


@pytest.fixture
def report() -> Iterator[Callable[..., Row]]:
    """``report(scenario, events=, faults=, lost=, double=, **detail)``: one row of the table (duration from the
    start of the test); call it before the final assertions, so a failing scenario still shows its figures."""
    began = time.monotonic()
    rows: list[Row] = []

    def add(scenario: str, *, events: int, faults: str, lost: int, double: int, **detail: Any) -> Row:
        row = Row(scenario, events, faults, lost, double, round(time.monotonic() - began, 1), detail)
        rows.append(row)
        _ROWS.append(row)
        return row

    yield add


def pytest_sessionstart(session: pytest.Session) -> None:
    _STARTED["t"] = time.monotonic()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    if not _ROWS:
        return
    form = os.environ.get("RELIABILITY", "short")
    table = [Row.HEADER, *[row.cells() for row in _ROWS]]
    widths = [max(len(r[i]) for r in table) for i in range(len(Row.HEADER))]
    terminalreporter.write_sep("-", f"reliability ({form})")
    for i, cells in enumerate(table):
        terminalreporter.write_line("  ".join(c.ljust(w) if j == 0 or j == 2 else c.rjust(w)
                                              for j, (c, w) in enumerate(zip(cells, widths, strict=True))))
        if i == 0:
            terminalreporter.write_line("  ".join("-" * w for w in widths))
    doc = {
        "form": form,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "passed": exitstatus == 0,
        "total_s": round(time.monotonic() - _STARTED.get("t", time.monotonic()), 1),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_1m": os.getloadavg()[0]},
        "scenarios": [row.as_dict() for row in _ROWS],
    }
    outs = [Path(os.environ["RELIABILITY_OUT"])] if os.environ.get("RELIABILITY_OUT") else [
        REPO / ".local" / "reliability" / f"{form}.json"]
    if form == "full" and not os.environ.get("RELIABILITY_OUT"):
        outs.append(REPO / "benchmarks" / "results" / "reliability.json")
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        terminalreporter.write_line(f"written: {out}")
