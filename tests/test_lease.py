"""The standby lease on the real Redis: renewed by a timer, lost when taken, lapsed when Redis does not answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from governance.errors import InfrastructureError
from governance.service.lease import Lease, audit_lease_key

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis[bytes]]:
    connection: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def _until(predicate: object, timeout_s: float = 5.0) -> None:
    began = time.monotonic()
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() - began < timeout_s, "timed out"
        time.sleep(0.02)


def test_the_key_names_the_cluster_and_the_audit_topic() -> None:
    assert audit_lease_key("VEmk", "governance.lifecycle") == "shadowgate:audit-lease:VEmk:governance.lifecycle"


def test_a_lease_taken_by_another_instance_is_lost_at_the_next_renewal(client: redis.Redis[bytes],
                                                                        redis_prefix: str) -> None:
    lease = Lease(client, f"{redis_prefix}:lease", ttl_s=0.6)
    try:
        assert lease.try_acquire()
        lease.keep()
        client.set(lease.key, "someone-else")  # e.g. it expired during a pause and another instance took it
        _until(lambda: not lease.ok())
        assert lease.problem() == f"lost the governance lease {lease.key}: another instance holds it now"
    finally:
        lease.release()
    assert client.get(lease.key) == b"someone-else"  # release never drops a lease that is not ours


def test_a_lease_whose_redis_stops_answering_lapses_after_its_ttl(redis_url: str, redis_prefix: str) -> None:
    failing: redis.Redis[bytes] = redis.Redis.from_url(redis_url, socket_connect_timeout=0.2)
    lease = Lease(failing, f"{redis_prefix}:lease", ttl_s=0.6)
    try:
        assert lease.try_acquire()
        lease.keep()
        failing.connection_pool.connection_kwargs["port"] = 1  # every renewal now fails to connect, for real
        failing.connection_pool.reset()
        _until(lambda: not lease.ok())
        assert "was not renewed within 0.6 s" in lease.problem() and "Connection refused" in lease.problem()
        with pytest.raises(InfrastructureError, match="cannot take the governance lease"):
            lease.try_acquire()
    finally:
        lease.release()  # Redis unreachable: the lease expires by itself
        failing.close()


def test_a_second_instance_waits_until_stopped(client: redis.Redis[bytes], redis_prefix: str) -> None:
    first, second = Lease(client, f"{redis_prefix}:lease"), Lease(client, f"{redis_prefix}:lease")
    try:
        assert first.try_acquire()
        stop, waited = threading.Event(), []
        threading.Timer(0.3, stop.set).start()
        assert not second.acquire(stop, waited.append, poll_s=0.05)
        assert waited == [first.token]
    finally:
        first.release()
        second.release()
