"""deploy/local/servers.sh as `make up` / `make down` use it: idempotent, clean stop, Redis data kept (AOF)."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from pathlib import Path

import pytest
import redis

from tests.infra import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_ports(count: int, avoid: tuple[int, ...] = ()) -> int:
    """The first of ``count`` consecutive free ports, below the ephemeral range.

    Kafka binds the broker port and, for its controller, the next one, about a second after this check. A
    port the kernel hands out for outgoing connections (32768 and up here) can be taken in between by
    any client of the suite, which once made Kafka exit at start.
    """
    rng = random.Random()
    for _ in range(1000):
        first = rng.randrange(20_000, 32_000)
        ports = range(first, first + count)
        if any(p in avoid for p in ports):
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no free ports in 20000-32000")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        ["bash", str(REPO / "deploy/local/servers.sh"), *args], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )


def test_up_twice_down_up_keeps_redis_data(tmp_path: Path) -> None:
    kafka_port = _free_ports(2)  # broker and controller
    redis_port = _free_ports(1, avoid=(kafka_port, kafka_port + 1))
    env = dict(os.environ)
    env.update({
        "SHADOWGATE_STATE_DIR": str(tmp_path / "state"),
        "SHADOWGATE_KAFKA_PORT": str(kafka_port),
        "SHADOWGATE_REDIS_PORT": str(redis_port),
        # Reuse the jars `make up` assembled instead of fetching them again.
        "SHADOWGATE_KAFKA_JARS": os.environ.get("SHADOWGATE_KAFKA_JARS", str(REPO / ".local/kafka-jars")),
    })
    try:
        first = _run(env, "up")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"Kafka listens on 127.0.0.1:{kafka_port}" in first.stdout
        assert f"Redis listens on 127.0.0.1:{redis_port}" in first.stdout
        second = _run(env, "up")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        client = redis.Redis(port=redis_port)
        client.set("kept", b"through a restart")
        client.close()
        down = _run(env, "down")
        assert down.returncode == 0 and "stopping" in down.stdout, down.stdout + down.stderr
        assert "Redis stopped" in _run(env, "status").stdout
        third = _run(env, "up")
        assert third.returncode == 0, third.stdout + third.stderr
        client = redis.Redis(port=redis_port)
        assert client.get("kept") == b"through a restart"
        client.close()
    finally:
        _run(env, "down")
