"""`pip install shadowgate` is the light SDK: a wheel built without a Rust compiler, installed into a fresh venv
with only its declared dependencies, publishes to the real broker with neither Faust, numpy, scipy, Redis nor
pqcrypto present; the console script then names the extra it lacks instead of printing a traceback."""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from governance.contract.wire import decode_label, decode_scores
from shadowgate.launcher import EXTRA_OF
from shadowgate.partitioner import partition_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("faust", "numpy", "scipy", "redis", "pqcrypto", "aiokafka", "msgspec", "click", "yaml", "streams._native")

_SCRIPT = r"""
import asyncio, importlib.util, sys
from datetime import UTC, datetime

bootstrap, scores, labels = sys.argv[1:4]
present = [m for m in sys.argv[4].split(",") if importlib.util.find_spec(m.split(".")[0]) is not None
           and (m != "streams._native" or importlib.util.find_spec(m) is not None)]
assert not present, f"the light install brought in {present}"

import shadowgate
assert shadowgate.__file__.startswith(sys.prefix), f"shadowgate imported from {shadowgate.__file__}, not the venv"
from shadowgate import AsyncScorePublisher, LabelPublisher, ScorePublisher

ts = datetime(2026, 11, 1, tzinfo=UTC)
def score(rid, role, version):
    return {"request_id": rid, "model": "fraud", "version": version, "role": role, "score": 0.5,
            "latency_ms": 3.0, "ts": ts}

with ScorePublisher(bootstrap, scores, batch_size=10) as pub:
    for i in range(20):
        pub.publish(score(f"sync-{i}", "production", "1.0.0"))
        pub.publish(score(f"sync-{i}", "shadow", "1.1.0"))
assert pub.stats.delivered == 40, pub.stats

async def main():
    async with AsyncScorePublisher(bootstrap, scores, batch_size=10) as apub:
        await apub.publish_many([score(f"async-{i}", r, v) for i in range(20)
                                 for r, v in (("production", "1.0.0"), ("shadow", "1.1.0"))])
        return apub.stats.delivered
assert asyncio.run(main()) == 40

with LabelPublisher(bootstrap, labels) as lab:
    for prefix in ("sync", "async"):
        for i in range(20):
            lab.publish({"request_id": f"{prefix}-{i}", "model": "fraud", "label": i % 2, "ts": ts})
print("published", pub.stats.delivered + 40, "scores and", lab.stats.delivered, "labels")
"""


def _run(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _sources(dest: Path) -> Path:
    """The package sources as the image's build stage copies them (no build output, no built extension)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("target", "__pycache__", "*.so", "*.egg-info", "build")
    for name in ("governance", "streams", "shadowgate", "native"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest


def test_the_sdk_installs_without_a_compiler_and_publishes(  # type: ignore[no-untyped-def]
    tmp_path: Path, kafka_bootstrap: str, make_topic, unique: str
) -> None:
    src = _sources(tmp_path / "src")
    # No cargo on PATH (rustup puts it in ~/.cargo/bin): the native core is optional, so the build succeeds.
    no_rust = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert shutil.which("cargo", path=no_rust["PATH"]) is None, "cargo is on the system PATH: cannot test this"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "dist", src, env=no_rust)
    (wheel,) = (tmp_path / "dist").glob("shadowgate-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert not [n for n in names if n.endswith(".so")]  # no extension was compiled
        # the package data every process finds wherever it runs (the image has no copy of the repository)
        assert {"governance/policy/default_policy.yaml", "governance/policy/feature_catalog.yaml",
                "streams/state/apply_batch.lua", "shadowgate/web/static/index.html"} <= names  # fmt: skip
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(zf.read(meta_name).decode())
    requires = meta.get_all("Requires-Dist") or []
    base = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in base) == [
        "confluent-kafka", "orjson", "pydantic", "pydantic-settings"]
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"routing", "governance", "worker", "all"} <= extras and set(EXTRA_OF.values()) <= extras

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # no system site-packages: only what is installed here exists
    python = env_dir / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)
    _run(python, "-m", "pip", "install", "-q", *base)

    scores, labels = make_topic("scores", partitions=3), make_topic("labels", partitions=3)
    out = _run(python, "-c", _SCRIPT, kafka_bootstrap, scores, labels, ",".join(HEAVY), timeout=120, cwd=tmp_path)
    assert "published 80 scores and 40 labels" in out.stdout

    # The console script of a light install: one line naming the extra, exit 2.
    cli = subprocess.run([env_dir / "bin" / "shadowgate", "worker", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)  # fmt: skip
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "pip install 'shadowgate[governance]'" in cli.stderr, cli.stderr

    # What the venv published, read back here: every request's scores and label on the partition of its id.
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique, "auto.offset.reset": "earliest"})
    consumer.subscribe([scores, labels])
    where: dict[str, set[int]] = {}
    seen = 0
    deadline = time.monotonic() + 60
    try:
        while seen < 120 and time.monotonic() < deadline:
            for m in consumer.consume(num_messages=500, timeout=1.0):
                assert m.error() is None, m.error()
                events = decode_scores(m.value()) if m.topic() == scores else [decode_label(m.value())]
                for ev in events:
                    where.setdefault(ev.request_id, set()).add(m.partition())
                    seen += 1
    finally:
        consumer.close()
    assert seen == 120 and len(where) == 40
    assert all(parts == {partition_for(rid.encode(), 3)} for rid, parts in where.items())
