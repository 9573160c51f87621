"""Helpers of the standing fault suite: its two scales, the rows of its table, the final exact comparison, and the
hostile messages (worker inputs) it sends."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tests.worker_kit import WorkerEnv, counts, diff, replay, replay_file, windows

__all__ = ["Row", "Scale", "compare_with_replay", "hostile_worker_messages", "rss_kib", "scale_of", "settle"]


@dataclass(frozen=True)
class Scale:
    """How big each scenario is: ``full`` is the issue's figures, ``short`` the CI form (a few minutes in all)."""

    form: str
    kill_events: int  # events (2 scores + 1 label per pair) through 2 workers while they are SIGKILLed
    kills: int
    server_events: int  # per server scenario (Redis, Kafka)
    rival_events: int
    hostile: int  # hostile messages, worker and governance inputs together
    hostile_pairs: int  # valid pairs among them
    flood: int  # junk messages on the governance inputs
    soak_s: float
    soak_pairs_per_s: float


def scale_of(form: str, soak_s: str | None = None) -> Scale:
    """The scale of ``form`` (``short`` or ``full``); ``soak_s`` overrides the soak's length."""
    if form == "full":
        scale = Scale("full", kill_events=500_001, kills=5, server_events=150_000, rival_events=60_000,
                      hostile=100_000, hostile_pairs=20_000, flood=10_000, soak_s=600.0, soak_pairs_per_s=200.0)
    elif form == "short":
        scale = Scale("short", kill_events=30_000, kills=3, server_events=12_000, rival_events=6_000,
                      hostile=10_000, hostile_pairs=3_000, flood=10_000, soak_s=20.0, soak_pairs_per_s=200.0)
    else:
        raise ValueError(f"RELIABILITY={form!r}: use short or full")
    if soak_s:
        scale = Scale(**{**scale.__dict__, "soak_s": float(soak_s)})
    return scale


@dataclass
class Row:
    """One scenario's figures."""

    HEADER = ("scenario", "events", "faults injected", "lost", "double counted", "duration s")

    scenario: str
    events: int
    faults: str
    lost: int
    double: int
    duration_s: float
    detail: dict[str, Any] = field(default_factory=dict)

    def cells(self) -> tuple[str, ...]:
        return (self.scenario, f"{self.events:,}", self.faults, str(self.lost), str(self.double),
                f"{self.duration_s:.0f}")

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "events": self.events, "faults": self.faults, "lost": self.lost,
                "double_counted": self.double, "duration_s": self.duration_s, **self.detail}


