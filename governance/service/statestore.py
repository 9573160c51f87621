"""The governance state materialised in Redis, and the lifecycle facts the streams worker reads from it.

Keys, all under ``<prefix>:gov:``::

    state                     JSON of the whole GovernanceState (registry, verdicts, positions, ...)
    version:<model>:<version> JSON of VersionFacts: what the evaluator needs about one version
    routing:<model>           JSON of the model's current Assignment (unsigned copy, for status)
    proofpack:<id>            the signed ProofPack record (JSON)

The governance consumer, the single writer, rewrites them in one MULTI/EXEC after each audit entry, so a
reader never sees the state of one entry mixed with another's. The log is the source of truth: the
consumer rebuilds the state from it on start and overwrites these keys.

Guarantees: :meth:`StateStore.load` returns exactly what was saved (pydantic JSON round trip) or None;
:func:`read_version_facts` costs one GET; :func:`version_facts` is pure.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import redis
from pydantic import BaseModel, ConfigDict, JsonValue

from governance.contract.comparison import ComparisonKey
from governance.errors import InfrastructureError
from governance.lifecycle.machine import ModelType, Stage
from governance.lifecycle.routing import Assignment, assignment_for
from governance.lifecycle.state import GovernanceState
from governance.policy.evaluator import EvaluationContext

__all__ = [
    "Monitor",
    "StateStore",
    "VersionFacts",
    "fetch_proofpack",
    "lifecycle_context",
    "production_monitor",
    "read_version_facts",
    "version_facts",
]

ContextSource = Callable[[ComparisonKey, datetime | None], EvaluationContext | None]
Monitor = Callable[[ComparisonKey], EvaluationContext | None]


class VersionFacts(BaseModel):
    """One model version's lifecycle facts, as the streams evaluator needs them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    version: str
    stage: Stage
    entered_stage_at: datetime
    model_type: ModelType
    open_escalations: list[str] = []
    escalations_raised_at: list[datetime] = []
    canary_share: float | None = None
    trained_at: datetime | None = None
    production_version: str | None = None
    rollback_to: str | None = None


def _trained_at(value: JsonValue) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.utcoffset() is not None else None


def version_facts(state: GovernanceState, model: str, version: str, canary_share: float) -> VersionFacts:
    """The facts of a registered version (PolicyViolation if it is not registered)."""
    record = state.registry.get(model, version)
    line = state.registry.models[model]
    serving = line.production == version
    return VersionFacts(
        model=model,
        version=version,
        stage=record.stage,
        entered_stage_at=record.entered_stage_at,
        model_type=record.model_type,
        open_escalations=list(record.open_escalations()),
        escalations_raised_at=sorted(e.raised_at for e in record.escalations.values()),
        canary_share=canary_share if record.stage is Stage.STAGING else None,
        trained_at=_trained_at(record.metadata.get("training_date")),
        production_version=line.production,
        rollback_to=line.previous_production[-1] if serving and line.previous_production else None,
    )


def _key(prefix: str, *parts: str) -> str:
    return ":".join((prefix, "gov", *parts))


