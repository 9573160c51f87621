"""What the worker's ``/healthz`` and ``/readyz`` answer (served beside ``/metrics`` on its metrics port).

* live (``/healthz``): the ingest loop has not ended on an error. A worker that cannot make progress is
  still live (it keeps trying the same batch); only one whose consumer failed for good is not.
* ready (``/readyz``): the worker joined its consumer group, Redis and Kafka answer (each probed with a short
  timeout), its signing keys are loaded, and no batch has been in progress for longer than
  ``SHADOWGATE_UNREADY_AFTER_S``. A worker that is not ready has paused its partitions (or is between
  rebalances); it becomes ready again by itself once the fault clears.

Each answer is ``(ok, detail)``; the detail (which checks failed, the batch's age, failed tries and last
error) is the JSON body of the HTTP answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from streams.worker.ingest import IngestStatus

__all__ = ["Health"]


class Health:
    """Liveness and readiness of one worker from its ingest status and two probes (see module doc).

    ``redis_ping`` and ``kafka_ping`` raise or return a falsy value when their server does not answer.
    """

    def __init__(
        self, status: Callable[[], IngestStatus], redis_ping: Callable[[], Any], kafka_ping: Callable[[], Any],
        *, keys_loaded: bool,
    ) -> None:  # fmt: skip
        self._status = status
        self._redis_ping = redis_ping
        self._kafka_ping = kafka_ping
        self._keys_loaded = keys_loaded

    def live(self) -> tuple[bool, dict[str, Any]]:
        status = self._status()
        return status.fatal is None, {"fatal": status.fatal}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        status = self._status()
        checks = {
            "running": status.running,
            "joined": status.joined,
            "redis": _answers(self._redis_ping),
            "kafka": _answers(self._kafka_ping),
            "keys": self._keys_loaded,
            "progress": not status.stuck,
        }
        failing = sorted(name for name, ok in checks.items() if not ok)
        return not failing, {"failing": failing, **asdict(status)}


def _answers(ping: Callable[[], Any]) -> bool:
    try:
        return bool(ping())
    except Exception:  # any error of the probe means the server does not answer
        return False
