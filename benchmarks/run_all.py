"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``); each writes its figures to ``benchmarks/results/``.

    python benchmarks/run_all.py [--only pipeline,rollback] [--no-readme]
    BENCH_QUICK=1 python benchmarks/run_all.py      (make bench-quick: smaller sizes, results/quick/, no README)

The benchmarks run one after another, never together (the machine has two cores and each one measures
throughput or latency), each as its own process with the repository on ``PYTHONPATH``. A benchmark
that fails does not stop the others; the exit status is 1 if any failed. The ones that need servers
find Kafka at 127.0.0.1:9092 and Redis at redis://127.0.0.1:6379/0 by default (``make up``).

At the end it prints ONE table of the figures of this run (:mod:`summary`: every ratio is taken within
this run, from the result files it wrote), and, after a full run (every benchmark, none failed, not
quick), writes that table into the README between its ``bench-table`` markers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from summary import README, rows, table, write_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def benchmarks(only: set[str] | None = None) -> list[Path]:
    """The benchmark scripts, in name order (``only``: the names after ``bench_``)."""
    found = sorted(HERE.glob("bench_*.py"))
    return [p for p in found if only is None or p.stem.removeprefix("bench_") in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="", help="comma-separated names, e.g. pipeline,rollback")
    parser.add_argument("--no-readme", action="store_true", help="print the table but leave the README as it is")
    args = parser.parse_args(argv)
    quick = os.environ.get("BENCH_QUICK") == "1"
    results = HERE / "results" / "quick" if quick else HERE / "results"
    results.mkdir(parents=True, exist_ok=True)
    run_started = time.time()
    only = {name.strip() for name in args.only.split(",") if name.strip()} or None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    scripts = benchmarks(only)
    if not scripts:
        names = [p.stem.removeprefix("bench_") for p in benchmarks()]
        print(f"no benchmark named {sorted(only or [])}: choose from {names}", file=sys.stderr)
        return 1
    failed: list[str] = []
    timings: list[tuple[str, float, int]] = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        out = results / f"{script.stem.removeprefix('bench_')}.json"
        cmd = [sys.executable, str(script), "--out", str(out)]
        code = subprocess.run(cmd, cwd=str(REPO), env=env, check=False).returncode
        timings.append((script.name, time.monotonic() - started, code))
        if code != 0:
            failed.append(script.name)
    print("\n== summary")
    for name, seconds, code in timings:
        print(f"{name:<24} {seconds:>7.1f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    found = rows(results, since=run_started)
    print(f"\n== figures of this run{' (BENCH_QUICK: small sizes, not for the README)' if quick else ''}\n")
    print(table(found))
    if only is None and not failed and not quick and not args.no_readme:
        write_readme(README, table(found))
        print(f"\nwrote the table into {README.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
