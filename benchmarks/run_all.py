"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``); each writes its figures to ``benchmarks/results/``.

    python benchmarks/run_all.py [--only pipeline,rollback]

The benchmarks run one after another, never together (the machine has two cores and each one measures
throughput or latency), each as its own process with the repository on ``PYTHONPATH``. A benchmark
that fails does not stop the others; the exit status is 1 if any failed. The ones that need servers
find Kafka at 127.0.0.1:9092 and Redis at redis://127.0.0.1:6379/0 by default (``make up``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def benchmarks(only: set[str] | None = None) -> list[Path]:
    """The benchmark scripts, in name order (``only``: the names after ``bench_``)."""
    found = sorted(HERE.glob("bench_*.py"))
    return [p for p in found if only is None or p.stem.removeprefix("bench_") in only]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="", help="comma-separated names, e.g. pipeline,rollback")
    args = parser.parse_args(argv)
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
        code = subprocess.run([sys.executable, str(script)], cwd=str(REPO), env=env, check=False).returncode
        timings.append((script.name, time.monotonic() - started, code))
        if code != 0:
            failed.append(script.name)
    print("\n== summary")
    for name, seconds, code in timings:
        print(f"{name:<24} {seconds:>7.1f} s  {'ok' if code == 0 else f'FAILED (exit {code})'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