def _totals(doc: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {c["model"]: counts(doc, c["model"]) for c in doc["comparisons"]}


def settle(env: WorkerEnv, expected: dict[str, tuple[int, int]], timeout_s: float, stall_s: float = 90.0
           ) -> dict[str, Any]:  # fmt: skip
    """The live windows once they hold ``expected`` (sample_count, label_count) per model and two reads agree;
    or, when they stop changing for ``stall_s`` (or ``timeout_s`` passed), the last read as it is: the caller
    counts what is missing or extra instead of failing blind."""
    deadline, last, last_change = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:  # read in this process while the counts move (a CLI start takes seconds)
        doc = _read(env)
        if _totals(doc) == expected or (doc == last and time.monotonic() - last_change > stall_s):
            break
        if doc != last:
            last, last_change = doc, time.monotonic()
        crashed = [p.pid for p in env.procs if p not in env.killed and p.poll() is not None]
        if crashed:
            raise AssertionError(f"workers {crashed} exited\n{env.tail()}")
        time.sleep(0.5)
    last = windows(env)  # then `shadowgate windows` itself, until two reads agree
    while time.monotonic() < deadline + 60:
        doc = windows(env)
        if doc == last:
            return doc
        last = doc
    return last


def _read(env: WorkerEnv) -> dict[str, Any]:
    """What ``shadowgate windows --json`` prints, read in this process ({"comparisons": []} while Redis is down)."""
    import redis

    from streams.state.redis_store import RedisWindowStore
    from streams.worker.reading import DEFAULT_WINDOWS, read_windows

    store = RedisWindowStore.from_url(env.redis_url, prefix=env.prefix)
    try:
        return orjson.loads(orjson.dumps(read_windows(store, windows=DEFAULT_WINDOWS), default=str))  # type: ignore[no-any-return]
    except redis.RedisError:
        return {"comparisons": []}
    finally:
        store.close()


def compare_with_replay(env: WorkerEnv, tmp_path: Path, events: list[dict[str, Any]], invalid: list[bytes],
                        timeout_s: float) -> tuple[int, int, dict[str, Any], list[str]]:  # fmt: skip
    """Replay the same events offline, settle the live windows on the replay's counts, and compare exactly:
    (lost, double counted, the replay document, the differences). Lost and double are counted in samples and
    labels per model: what the replay has and the live windows lack, and the reverse."""
    offline = replay(env, replay_file(tmp_path / "traffic.jsonl", events, invalid))
    expected = _totals(offline)
    live = settle(env, expected, timeout_s)
    got = _totals(live)
    lost = double = 0
    for model in set(expected) | set(got):
        for want, have in zip(expected.get(model, (0, 0)), got.get(model, (0, 0)), strict=True):
            lost += max(0, want - have)
            double += max(0, have - want)
    return lost, double, offline, diff(live["comparisons"], offline["comparisons"])


def rss_kib(pid: int) -> int:
    """Resident set size of a process (KiB), from /proc (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def paced(seconds: float) -> None:
    """Wait ``seconds`` (a fault's length or a publishing pace, not a synchronisation)."""
    threading.Event().wait(seconds)


# ------------------------------------------------------------------------------------------- hostile messages


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def hostile_worker_messages(n: int, ts: datetime, seed: int = 5) -> list[tuple[str, str, bytes]]:
    """``n`` hostile messages for the worker: (kind, "scores" | "labels", value), every kind a dead letter; those
    that carry a believable time carry ``ts``.

    None holds a newline (the replay file is JSON lines). Three are over-size (1.5 MiB, compressible: the
    broker takes them compressed, the dead-letter producer refuses them, so they become references)."""
    import random

    rng = random.Random(seed)
    when = _iso(ts)

    def score(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"request_id": f"h-{rng.getrandbits(48):x}", "model": "fraud-risk",
                                "version": "1.4.0", "role": "production", "score": 0.25, "latency_ms": 12.0,
                                "ts": when}
        base.update(changes)
        return {k: v for k, v in base.items() if v is not _DROP}

    def label(**changes: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"request_id": f"h-{rng.getrandbits(48):x}", "model": "fraud-risk", "label": 1,
                                "ts": when}
        base.update(changes)
        return base

    def dumps(doc: Any) -> bytes:
        return orjson.dumps(doc)

    def junk() -> bytes:
        # Starts with a byte that is not whitespace: the replay skips blank lines (a whitespace-only message is
        # a dead letter live, and nothing at all in a JSON-lines file).
        return b"\x00" + bytes(b for b in os.urandom(rng.randint(1, 300)) if b not in (10, 13))

    nested = "[" * 2000 + "]" * 2000
    kinds: dict[str, tuple[str, Any]] = {
        "not JSON": ("scores", lambda: b"this is {not json"),
        "truncated JSON": ("scores", lambda: dumps(score())[:37]),
        "binary junk": ("scores", junk),
        "invalid UTF-8": ("scores", lambda: b'{"model": "\xff\xfe\xfd", "score": 0.1}'),
        "JSON null": ("scores", lambda: b"null"),
        "JSON array": ("scores", lambda: b"[1, 2, 3]"),
        "JSON string": ("scores", lambda: b'"a string"'),
        "score of the wrong type": ("scores", lambda: dumps(score(score="high"))),
        "latency of the wrong type": ("scores", lambda: dumps(score(latency_ms=[1, 2]))),
        "missing request_id": ("scores", lambda: dumps(score(request_id=_DROP))),
        "unknown field": ("scores", lambda: dumps(score(admin=True))),
        "NaN": ("scores", lambda: dumps(score()).replace(b'"score":0.25', b'"score":NaN')),
        "Infinity": ("scores", lambda: dumps(score()).replace(b'"latency_ms":12.0', b'"latency_ms":1e999')),
        "score out of range": ("scores", lambda: dumps(score(score=1e308))),
        "negative latency": ("scores", lambda: dumps(score(latency_ms=-3.5))),
        "huge request_id": ("scores", lambda: dumps(score(request_id="r" * 5_000))),
        "huge error text": ("scores", lambda: dumps(score(error="e" * 5_000))),
        "hostile model name": ("scores", lambda: dumps(score(model="../../etc/passwd"))),
        "unknown role": ("scores", lambda: dumps(score(role="champion"))),
        "too many features": ("scores", lambda: dumps(score(features={f"f{i}": i for i in range(300)}))),
        "deeply nested value": ("scores", lambda: dumps(score()).replace(b'"score":0.25', b'"score":' +
                                                                            nested.encode())),
        "far-future ts": ("scores", lambda: dumps(score(ts="2100-01-01T00:00:00Z"))),
        "far-past ts": ("scores", lambda: dumps(score(ts="1970-01-01T00:00:00Z"))),
        "year 9999 ts": ("scores", lambda: dumps(score(ts="9999-12-31T23:59:59Z"))),
        "ts offset out of UTC range": ("scores", lambda: dumps(score(ts="0001-01-01T00:00:00+14:00"))),
        "naive ts": ("scores", lambda: dumps(score(ts=when.rstrip("Z")))),
        "ts not a date": ("scores", lambda: dumps(score(ts="yesterday"))),
        "envelope with one bad event": ("scores", lambda: dumps({"events": [score(), score(score=-1)]})),
        "empty envelope": ("scores", lambda: dumps({"events": []})),
        "label not 0/1": ("labels", lambda: dumps(label(label=2))),
        "label a boolean": ("labels", lambda: dumps(label(label=True))),
        "label far-future": ("labels", lambda: dumps(label(ts="2100-01-01T00:00:00Z"))),
    }
    names = list(kinds)
    out: list[tuple[str, str, bytes]] = []
    oversize = 3 if n >= 1000 else 0
    for i in range(n - oversize):
        kind = names[i % len(names)]
        topic, make = kinds[kind]
        value = make()
        assert b"\n" not in value and b"\r" not in value, kind
        out.append((kind, topic, value))
    for _ in range(oversize):
        out.append(("over-size (1.5 MiB)", "scores",
                    b'{"model":"fraud-risk","ts":"' + when.encode() + b'","pad":"' + b"a" * 1_500_000 + b'"}'))
    rng.shuffle(out)
    return out


class _Drop:
    pass


_DROP: Any = _Drop()
