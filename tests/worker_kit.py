"""Running real ``shadowgate worker`` processes against per-test topics, Redis prefix and keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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

    def start_worker(self, log_dir: Path) -> subprocess.Popen[bytes]:
        log = log_dir / f"worker-{len(self.procs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "shadowgate", "worker", "--loglevel", "warning"],
                env=self.env(), cwd=str(REPO), stdout=out, stderr=subprocess.STDOUT,
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
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
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


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, env: WorkerEnv | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        if env is not None and any(proc.poll() is not None for proc in env.procs if proc not in env.killed):
            raise AssertionError(f"a worker exited while waiting for {what}\n{env.tail()}")
        last = predicate()
        if last:
            return last
        time.sleep(0.5)
    detail = env.tail() if env is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last: {last!r})\n{detail}")


def jsonl(events: Iterator[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)
