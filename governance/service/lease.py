"""The standby lease: one active governance consumer per audit log; the others wait.

The lease is a Redis key scoped to the audit log itself, not to a Redis prefix:
``shadowgate:audit-lease:<Kafka cluster id>:<audit topic>`` (:func:`audit_lease_key`), so a second
consumer configured with another prefix still waits for the first. ``SET key token NX PX ttl`` takes it;
renewal and release are compare-and-set Lua scripts, so an instance can only extend or drop a lease it
still holds.

Renewal is by time, not by input: :meth:`Lease.keep` starts a thread that renews every ``ttl / 3``
seconds whatever the consumer is doing (a flood of junk, a slow rollback), and :meth:`Lease.ok` answers
from memory (no Redis call) whether the last renewal is younger than the ttl and no renewal found the
lease taken. The consumer checks it between messages and before every append, and stops when it fails.

What the lease is not: the fence. A Redis lease cannot stop a holder that paused past its ttl from writing
once more; the audit log's transactions do (:mod:`governance.service.transactions`: a fixed
``transactional.id``, so the broker refuses the paused writer). The lease only keeps a standby from
fencing a healthy active instance, and lets it take over within ``ttl_s`` after a crash.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable

import redis

from governance.errors import InfrastructureError

__all__ = ["Lease", "audit_lease_key"]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def audit_lease_key(cluster_id: str, audit_topic: str) -> str:
    """The lease of the audit log ``audit_topic`` on Kafka cluster ``cluster_id`` (whatever the Redis prefix)."""
    return f"shadowgate:audit-lease:{cluster_id}:{audit_topic}"


class Lease:
    """The single-active lease under ``key`` (see the module docstring)."""

    def __init__(self, client: redis.Redis[bytes], key: str, ttl_s: float = 15.0, owner: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.token = owner or uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._monotonic = monotonic
        self._renewed_at = float("-inf")
        self._lost: str | None = None
        self._last_error = "no renewal succeeded"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours)."""
        try:
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._renewed_at, self._lost = self._monotonic(), None
                return True
            return self.renew()
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot take the governance lease {self.key}: {exc}") from None

    def acquire(
        self,
        stop: threading.Event | None = None,
        on_wait: Callable[[str], None] | None = None,
        poll_s: float = 0.5,
    ) -> bool:
        """Wait until the lease is ours (True) or ``stop`` is set (False); ``on_wait`` gets the holder's token."""
        announced = False
        while not self.try_acquire():
            if not announced and on_wait is not None:
                holder = self.client.get(self.key)
                on_wait(holder.decode() if holder else "unknown")
                announced = True
            if stop is not None and stop.wait(poll_s):
                return False
            if stop is None:
                time.sleep(poll_s)
        return True

    def renew(self) -> bool:
        """Extend the lease if we hold it; False if it was lost."""
        try:
            ok = bool(self._renew(keys=[self.key], args=[self.token, str(self.ttl_ms)]))
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot renew the governance lease {self.key}: {exc}") from None
        if ok:
            self._renewed_at = self._monotonic()
        return ok

    def keep(self) -> None:
        """Renew every ttl/3 in a daemon thread until :meth:`release` (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{self.key}", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        period = self.ttl_ms / 3000
        while not self._stop.wait(period):
            try:
                if not self.renew():
                    self._lost = "another instance holds it now"
                    return
            except InfrastructureError as exc:
                # Redis unreachable: keep trying; ok() turns False once the last renewal is older than the ttl.
                self._last_error = str(exc)

    def ok(self) -> bool:
        """Whether the lease is ours: renewed within the ttl and never found taken (no Redis call)."""
        return self._lost is None and (self._monotonic() - self._renewed_at) * 1000 < self.ttl_ms

    def problem(self) -> str:
        """Why :meth:`ok` is False, for the error that stops the consumer."""
        if self._lost is not None:
            return f"lost the governance lease {self.key}: {self._lost}"
        return (f"the governance lease {self.key} was not renewed within {self.ttl_ms / 1000:.1f} s "
                f"({self._last_error})")

    def held(self) -> bool:
        """Whether Redis says the lease is ours (one GET)."""
        try:
            return self.client.get(self.key) == self.token.encode()
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot check the governance lease {self.key}: {exc}") from None

    def release(self) -> None:
        """Stop renewing and drop the lease if still ours (an unreleased lease expires after the ttl)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[self.key], args=[self.token])
