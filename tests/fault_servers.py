"""Private, restartable Kafka and Redis servers for fault tests: stop them, kill them, start them again.

The shared servers of ``deploy/local`` serve every other test, so a test that breaks a server starts its own:

* :class:`RedisServer`: ``redis-server`` on a free port of 127.0.0.1, AOF on (``appendfsync everysec``, or
  ``fsync="always"``: then not even a SIGKILL loses an acknowledged write), data
  in a directory of the test. :meth:`~RedisServer.stop` sends SIGTERM (Redis writes its AOF and exits: nothing
  acknowledged is lost), :meth:`~RedisServer.kill` SIGKILL (up to about a second of acknowledged writes may
  be lost: that is Redis's own guarantee with ``everysec``), :meth:`~RedisServer.start` starts it again on the
  same port and directory and waits until it answers ``PING`` with its data loaded.
* :class:`KafkaBroker`: a single-node KRaft broker (broker and controller in one JVM) from the jars
  ``deploy/local/servers.sh`` assembles (``SHADOWGATE_KAFKA_JARS``, default ``<repo>/.local/kafka-jars``;
  assembled with ``servers.sh install`` when missing), on two free ports, log dir in a directory of the test,
  formatted on the first start. Same ``stop`` / ``kill`` / ``start``, on the same ports and log dir; ``start``
  waits until the broker answers a metadata request.

Use them as context managers (stopped at the end, whatever happened), or through the pytest fixtures
``fault_redis`` and ``fault_kafka`` (``tests/conftest.py``), which fail the test when ``redis-server``, java or
the jars are missing and ``SHADOWGATE_REQUIRE_INFRA=1`` (CI), and skip it otherwise::

    def test_something(fault_redis: RedisServer, tmp_path: Path) -> None:
        client = redis.Redis.from_url(fault_redis.url)
        fault_redis.stop()      # Redis is down: clients get connection errors
        fault_redis.start()     # back, same URL, same data

Every process started here is stopped by its own pid (never by name), with its process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

from shadowgate.commands.secured import cluster_id

__all__ = ["KafkaBroker", "RedisServer", "ServerMissing", "free_port"]

REPO = Path(__file__).resolve().parent.parent


class ServerMissing(RuntimeError):
    """A server cannot be started here: its binary, java or the Kafka jars are missing."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """A server process of a test: start, stop (SIGTERM), kill (SIGKILL), start again."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 120.0) -> Self:
        """Start (again) and wait until the server answers."""
        if self.running:
            return self
        self._prepare()
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603 - a server binary of this machine
                self._command(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode} during start:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not answer within {timeout_s:.0f} s:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM, and wait for the process to exit (SIGKILL after ``timeout_s``)."""
        self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL, and wait for the process to exit."""
        self._signal(signal.SIGKILL, 30.0)

    def close(self) -> None:
        if self.running:
            self.stop()

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _signal(self, sig: int, timeout_s: float) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)

    def _prepare(self) -> None:
        """Anything to do before each start."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError


class RedisServer(_Server):
    """A private ``redis-server`` with AOF on (see module doc); :attr:`url` stays the same across restarts."""

    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None, fsync: str = "everysec") -> None:
        if shutil.which("redis-server") is None:
            raise ServerMissing("redis-server is not installed (Debian: apt-get install redis-server)")
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync {fsync!r}: use always, everysec or no")
        super().__init__(workdir)
        self.port = port or free_port()
        self.fsync = fsync

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "", "--daemonize", "no"]  # fmt: skip

    def _answers(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:  # refused, or still loading its AOF: not yet
            return False
        finally:
            client.close()


class KafkaBroker(_Server):
    """A private single-node KRaft broker (see module doc); :attr:`bootstrap` stays the same across restarts."""

    name = "kafka"

    def __init__(self, workdir: Path, jars: Path | None = None) -> None:
        if shutil.which("java") is None:
            raise ServerMissing("java is not installed: the Kafka broker needs Java 17+")
        super().__init__(workdir)
        self.jars = jars or _kafka_jars()
        self.port = free_port()
        self.controller_port = free_port()
        self.log_dir = workdir / "data"
        self.properties = workdir / "server.properties"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        if self.properties.exists():
            return
        self.properties.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}\n"
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n"
            "inter.broker.listener.name=PLAINTEXT\n"
            f"log.dirs={self.log_dir}\nnum.partitions=4\n"
            "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n"
            "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=true\n"
        )
        out = subprocess.run(  # noqa: S603 - java of this machine, the jars of deploy/local
            [*self._java(), "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id(),
             "-c", str(self.properties)],
            capture_output=True, check=False, timeout=180,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"formatting KRaft storage failed: {out.stdout.decode()}{out.stderr.decode()}")

    def _java(self) -> list[str]:
        log4j = REPO / "deploy/local/log4j2.properties"
        return ["java", "-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{self.jars}/*"]  # fmt: skip

    def _command(self) -> list[str]:
        return [*self._java(), "kafka.Kafka", str(self.properties)]

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=2)
        except Exception:  # not up yet: any client error means "not yet"
            return False
        return bool(md.brokers)


def _kafka_jars() -> Path:
    jars = Path(os.environ.get("SHADOWGATE_KAFKA_JARS") or REPO / ".local" / "kafka-jars")
    if not (jars / ".complete").exists():
        subprocess.run(  # noqa: S603 - our own script: assembles the jars with Maven
            ["bash", str(REPO / "deploy/local/servers.sh"), "install"], check=False, stdout=sys.stderr,
            env={**os.environ, "SHADOWGATE_KAFKA_JARS": str(jars)},
        )  # fmt: skip
    if not (jars / ".complete").exists():
        raise ServerMissing(f"no Kafka jars in {jars}: run `deploy/local/servers.sh install` (needs mvn)")
    return jars
