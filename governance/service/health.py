"""What the governance consumer's ``/healthz`` and ``/readyz`` answer (beside ``/metrics`` on its metrics port).

* live (``/healthz``): the consumer's loop went round within ``stall_s`` (it polls every 0.2 s; a batch of
  inputs takes seconds), or it is waiting for the lease as a standby. A consumer stuck in a call that never
  returns is not live, and is restarted.
* ready (``/readyz``): it holds the audit log's lease and has started (the chain verified, its inputs
  assigned), Redis and Kafka answer (each probed with a short timeout, from clients of their own), and its
  keys are loaded (it has a signer now). A standby waiting for the lease is live but not ready: it is not the
  one doing the work; it becomes ready by itself when it takes over.

Each answer is ``(ok, detail)``: the detail (the failing checks, the seconds since the loop went round) is
the JSON body of the HTTP answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["ConsumerHealth"]


class ConsumerHealth:
    """Liveness and readiness of one governance consumer (module doc). Every argument is a callable, so the
    answers are computed at each request and a test can hand fakes."""

    def __init__(self, *, started: Callable[[], bool], holds_lease: Callable[[], bool],
                 last_beat: Callable[[], float | None], redis_ping: Callable[[], Any],
                 kafka_ping: Callable[[], Any], keys_loaded: Callable[[], Any], stall_s: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._started, self._holds_lease, self._beat = started, holds_lease, last_beat
        self._redis_ping, self._kafka_ping, self._keys = redis_ping, kafka_ping, keys_loaded
        self.stall_s, self._monotonic = stall_s, monotonic

    def _since_beat(self) -> float | None:
        beat = self._beat()
        return None if beat is None else round(self._monotonic() - beat, 3)

    def live(self) -> tuple[bool, dict[str, Any]]:
        since = self._since_beat()
        standby = not self._started()
        ok = standby or (since is not None and since <= self.stall_s)
        return ok, {"standby": standby, "since_loop_s": since}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        checks = {
            "started": self._started(),
            "lease": self._holds_lease(),
            "redis": _answers(self._redis_ping),
            "kafka": _answers(self._kafka_ping),
            "keys": _answers(self._keys),
        }
        failing = sorted(name for name, ok in checks.items() if not ok)
        return not failing, {"failing": failing, "since_loop_s": self._since_beat()}


def _answers(ping: Callable[[], Any]) -> bool:
    try:
        return bool(ping())
    except Exception:  # any error of the probe means the server (or the keyring) does not answer
        return False
