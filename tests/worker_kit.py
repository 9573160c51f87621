"""Running real ``shadowgate worker`` processes against per-test topics, Redis prefix and keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from governance.contract.settings import Settings, Topics
from governance.contract.topics import ensure_topics, topic_specs

REPO = Path(__file__).resolve().parent.parent


@dataclass
class WorkerEnv:
    """Settings for one test: every topic, prefix and group carries the test's unique token."""

    kafka_bootstrap: str
    redis_url: str
    unique: str
    keys_dir: Path
    partitions: int = 4
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    killed: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        u = self.unique
        return Topics(scores=f"scores.{u}", labels=f"labels.{u}", dlq=f"dlq.{u}", gates=f"gates.{u}",
                      rollbacks=f"rollbacks.{u}", alerts=f"alerts.{u}", approvals=f"approvals.{u}",
                      commands=f"commands.{u}", lifecycle=f"lifecycle.{u}", routing=f"routing.{u}")

    @property
    def prefix(self) -> str:
        return f"t{self.unique}"

    def settings(self) -> Settings:
        return Settings(kafka_bootstrap=self.kafka_bootstrap, redis_url=self.redis_url,  # type: ignore[arg-type]
                        redis_prefix=self.prefix, topics=self.topics, consumer_group=f"g-{self.unique}",
                        metrics_port=0)

    def env(self) -> dict[str, str]:
        t = self.topics
        env = dict(os.environ)
        env.update({
            "SHADOWGATE_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "SHADOWGATE_REDIS_URL": self.redis_url,
            "SHADOWGATE_REDIS_PREFIX": self.prefix,
            "SHADOWGATE_CONSUMER_GROUP": f"g-{self.unique}",
            "SHADOWGATE_METRICS_PORT": "0",
            "SHADOWGATE_KEYS_DIR": str(self.keys_dir),
            "PYTHONPATH": str(REPO),
        })
        for name, value in t.model_dump().items():
            env[f"SHADOWGATE_TOPICS__{name.upper()}"] = value
        return env

    def create_topics(self) -> None:
        ensure_topics(self.kafka_bootstrap, topic_specs(self.settings(), self.partitions))

    def start_worker(
        self, log_dir: Path, *, metrics_port: int = 0, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``shadowgate worker`` (``metrics_port``: its /metrics, /healthz and /readyz; ``extra_env``:
        more SHADOWGATE_* settings, e.g. ``SHADOWGATE_INSTANCE_ID``)."""
        log = log_dir / f"worker-{len(self.procs)}.log"
        self.logs.append(log)
        env = {**self.env(), "SHADOWGATE_METRICS_PORT": str(metrics_port), **(extra_env or {})}
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "shadowgate", "worker", "--loglevel", "warning"],
                env=env, cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        self.killed.append(proc)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(30)

    def stop_all(self) -> None:
        """Stop every worker (SIGTERM; SIGKILL after 30 s); more may be started afterwards."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            if proc not in self.killed:
                self.killed.append(proc)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "shadowgate", *args], env=self.env(), cwd=str(REPO), capture_output=True,
            timeout=timeout, check=False,
        )

    def tail(self) -> str:
        return "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs if log.exists())


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, env: WorkerEnv | None = None,
             every_s: float = 0.5) -> Any:  # fmt: skip
    """Poll ``predicate`` every ``every_s`` until it is truthy (its value) or ``timeout_s`` passed (AssertionError,
    with the workers' logs); fails at once when a worker of ``env`` exits."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if env is not None and any(proc.poll() is not None for proc in env.procs if proc not in env.killed):
            raise AssertionError(f"a worker exited while waiting for {what}\n{env.tail()}")
        last = predicate()
        if last:
            return last
        time.sleep(every_s)
    detail = env.tail() if env is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})\n{detail}")


def jsonl(events: Iterator[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


# -- shared by the end-to-end and fault tests ----------------------------------------------------------------


def make_env(kafka_bootstrap: str, redis_url: str, unique: str, tmp_path: Path, partitions: int = 4) -> WorkerEnv:
    """A WorkerEnv with a fresh keyring and its topics created."""
    from datetime import UTC, datetime

    from governance.crypto import Keyring

    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    env = WorkerEnv(kafka_bootstrap, redis_url, unique, keys, partitions=partitions)
    env.create_topics()
    return env


def traffic(pairs: int, *, minutes_ago: float = 20.0, span_s: float = 600.0, seed: int = 11,
            **spec: Any) -> list[dict[str, Any]]:  # fmt: skip
    """Synthetic events (with ``kind``) from ``minutes_ago`` on, over ``span_s`` of event time."""
    from datetime import UTC, datetime, timedelta

    from shadowgate.traffic import TrafficSpec, generate

    start = (datetime.now(UTC) - timedelta(minutes=minutes_ago)).replace(microsecond=0)
    spec.setdefault("label_delay_s", 30.0)
    return list(generate(TrafficSpec(pairs=pairs, start=start, rate_per_s=pairs / span_s, seed=seed, **spec)))


def publish(env: WorkerEnv, events: list[dict[str, Any]], invalid: Iterable[bytes] = (), batch_size: int = 200,
            producer_config: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Publish events with the SDK (labels to the labels topic), then raw ``invalid`` messages to scores."""
    from confluent_kafka import Producer

    from shadowgate.sdk import LabelPublisher, ScorePublisher

    t = env.topics
    with ScorePublisher(env.kafka_bootstrap, t.scores, batch_size=batch_size) as scores, \
            LabelPublisher(env.kafka_bootstrap, t.labels) as labels:
        for event in events:
            body = dict(event)
            if body.pop("kind") == "score":
                scores.publish(body)
            else:
                labels.publish(body)
    raws = list(invalid)
    if raws:
        producer = Producer({"bootstrap.servers": env.kafka_bootstrap, **(producer_config or {})})
        for raw in raws:
            producer.produce(t.scores, key=b"bad", value=raw)
        assert producer.flush(60) == 0


