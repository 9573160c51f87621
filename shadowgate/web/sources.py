"""Where the status service reads from: the worker's windows and the governance state, both in Redis.

:class:`Sources` is synchronous (redis-py, numpy): the web handlers call it in a worker thread. Every read
goes through the function the CLI uses for the same figures:

==================  =========================================================  ==============================
API                 read with                                                  same as
==================  =========================================================  ==============================
board               ``governance.lifecycle.report.status`` on the saved state  ``shadowgate model status``
comparisons         ``streams.worker.reading.read_windows``                    ``shadowgate windows``
series              ``WindowStore.read_many`` of consecutive windows, then     the window of the same range
                    ``streams.fold.readout.metrics_from_fields``
history             the registry's history and rollback records                ``shadowgate model history``
proofpack           ``verify_proofpack`` of the signed record in Redis         ``shadowgate model proofpack``
==================  =========================================================  ==============================

Guarantees: read-only (no Redis write, no Kafka write); a ProofPack is returned only after its ML-DSA
signature verified against the system trust store; the series of one comparison comes from one consistent
read (``read_many``: one Redis ``MULTI``), so a batch applied meanwhile is in every point or in none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from governance.contract.comparison import ComparisonKey
from governance.contract.connections import RedisTarget, redis_client
from governance.contract.stages import Stage
from governance.errors import ConfigError
from governance.lifecycle.identities import Trust
from governance.lifecycle.proofpack import ProofPack, verify_proofpack
from governance.lifecycle.report import gate_figures, status
from governance.lifecycle.state import GovernanceState
from governance.policy.document import Policy
from governance.service.statestore import StateStore
from shadowgate.web.views import SERIES_METRICS, Verdict, series_document, thresholds, verdict
from streams.fold.aggregate import AggregateConfig
from streams.fold.readout import metrics_from_fields
from streams.state.redis_store import RedisWindowStore
from streams.state.windows import MINUTE_S
from streams.worker.reading import DEFAULT_WINDOWS, comparison_keys, read_windows

__all__ = ["MAX_POINTS", "SERIES_SPANS", "SERIES_STEPS", "Sources", "parse_duration"]

#: Spans a chart may cover: the minute slots are kept 26 h, so a series never needs coarser slots.
SERIES_SPANS = {"1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600}
SERIES_STEPS = {"1m": MINUTE_S, "5m": 5 * MINUTE_S, "15m": 15 * MINUTE_S, "1h": 3600}
MAX_POINTS = 360


def parse_duration(text: str, allowed: dict[str, int], what: str) -> int:
    """Seconds of one of the ``allowed`` names; ConfigError listing them otherwise."""
    if text not in allowed:
        raise ConfigError(f"{what} {text!r}: use one of {', '.join(allowed)}")
    return allowed[text]


@dataclass
class Sources:
    """Readers over one Redis (``prefix``) with the policy and trust store the page judges and verifies with."""

    client: redis.Redis[bytes]
    prefix: str
    policy: Policy
    trust: Trust
    store: RedisWindowStore
    config: AggregateConfig

    @classmethod
    def connect(cls, redis_url: RedisTarget, prefix: str, policy: Policy, trust: Trust) -> Sources:
        client: redis.Redis[bytes] = redis_client(redis_url)
        return cls(client, prefix, policy, trust, RedisWindowStore(client, prefix), AggregateConfig())

    def close(self) -> None:
        self.client.close()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def state(self) -> GovernanceState:
        """The governance state as the consumer last saved it (empty before the first entry)."""
        return StateStore(self.client, self.prefix).load() or GovernanceState()

    def board(self, now: datetime, model: str | None = None) -> dict[str, Any]:
        """Every model version's status row (``model status --json``) and every model's routing."""
        state = self.state()
        rows = status(state, self.policy, now, model)
        store = StateStore(self.client, self.prefix)
        routing = {}
        for name in sorted({row.model for row in rows}):
            assignment = store.assignment(name)
            routing[name] = None if assignment is None else assignment.model_dump(mode="json")
        return {
            "models": [{**row.model_dump(mode="json"), "time_in_stage": row.time_in_stage,
                        **gate_figures(state, row.model, row.version, row.stage.value)} for row in rows],
            "routing": routing,
            "audit_seq": state.seq,
            "policy": {"policy_id": self.policy.policy_id, "version": self.policy.version,
                       "hash": self.policy.hash()},
            "checked_at": now.isoformat(),
        }

    def comparisons(self, model: str | None = None, windows: tuple[str, ...] = DEFAULT_WINDOWS) -> dict[str, Any]:
        """``shadowgate windows --json`` of ``model`` (every model when None), with each comparison's id."""
        doc = read_windows(self.store, model=model, windows=windows)
        for comp in doc["comparisons"]:
            comp["id"] = ComparisonKey(comp["model"], comp["production_version"], comp["candidate_version"],
                                       comp["role"]).as_id()
        return doc

    def comparison_ids(self) -> list[str]:
        return [key.as_id() for key in comparison_keys(self.store)]

    def series(self, comparison_id: str, span_s: int, step_s: int) -> dict[str, Any]:
        """The comparison's metrics over ``span_s`` in windows of ``step_s`` ending at its newest event.

        The last point is the window ``[end - step_s, end)`` where ``end`` closes the minute of the newest
        event: the same range as the named window of that length (``5m`` for a 5-minute step).
        """
        key = _key(comparison_id)
        store = self.store
        meta = store.meta(key.as_id())
        if meta is None:
            raise ConfigError(f"comparison {comparison_id!r} has no windows")
        if span_s % step_s or span_s // step_s > MAX_POINTS:
            raise ConfigError(f"span {span_s} s in steps of {step_s} s: at most {MAX_POINTS} whole steps")
        now_s = meta.last_event_ms // 1000
        end_s = now_s - now_s % MINUTE_S + MINUTE_S  # as streams.state.windows.named_window ends a window
        ends = [end_s - i * step_s for i in range(span_s // step_s - 1, -1, -1)]
        reads = store.read_many(key.as_id(), [(end - step_s, end) for end in ends], now_s)
        metrics = [metrics_from_fields(read.fields, self.config)[0] if read.fields else {} for read in reads]
        doc = series_document(ends, step_s, metrics)
        limits = [t for t in thresholds(self.policy) if key.role in t.applies_to and t.metric in SERIES_METRICS]
        doc.update(id=key.as_id(), model=key.model, production_version=key.production_version,
                   candidate_version=key.candidate_version, role=key.role,
                   latest_event_ts=datetime.fromtimestamp(meta.last_event_ms / 1000, UTC).isoformat(),
                   thresholds=[t.model_dump(mode="json") for t in limits])
        return doc

    def history(self, model: str, version: str | None = None) -> dict[str, Any] | None:
        """``model history --json`` of ``model`` (None when it is not registered)."""
        state = self.state()
        line = state.registry.models.get(model)
        if line is None:
            return None
        events = sorted(((v, h) for v, record in line.versions.items() if version in (None, v) for h in record.history),
                        key=lambda item: (item[1].at, item[1].event_id))
        rollbacks = [r for r in state.rollbacks if r.model == model and version in (None, r.from_version)]
        return {"history": [{"version": v, **h.model_dump(mode="json")} for v, h in events],
                "rollbacks": [r.model_dump(mode="json") for r in rollbacks]}

    def proofpacks(self) -> list[dict[str, Any]]:
        """The ProofPacks the state holds: id, model, version, generated_at (claims; open one to verify it)."""
        out = []
        for pack_id, record in sorted(self.state().proofpacks.items()):
            payload = record.get("payload")
            if isinstance(payload, dict):
                out.append({"proofpack_id": pack_id, "model": payload.get("model"),
                            "version": payload.get("version"), "generated_at": payload.get("generated_at")})
        return out

    def proofpack(self, model: str, version: str, now: datetime) -> tuple[ProofPack, dict[str, Any]] | None:
        """The verified ProofPack of ``model@version`` and its signed record (None when it has none).

        Raises :class:`~governance.errors.VerificationError` when the record does not verify.
        """
        state = self.state()
        line = state.registry.models.get(model)
        record = line.versions.get(version) if line is not None else None
        signed = state.proofpacks.get(record.proofpack_id) if record is not None and record.proofpack_id else None
        if signed is None:
            return None
        pack = verify_proofpack(dict(signed), self.trust.system, now, self.trust.phase(now))
        return pack, dict(signed)

    def verdict(self, model: str, version: str, now: datetime, stage: Stage | None = None) -> Verdict:
        return verdict(self.state(), model, version, now, stage)


def _key(comparison_id: str) -> ComparisonKey:
    try:
        return ComparisonKey.from_id(comparison_id)
    except ValueError:
        raise ConfigError(f"comparison {comparison_id!r}: expected MODEL|PRODUCTION|CANDIDATE|ROLE") from None