class StateStore:
    """Saves and loads the materialised state under one key prefix."""

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def save(self, state: GovernanceState, canary_share: float, now: datetime) -> None:
        """Replace the materialised state with ``state`` in one transaction."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(_key(self.prefix, "state"), state.model_dump_json())
            for model, line in state.registry.models.items():
                assignment = assignment_for(state.registry, model, canary_share, state.seq, now)
                pipe.set(_key(self.prefix, "routing", model), assignment.model_dump_json())
                for version in line.versions:
                    facts = version_facts(state, model, version, canary_share)
                    pipe.set(_key(self.prefix, "version", model, version), facts.model_dump_json())
            for pack_id, record in state.proofpacks.items():
                pipe.set(_key(self.prefix, "proofpack", pack_id), orjson.dumps(record))
            pipe.execute()
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot save the governance state under {self.prefix}:gov: {exc}") from None

    def load(self) -> GovernanceState | None:
        """The saved state, or None when nothing was saved under this prefix."""
        try:
            raw = self.client.get(_key(self.prefix, "state"))
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot read the governance state under {self.prefix}:gov: {exc}") from None
        return None if raw is None else GovernanceState.model_validate_json(raw)

    def assignment(self, model: str) -> Assignment | None:
        raw = self.client.get(_key(self.prefix, "routing", model))
        return None if raw is None else Assignment.model_validate_json(raw)


def read_version_facts(client: redis.Redis[bytes], prefix: str, model: str, version: str) -> VersionFacts | None:
    """The facts of ``model@version`` as last materialised (None if the version is unknown)."""
    try:
        raw = client.get(_key(prefix, "version", model, version))
    except redis.RedisError as exc:
        raise InfrastructureError(f"cannot read lifecycle facts of {model}@{version}: {exc}") from None
    return None if raw is None else VersionFacts.model_validate_json(raw)


def fetch_proofpack(client: redis.Redis[bytes], prefix: str, proofpack_id: str) -> dict[str, JsonValue] | None:
    """The signed ProofPack record stored under ``proofpack_id`` (verify it before trusting it)."""
    raw = client.get(_key(prefix, "proofpack", proofpack_id))
    if raw is None:
        return None
    record = orjson.loads(raw)
    return record if isinstance(record, dict) else None


def lifecycle_context(
    client: redis.Redis[bytes],
    prefix: str,
    fallback: ContextSource,
    lookback_days: int = 7,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ContextSource:
    """A ``ContextSource`` for the streams evaluator: the candidate's facts from Redis, else ``fallback``.

    Used when the candidate version is registered and in SHADOW (shadow role) or STAGING (canary role);
    escalations count those open plus those raised in the last ``lookback_days``. An unregistered
    candidate gets ``fallback``; a registered one in any other stage (a standby, a retired version still
    scoring) is not judged on its candidate side at all (None).
    """

    def context(key: ComparisonKey, first_event: datetime | None) -> EvaluationContext | None:
        facts = read_version_facts(client, prefix, key.model, key.candidate_version)
        expected = Stage.SHADOW if key.role == "shadow" else Stage.STAGING
        if facts is None:
            return fallback(key, first_event)
        if facts.stage is not expected:
            return None
        since = clock() - timedelta(days=lookback_days)
        recent = {i for i, at in enumerate(facts.escalations_raised_at) if at >= since}
        production = read_version_facts(client, prefix, key.model, key.production_version)
        return EvaluationContext(
            key=key,
            stage="SHADOW" if expected is Stage.SHADOW else "STAGING",
            stage_started_at=facts.entered_stage_at,
            model_type=facts.model_type,
            integrity_violations_7d=None,
            escalations_7d=max(len(recent), len(facts.open_escalations)),
            canary_share=facts.canary_share,
            trained_at=facts.trained_at,
            rollback_to=production.rollback_to if production is not None else None,
        )

    return context


def production_monitor(client: redis.Redis[bytes], prefix: str) -> Monitor:
    """A ``Monitor`` for the streams evaluator: the serving PRODUCTION version of a comparison, if it is one.

    The production side of every comparison is the version serving clients; while it is the model's
    serving PRODUCTION version, the evaluator also runs the production checks (spec 2.1) and the
    production-side rollback triggers (8.1) on it, whatever stage the candidate is in.
    """

    def monitor(key: ComparisonKey) -> EvaluationContext | None:
        facts = read_version_facts(client, prefix, key.model, key.production_version)
        if facts is None or facts.stage is not Stage.PRODUCTION:
            return None
        if facts.production_version not in (None, key.production_version):
            return None  # a previous production version still scoring: not the one serving
        return EvaluationContext(key=key, stage="PRODUCTION", trained_at=facts.trained_at,
                                 rollback_to=facts.rollback_to)

    return monitor
