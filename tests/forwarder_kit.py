"""Running ``shadowgate alerts forward`` against the real Kafka in the tests: config, process, positions, DLQ."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from prometheus_client.parser import text_string_to_metric_families

from tests.alerting_kit import free_port
from tests.governance_kit import Env, wait_until
from tests.infra import REPO

SECRET = "test-hmac-secret"
FAST_RETRY = {"timeout_s": 1.0, "initial_backoff_s": 0.05, "max_backoff_s": 0.3, "max_garbage": 50}


@dataclass
class Forwarder:
    """One forwarder process of a test, and where it keeps its positions."""

    env: Env
    root: Path
    group: str
    dlq: str
    receivers: list[dict[str, Any]]
    retry: dict[str, Any] = field(default_factory=lambda: dict(FAST_RETRY))
    sources: list[str] = field(default_factory=lambda: ["alerts", "gates", "rollbacks", "audit"])
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "alerts.yaml"

    def write_config(self) -> None:
        (self.root / "hook.secret").write_text(SECRET + "\n")
        self.config_path.write_text(yaml.safe_dump({
            "group": self.group, "dead_letter_topic": self.dlq, "sources": self.sources,
            "runbook_url": "https://runbooks.example.com/{runbook}.md", "retry": self.retry,
            "receivers": self.receivers}))

    def start(self) -> None:
        """Start the process and wait until ``/readyz`` answers 200."""
        self.write_config()
        self.port = free_port()
        self.runs += 1
        env = {**os.environ, **self.env.cli_env(), "PYTHONUNBUFFERED": "1"}
        with (self.root / f"forwarder-{self.runs}.log").open("wb") as log:
            self.process = subprocess.Popen(  # our own CLI, from the worktree
                [sys.executable, "-m", "shadowgate", "alerts", "forward", "--config", str(self.config_path),
                 "--port", str(self.port), "--loglevel", "info"], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT)
        wait_until(lambda: self.get("/readyz")[0] == 200 or self.exited(), timeout_s=60, what="the forwarder ready")
        assert not self.exited(), self.log()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:  # noqa: S310
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when absent)."""
        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def kill(self) -> None:
        """SIGKILL: no chance to commit anything more."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait: the lanes commit what they delivered."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(30)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.root.glob("forwarder-*.log")))

    def committed(self, lane: str, source_topic: str, partition: int = 0) -> int | None:
        """The lane's committed offset of ``source_topic[partition]`` (None: never committed)."""
        consumer = Consumer({"bootstrap.servers": self.env.bootstrap, "group.id": f"{self.group}.{lane}",
                             "enable.auto.commit": False})
        try:
            (tp,) = consumer.committed([TopicPartition(source_topic, partition)], timeout=10)
            return tp.offset if tp.offset >= 0 else None
        finally:
            consumer.close()

    def groups(self) -> list[str]:
        return [f"{self.group}.{r['name']}" for r in self.receivers] + [f"{self.group}.dead-letter"]


def dead_letters(bootstrap: str, topic: str) -> list[tuple[dict[str, str], bytes]]:
    """Every message of the dead-letter topic: its headers and value."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        consumer.assign([TopicPartition(topic, 0, 0)])
        out: list[tuple[dict[str, str], bytes]] = []
        while len(out) < high:
            message = consumer.poll(5)
            assert message is not None, f"read {len(out)} of {high} dead letters"
            if message.error() is None:
                headers = {k: (v or b"").decode() for k, v in (message.headers() or [])}
                out.append((headers, message.value() or b""))
        return out
    finally:
        consumer.close()


@contextlib.contextmanager
def forwarders(bootstrap: str) -> Iterator[list[Forwarder]]:
    """Forwarders made in the block are stopped, and their consumer groups deleted, afterwards."""
    made: list[Forwarder] = []
    try:
        yield made
    finally:
        for forwarder in made:
            if forwarder.process is not None and forwarder.process.poll() is None:
                forwarder.stop()
        groups = [g for f in made for g in f.groups()]
        if groups:
            admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: its futures die with it
            for future in admin.delete_consumer_groups(groups).values():
                with contextlib.suppress(Exception):  # cleanup is best effort
                    future.result(timeout=30)
