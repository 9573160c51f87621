"""Shared fixtures: the real Kafka and Redis (see tests/infra.py), with per-test topics and key prefixes."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

# Imported up front: Faust (mode) raises the recursion limit when an app starts, and pytest's assertion
# rewriter then trips CPython 3.11's "AST constructor recursion depth mismatch" on modules imported later.
import hypothesis  # noqa: F401
import pytest

from tests.fault_servers import KafkaBroker, RedisServer, ServerMissing
from tests.infra import Infra, find_infra, require_infra

if TYPE_CHECKING:
    from tests.alerting_kit import AlertmanagerServer
    from tests.secure_servers import Secured

_RELIABILITY = Path(__file__).resolve().parent / "reliability"
_SERVER_FIXTURES = frozenset(
    {"infra", "kafka_bootstrap", "redis_url", "redis_prefix", "make_topic", "alertmanager", "fault_redis",
     "fault_kafka", "secured", "secure_up"}
)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The standing fault suite (tests/reliability, ``make reliability``) runs only when RELIABILITY is set."""
    if collection_path == _RELIABILITY and os.environ.get("RELIABILITY") not in ("short", "full"):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a server is an integration test, marked or not: ``-m "not integration"`` (the
    run under a clock moved forward, ``make test-clock``) must never reach a server."""
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    yield from find_infra()


def _missing(what: str) -> None:
    message = (
        f"no {what} server: set SHADOWGATE_{what.upper()}_* or run `make up` "
        "(deploy/local/servers.sh up)"
    )
    if require_infra():
        pytest.fail(message + " [SHADOWGATE_REQUIRE_INFRA=1: a missing server is a failure]")
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap(infra: Infra) -> str:
    if infra.kafka_bootstrap is None:
        _missing("kafka")
    assert infra.kafka_bootstrap is not None
    return infra.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(infra: Infra) -> str:
    if infra.redis_url is None:
        _missing("redis")
    assert infra.redis_url is not None
    return infra.redis_url


@pytest.fixture
def unique() -> str:
    """A short unique token for topic names, key prefixes and consumer groups of one test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def redis_prefix(redis_url: str, unique: str) -> Iterator[str]:
    """A Redis key prefix owned by this test; its keys are deleted afterwards."""
    import redis

    prefix = f"t{unique}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def make_topic(kafka_bootstrap: str, unique: str) -> Iterator[Callable[..., str]]:
    """Create a fresh topic (``make_topic("scores", partitions=4)``); deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def _make(name: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        topic = f"test.{name}.{unique}"
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[topic].result(timeout=30)
        created.append(topic)
        # The controller acknowledges before every broker's metadata has the topic: wait until it is served,
        # so a client that asks for the partition count right away finds them.
        deadline = time.monotonic() + 30
        while len(admin.list_topics(topic, timeout=10).topics[topic].partitions) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} created but not in the metadata after 30 s")
            time.sleep(0.05)
        return topic

    yield _make
    if created:
        for fut in admin.delete_topics(created).values():
            with contextlib.suppress(Exception):  # cleanup of a test topic is best effort
                fut.result(timeout=30)


def _cannot_start(exc: ServerMissing) -> None:
    if require_infra():
        pytest.fail(f"{exc} [SHADOWGATE_REQUIRE_INFRA=1: a missing server is a failure]")
    pytest.skip(str(exc))


@pytest.fixture
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis of this test, to stop and start (tests/fault_servers.py); stopped afterwards."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except ServerMissing as exc:
        _cannot_start(exc)
        raise
    with server:
        yield server


@pytest.fixture
def fault_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A private single-node Kafka broker of this test, to stop and start (tests/fault_servers.py)."""
    try:
        broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    except ServerMissing as exc:
        _cannot_start(exc)
        raise
    with broker:
        yield broker


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A SASL_SSL + ACL Kafka and an ACL + TLS Redis private to a test module (tests/secure_servers.py)."""
    from tests.secure_servers import Secured, SecureKafka, SecureRedis, make_pki

    root = tmp_path_factory.mktemp("secured")
    pki = make_pki(root / "pki")
    try:
        kafka, redis = SecureKafka(root / "kafka", pki), SecureRedis(root / "redis", pki, prefix="sec")
    except ServerMissing as exc:
        _cannot_start(exc)
        raise
    with kafka, redis:
        yield Secured(kafka, redis, pki)


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerServer]:
    """A real Alertmanager on a free port (tests/alerting_kit.py); fails in CI if it cannot start."""
    from tests.alerting_kit import start_alertmanager

    yield from start_alertmanager(tmp_path_factory.mktemp("alertmanager"))


_SESSION: dict[str, float] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _SESSION["started"] = time.time()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the screenshots this run took of the status page (kept by CI under .local/artifacts/screenshots)."""
    from tests.status_kit import SCREENSHOTS

    started = _SESSION.get("started", 0.0)
    shots = sorted(p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= started) if SCREENSHOTS.is_dir() else []
    if shots:
        terminalreporter.write_sep("-", f"screenshots ({len(shots)}) in {SCREENSHOTS}")
        for path in shots:
            terminalreporter.write_line(str(path))
