"""What the server benchmarks share: throwaway topics, keyring, worker processes and Redis prefixes; CPU meters.

:class:`Harness` names every topic, consumer group and Redis prefix after a random token, starts real
``shadowgate worker`` processes on them (``python -m shadowgate worker``, environment settings only, in
their own process group), and :meth:`Harness.cleanup` stops those workers by pid and deletes exactly what
it created: the topics whose name holds the token, the consumer groups and Redis prefixes it handed out,
the Faust data dirs and its temporary directory. CPU is read from ``/proc`` (Linux only).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from governance.contract.settings import Settings, Topics
from governance.contract.topics import ensure_topics, topic_specs
from governance.crypto import Keyring
from streams.state.redis_store import RedisWindowStore

__all__ = ["PARTITIONS", "PRODUCER", "REPO", "Harness", "cpu_meter", "cpu_s", "free_port", "server_pids"]

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 4
# The SDK's producer settings (shadowgate.sdk): benchmark input is produced as a scoring service would.
PRODUCER = {"enable.idempotence": True, "acks": "all", "compression.type": "lz4", "linger.ms": 5,
            "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576}  # fmt: skip
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Harness:
    """Throwaway topics, keyring, worker processes, consumer groups and Redis prefixes of one benchmark."""

    bootstrap: str
    redis_url: str
    unique: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    partitions: int = PARTITIONS
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sg-bench-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        names = ("scores", "labels", "dlq", "gates", "rollbacks", "alerts", "approvals", "commands", "lifecycle",
                 "routing")  # fmt: skip
        return Topics(**{name: f"bench.{name}.{self.unique}" for name in names})

    @property
    def keys_dir(self) -> Path:
        return self.workdir / "keys"

    def setup(self) -> None:
        Keyring(self.keys_dir).generate(datetime.now(UTC))
        settings = Settings(kafka_bootstrap=self.bootstrap, topics=self.topics)  # type: ignore[call-arg]
        ensure_topics(self.bootstrap, topic_specs(settings, self.partitions))

    def start_worker(
        self, run: str, metrics_port: int = 0, policy_path: Path | None = None, settings: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker process; ``settings``: more ``SHADOWGATE_*`` environment settings."""
        group, prefix = f"bench-{self.unique}-{run}", f"bench{self.unique}{run}"
        self.groups.append(group)
        self.prefixes.append(prefix)
        env = dict(os.environ)
        env.update({
            "SHADOWGATE_KAFKA_BOOTSTRAP": self.bootstrap, "SHADOWGATE_REDIS_URL": self.redis_url,
            "SHADOWGATE_REDIS_PREFIX": prefix, "SHADOWGATE_CONSUMER_GROUP": group,
            "SHADOWGATE_METRICS_PORT": str(metrics_port), "SHADOWGATE_KEYS_DIR": str(self.keys_dir),
            "PYTHONPATH": str(REPO),
        })  # fmt: skip
        if policy_path is not None:
            env["SHADOWGATE_POLICY_PATH"] = str(policy_path)
        for name, value in self.topics.model_dump().items():
            env[f"SHADOWGATE_TOPICS__{name.upper()}"] = value
        env.update(settings or {})
        with (self.workdir / f"worker-{run}.log").open("wb") as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(  # our own CLI
                [sys.executable, "-m", "shadowgate", "worker", "--loglevel", "warning"],
                env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def store(self, run: str) -> RedisWindowStore:
        return RedisWindowStore.from_url(self.redis_url, prefix=f"bench{self.unique}{run}")

    def log_tail(self, run: str) -> str:
        path = self.workdir / f"worker-{run}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def cleanup(self) -> None:
        """Stop the workers, delete the topics, groups, Redis keys and data dirs this harness made."""
        for proc in self.procs:
            self.stop(proc)
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        mine = [t for t in admin.list_topics(timeout=10).topics if self.unique in t]
        for future in [*admin.delete_topics(mine, operation_timeout=30).values()] if mine else []:
            future.result(timeout=30)
        if self.groups:
            for future in admin.delete_consumer_groups(self.groups, request_timeout=30).values():
                # A group that never committed does not exist: nothing to delete.
                with suppress(KafkaException):
                    future.result(timeout=30)
        client = redis.Redis.from_url(self.redis_url)
        for prefix in self.prefixes:
            keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        client.close()
        for group in self.groups:
            shutil.rmtree(Path(tempfile.gettempdir()) / f"shadowgate-faust-{group}", ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def server_pids() -> dict[str, int]:
    """The pids of the Kafka broker and redis-server on this machine (for CPU accounting only)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"redis-server" in cmdline and "redis" not in found:
            found["redis"] = int(entry.name)
        elif cmdline.startswith(b"java") and b"kafka" in cmdline and "kafka" not in found:
            found["kafka"] = int(entry.name)
    return found


@contextmanager
def cpu_meter(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds per named pid (plus this process as ``bench``) spent inside the block."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    self_before = time.process_time()
    out: dict[str, float] = {}
    yield out
    out.update({name: round(cpu_s(pid) - before[name], 2) for name, pid in pids.items()})
    out["bench"] = round(time.process_time() - self_before, 2)