def replay_file(path: Path, events: list[dict[str, Any]], invalid: Iterable[bytes] = ()) -> Path:
    """The JSON-lines file ``shadowgate replay`` reads for the same events (and invalid lines)."""
    body = [{k: v for k, v in e.items() if k != "kind"} for e in events]
    path.write_bytes(jsonl(iter(body)) + b"".join(raw + b"\n" for raw in invalid))
    return path


def replay(env: WorkerEnv, path: Path, *args: str) -> dict[str, Any]:
    out = env.cli("replay", str(path), "--json", *args)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def windows(env: WorkerEnv) -> dict[str, Any]:
    """``shadowgate windows --json`` of the env's prefix."""
    out = env.cli("windows", "--json")
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    return orjson.loads(out.stdout)  # type: ignore[no-any-return]


def counts(doc: dict[str, Any], model: str | None = None) -> tuple[int, int]:
    """(sample_count, label_count) of the first comparison (of ``model``) over 24 h."""
    comps = [c for c in doc["comparisons"] if model is None or c["model"] == model]
    if not comps:
        return 0, 0
    w = comps[0]["windows"]["24h"]
    return w["sample_count"], w["label_count"]


def settled(env: WorkerEnv, expected: tuple[int, int], what: str, model: str | None = None,
            timeout_s: float = 240) -> dict[str, Any]:  # fmt: skip
    """The windows once every event is folded: two reads in a row, the first already complete, that agree.

    One ``shadowgate windows`` call reads its windows one after another (5m first), so a call made while
    the last batch lands can show a 5m window older than its 24h one; only a read begun after the last
    apply is the final figure.
    """
    seen: list[tuple[int, int]] = [(0, 0)]

    def complete() -> bool:
        seen[0] = counts(windows(env), model)
        return seen[0] == expected

    try:
        wait_for(complete, timeout_s, what, env)
    except AssertionError as exc:
        raise AssertionError(f"(sample_count, label_count) {seen[0]}, expected {expected}: {exc}") from None
    last = [windows(env)]

    def stable() -> dict[str, Any] | None:
        doc = windows(env)
        same, last[0] = doc == last[0], doc
        return doc if same else None

    return wait_for(stable, 60, f"{what}: two equal reads", env)  # type: ignore[no-any-return]


def live_counts(env: WorkerEnv, model: str = "fraud-risk") -> tuple[int, int]:
    """(sample_count, label_count) over 24 h read straight from Redis (no CLI start: fast; (0, 0) while
    Redis is down)."""
    import redis

    from streams.state.redis_store import RedisWindowStore
    from streams.worker.reading import read_windows

    store = RedisWindowStore.from_url(env.redis_url, prefix=env.prefix)
    try:
        return counts(read_windows(store, model=model, windows=["24h"]))
    except redis.RedisError:
        return 0, 0
    finally:
        store.close()


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as {series with labels: value} ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
            lines = resp.read().decode().splitlines()
    except OSError:
        return {}
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines
            if line and not line.startswith("#")}  # fmt: skip


def probe(port: int, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of a worker's probe; (0, {}) when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())
    except OSError:
        return 0, {}


def diff(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two documents differ (for assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: live {a!r} != replay {b!r}"]
