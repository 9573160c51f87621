"""A Sentinel-managed Redis failover is ridden out by the client every process gets (``redis_client``): Sentinel
finds the primary, and redis-py's ``Retry`` with backoff carries the commands over the promotion of the replica.

Real servers: a primary, its replica and one Sentinel (``redis-server --sentinel``), each private to the test.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from governance.contract.connections import RedisConnection, redis_client
from governance.contract.settings import RedisOptions
from tests.fault_servers import RedisServer, ServerMissing, _Server, free_port

pytestmark = pytest.mark.integration


class _Replica(RedisServer):
    name = "redis-replica"

    def __init__(self, workdir: Path, primary_port: int) -> None:
        super().__init__(workdir)
        self.primary_port = primary_port

    def _command(self) -> list[str]:
        return [*super()._command(), "--replicaof", "127.0.0.1", str(self.primary_port)]


class _Sentinel(_Server):
    name = "sentinel"

    def __init__(self, workdir: Path, primary_port: int) -> None:
        super().__init__(workdir)
        self.port, self.primary_port = free_port(), primary_port

    def _prepare(self) -> None:
        conf = self.workdir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                            f"sentinel monitor sg 127.0.0.1 {self.primary_port} 1\n"
                            "sentinel down-after-milliseconds sg 1000\nsentinel failover-timeout sg 5000\n")

    def _command(self) -> list[str]:
        return ["redis-server", str(self.workdir / "sentinel.conf"), "--sentinel"]

    def _answers(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1.0)
        try:
            return client.sentinel_master("sg")["ip"] == "127.0.0.1"  # type: ignore[no-any-return]
        except redis.RedisError:
            return False
        finally:
            client.close()


def test_writes_ride_out_a_sentinel_failover(tmp_path: Path) -> None:
    from tests.conftest import _cannot_start

    try:
        primary = RedisServer(tmp_path / "primary")
    except ServerMissing as exc:
        _cannot_start(exc)
        raise
    with primary, _Replica(tmp_path / "replica", primary.port) as replica, \
            _Sentinel(tmp_path / "sentinel", primary.port) as sentinel:
        options = RedisOptions(sentinels=f"127.0.0.1:{sentinel.port}", sentinel_service="sg",  # type: ignore[call-arg]
                               retries=12, retry_backoff_s=0.2, retry_backoff_max_s=2.0, socket_timeout_s=2.0,
                               connect_timeout_s=1.0)
        client = redis_client(RedisConnection("redis://unused:1/0", options))
        assert client.set("k:-1", b"x")
        for i in range(200):
            client.set(f"k:{i}", str(i))
        # Asynchronous replication may lose the last writes in a failover (Redis's own guarantee): wait until the
        # replica has them, so the test is about the client riding out the promotion, not about replication.
        assert client.execute_command("WAIT", 1, 10_000) == 1
        primary.stop()
        failures = 0
        began = time.monotonic()
        for i in range(200, 400):  # each call either succeeds (after retries) or raises: none may raise
            try:
                client.set(f"k:{i}", str(i))
            except Exception:  # counted, so the assertion says how many were lost
                failures += 1
        rode = time.monotonic() - began
        assert failures == 0, f"{failures} writes failed across the failover"
        values = client.mget([f"k:{i}" for i in range(400)])
        missing = [i for i, v in enumerate(values) if v is None]
        assert not missing, f"missing {missing[:20]}... ({len(missing)})"
        assert [int(v) for v in values] == list(range(400))  # type: ignore[arg-type]
        master = client.connection_pool.get_master_address()  # type: ignore[attr-defined]
        assert master == ("127.0.0.1", replica.port)
        print(f"writes rode out the failover in {rode:.1f} s")
        client.close()
