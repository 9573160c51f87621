"""Finding the real Kafka broker and Redis server for tests.

Order: servers named by ``SHADOWGATE_KAFKA_BOOTSTRAP`` / ``SHADOWGATE_REDIS_URL``; testcontainers when a
Docker engine answers; otherwise the local servers of ``deploy/local/servers.sh`` (started if needed).
With ``SHADOWGATE_REQUIRE_INFRA=1`` (CI) a server that cannot be found fails the run instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Infra", "find_infra", "require_infra"]

REPO = Path(__file__).resolve().parent.parent


def require_infra() -> bool:
    return os.environ.get("SHADOWGATE_REQUIRE_INFRA", "") not in ("", "0", "false")


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
        return True
    return False


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
    except Exception:
        return False
    return bool(md.brokers)


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _docker_answers() -> bool:
    # docker-py leaks its socket when no engine answers: look for one before asking.
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


class Infra:
    """Where Kafka and Redis are, plus whatever must be stopped at the end."""

    def __init__(self) -> None:
        self.kafka_bootstrap: str | None = None
        self.redis_url: str | None = None
        self.how: dict[str, str] = {}
        self._stop: list[Callable[[], Any]] = []

    def close(self) -> None:
        for stop in reversed(self._stop):
            with contextlib.suppress(Exception):
                stop()


def _from_testcontainers(infra: Infra) -> None:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.redis import RedisContainer

    if infra.kafka_bootstrap is None:
        kafka = KafkaContainer("apache/kafka:4.1.1").with_kraft()
        kafka.start()
        infra._stop.append(kafka.stop)
        infra.kafka_bootstrap = kafka.get_bootstrap_server()
        infra.how["kafka"] = "testcontainers"
    if infra.redis_url is None:
        red = RedisContainer("redis:7")
        red.start()
        infra._stop.append(red.stop)
        infra.redis_url = f"redis://{red.get_container_host_ip()}:{red.get_exposed_port(6379)}/0"
        infra.how["redis"] = "testcontainers"


def _from_local(infra: Infra) -> None:
    kafka_port = int(os.environ.get("SHADOWGATE_KAFKA_PORT", "9092"))
    redis_port = int(os.environ.get("SHADOWGATE_REDIS_PORT", "6379"))
    bootstrap = f"127.0.0.1:{kafka_port}"
    url = f"redis://127.0.0.1:{redis_port}/0"
    if not (_port_open("127.0.0.1", kafka_port) and _port_open("127.0.0.1", redis_port)):
        subprocess.run(  # noqa: S603 - our own script
            ["bash", str(REPO / "deploy/local/servers.sh"), "up"], check=False, stdout=sys.stderr
        )
    if infra.kafka_bootstrap is None and _kafka_answers(bootstrap):
        infra.kafka_bootstrap = bootstrap
        infra.how["kafka"] = "deploy/local"
    if infra.redis_url is None and _redis_answers(url):
        infra.redis_url = url
        infra.how["redis"] = "deploy/local"


def find_infra() -> Iterator[Infra]:
    infra = Infra()
    env_kafka = os.environ.get("SHADOWGATE_KAFKA_BOOTSTRAP")
    env_redis = os.environ.get("SHADOWGATE_REDIS_URL")
    if env_kafka:
        if not _kafka_answers(env_kafka):
            pytest.exit(f"SHADOWGATE_KAFKA_BOOTSTRAP={env_kafka} does not answer", returncode=3)
        infra.kafka_bootstrap, infra.how["kafka"] = env_kafka, "environment"
    if env_redis:
        if not _redis_answers(env_redis):
            pytest.exit(f"SHADOWGATE_REDIS_URL={env_redis} does not answer", returncode=3)
        infra.redis_url, infra.how["redis"] = env_redis, "environment"
    if (infra.kafka_bootstrap is None or infra.redis_url is None) and _docker_answers():
        _from_testcontainers(infra)
    if infra.kafka_bootstrap is None or infra.redis_url is None:
        _from_local(infra)
    try:
        yield infra
    finally:
        infra.close()
