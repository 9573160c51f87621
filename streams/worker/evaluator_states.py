"""Where evaluator states live between evaluations, and which worker may evaluate a comparison (its lease).

:class:`RedisEvaluatorStates` is the live worker's (``<prefix>:eval:<comparison>``, leases under
``<prefix>:evaluator:<comparison>``); :class:`MemoryEvaluatorStates` is replay's and the tests'. The ``*_many``
forms are what an evaluation round (:mod:`streams.worker.rounds`) uses: one round trip for all its comparisons.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol

import redis

from governance.errors import InfrastructureError

__all__ = ["EvaluatorStates", "HeldStates", "MemoryEvaluatorStates", "RedisEvaluatorStates"]


class EvaluatorStates(Protocol):
    """Where evaluator states live between evaluations (and who may evaluate a comparison).

    The ``*_many`` forms are what an evaluation round uses: one round trip for every comparison of the round.
    ``put_many`` stores all of its states or none (the round then publishes nothing and evaluates them again).
    """

    def get(self, comparison_id: str) -> bytes | None: ...

    def put(self, comparison_id: str, state: bytes) -> None: ...

    def lease(self, comparison_id: str, owner: str, ttl_s: float) -> bool: ...

    def get_many(self, comparison_ids: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, states: Mapping[str, bytes]) -> None: ...

    def lease_many(self, comparison_ids: Sequence[str], owner: str, ttl_s: float) -> list[bool]: ...


class MemoryEvaluatorStates:
    """States in a dict; every lease is granted (one process)."""

    def __init__(self) -> None:
        self._states: dict[str, bytes] = {}

    def get(self, comparison_id: str) -> bytes | None:
        return self._states.get(comparison_id)

    def put(self, comparison_id: str, state: bytes) -> None:
        self._states[comparison_id] = state

    def lease(self, comparison_id: str, owner: str, ttl_s: float) -> bool:
        return True

    def get_many(self, comparison_ids: Sequence[str]) -> list[bytes | None]:
        return [self._states.get(cid) for cid in comparison_ids]

    def put_many(self, states: Mapping[str, bytes]) -> None:
        self._states.update(states)

    def lease_many(self, comparison_ids: Sequence[str], owner: str, ttl_s: float) -> list[bool]:
        return [True] * len(comparison_ids)


class RedisEvaluatorStates:
    """States under ``<prefix>:eval:<comparison>``; a lease makes one worker the evaluator of a comparison."""

    _LEASE = """
    local cur = redis.call('GET', KEYS[1])
    if not cur or cur == ARGV[1] then
      redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
      return 1
    end
    return 0
    """

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._lease_script = client.register_script(self._LEASE)

    def get(self, comparison_id: str) -> bytes | None:
        value = self._client.get(f"{self._prefix}:eval:{{{comparison_id}}}")
        return bytes(value) if value is not None else None

    def put(self, comparison_id: str, state: bytes) -> None:
        self._client.set(f"{self._prefix}:eval:{{{comparison_id}}}", state)

    def lease(self, comparison_id: str, owner: str, ttl_s: float) -> bool:
        key = f"{self._prefix}:evaluator:{{{comparison_id}}}"
        return bool(self._lease_script(keys=[key], args=[owner, int(ttl_s * 1000)]))

    def get_many(self, comparison_ids: Sequence[str]) -> list[bytes | None]:
        if not comparison_ids:
            return []
        with _redis_errors(f"read the evaluator states of {len(comparison_ids)} comparisons"):
            values = self._client.mget([f"{self._prefix}:eval:{{{cid}}}" for cid in comparison_ids])
        return [bytes(value) if value is not None else None for value in values]

    def put_many(self, states: Mapping[str, bytes]) -> None:
        if states:  # one MSET: all of them or none
            with _redis_errors(f"store the evaluator states of {len(states)} comparisons"):
                self._client.mset({f"{self._prefix}:eval:{{{cid}}}": state for cid, state in states.items()})

    def lease_many(self, comparison_ids: Sequence[str], owner: str, ttl_s: float) -> list[bool]:
        if not comparison_ids:
            return []
        with _redis_errors(f"lease {len(comparison_ids)} comparisons"):
            pipe = self._client.pipeline(transaction=False)
            for cid in comparison_ids:
                self._lease_script(keys=[f"{self._prefix}:evaluator:{{{cid}}}"], args=[owner, int(ttl_s * 1000)],
                                   client=pipe)  # fmt: skip
            return [bool(granted) for granted in pipe.execute()]


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise InfrastructureError(f"redis: cannot {what}: {exc}; is the server up? (the round is tried again)") from exc


class HeldStates:
    """Evaluator states written back only once what their evaluation emitted was delivered.

    The evaluator reads and writes its states through this; a write is held per comparison until
    :meth:`commit_many` (its events were acknowledged by the broker, or it had none) or :meth:`discard` (a publish
    failed: the comparison is evaluated again from its last committed state and emits the same events, with
    the same ids). Otherwise a trigger whose state said "fired" while its event never reached Kafka would be
    lost for good: the next evaluation sees it fired and stays silent.
    """

    def __init__(self, inner: EvaluatorStates) -> None:
        self.inner = inner
        self._held: dict[str, dict[str, bytes]] = {}  # comparison id -> state id -> state

    def get(self, comparison_id: str) -> bytes | None:
        held = self._held_state(comparison_id)
        return held if held is not None else self.inner.get(comparison_id)

    def put(self, comparison_id: str, state: bytes) -> None:
        self._held.setdefault(comparison_id.split("#")[0], {})[comparison_id] = state

    def lease(self, comparison_id: str, owner: str, ttl_s: float) -> bool:
        return self.inner.lease(comparison_id, owner, ttl_s)

    def get_many(self, comparison_ids: Sequence[str]) -> list[bytes | None]:
        missing = [cid for cid in comparison_ids if self._held_state(cid) is None]
        found = dict(zip(missing, self.inner.get_many(missing), strict=True)) if missing else {}
        return [held if (held := self._held_state(cid)) is not None else found[cid] for cid in comparison_ids]

    def put_many(self, states: Mapping[str, bytes]) -> None:
        for state_id, state in states.items():
            self.put(state_id, state)

    def lease_many(self, comparison_ids: Sequence[str], owner: str, ttl_s: float) -> list[bool]:
        return self.inner.lease_many(comparison_ids, owner, ttl_s)

    def _held_state(self, state_id: str) -> bytes | None:
        return self._held.get(state_id.split("#")[0], {}).get(state_id)

    def held(self) -> list[str]:
        """Comparisons with states not yet committed or discarded."""
        return list(self._held)

    def commit_many(self, comparison_ids: Sequence[str]) -> None:
        """Write the held states of ``comparison_ids`` back, in one ``put_many``."""
        states = {sid: state for cid in comparison_ids for sid, state in self._held.pop(cid, {}).items()}
        if states:
            self.inner.put_many(states)

    def discard(self, comparison_id: str) -> None:
        self._held.pop(comparison_id, None)
