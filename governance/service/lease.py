"""A Redis lease: at most one active governance consumer per key prefix (the audit log's single writer).

``SET key token NX PX ttl`` takes the lease; renewal and release are compare-and-set Lua scripts, so an
instance can only extend or drop a lease it still holds. A second instance waits in :meth:`Lease.acquire`
until the holder releases the lease or stops renewing it (crash: the lease expires after ``ttl_s``).

Guarantees: :meth:`Lease.held` is checked by the consumer before every append; an instance that lost
its lease (paused longer than ``ttl_s``) stops instead of writing. This narrows, but cannot close, the
window in which a paused holder could still write once (Redis leases are not fencing tokens): the
audit chain's ``seq`` / ``prev_hash`` makes such a double write visible to ``shadowgate audit verify``.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable

import redis

from governance.errors import InfrastructureError

__all__ = ["Lease"]

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


class Lease:
    """The single-writer lease under ``<prefix>:gov:lease``."""

    def __init__(self, client: redis.Redis[bytes], prefix: str, ttl_s: float = 15.0, owner: str | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        self.client = client
        self.key = f"{prefix}:gov:lease"
        self.ttl_ms = int(ttl_s * 1000)
        self.token = owner or uuid.uuid4().hex
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._renewed_at = 0.0

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours)."""
        try:
            if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
                self._renewed_at = time.monotonic()
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
            self._renewed_at = time.monotonic()
        return ok

    def renew_if_due(self) -> bool:
        """Renew when a third of the ttl has passed since the last renewal; False if the lease was lost."""
        if (time.monotonic() - self._renewed_at) * 1000 < self.ttl_ms / 3:
            return True
        return self.renew()

    def held(self) -> bool:
        try:
            return self.client.get(self.key) == self.token.encode()
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot check the governance lease {self.key}: {exc}") from None

    def release(self) -> None:
        # An unreleased lease expires after ttl_s; nothing else to do on shutdown.
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[self.key], args=[self.token])
