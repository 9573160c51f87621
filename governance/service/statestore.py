"""The governance state materialised in Redis by its single writer, the governance consumer.

What the streams worker reads of it (the per-version lifecycle facts) is a contract of its own,
:mod:`governance.contract.facts`; this module writes those facts and the rest.

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

from datetime import UTC, datetime

import orjson
import redis
from pydantic import JsonValue

from governance.contract.facts import VersionFacts, gov_key
from governance.contract.stages import Stage
from governance.errors import InfrastructureError
from governance.lifecycle.routing import Assignment, assignment_for
from governance.lifecycle.state import GovernanceState

__all__ = [
    "StateStore",
    "fetch_proofpack",
    "version_facts",
]



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




class StateStore:
    """Saves and loads the materialised state under one key prefix."""

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def save(self, state: GovernanceState, canary_share: float, now: datetime) -> None:
        """Replace the materialised state with ``state`` in one transaction."""
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(gov_key(self.prefix, "state"), state.model_dump_json())
            for model, line in state.registry.models.items():
                assignment = assignment_for(state.registry, model, canary_share, state.seq, now)
                pipe.set(gov_key(self.prefix, "routing", model), assignment.model_dump_json())
                for version in line.versions:
                    facts = version_facts(state, model, version, canary_share)
                    pipe.set(gov_key(self.prefix, "version", model, version), facts.model_dump_json())
            for pack_id, record in state.proofpacks.items():
                pipe.set(gov_key(self.prefix, "proofpack", pack_id), orjson.dumps(record))
            pipe.execute()
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot save the governance state under {self.prefix}:gov: {exc}") from None

    def load(self) -> GovernanceState | None:
        """The saved state, or None when nothing was saved under this prefix."""
        try:
            raw = self.client.get(gov_key(self.prefix, "state"))
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot read the governance state under {self.prefix}:gov: {exc}") from None
        return None if raw is None else GovernanceState.model_validate_json(raw)

    def assignment(self, model: str) -> Assignment | None:
        raw = self.client.get(gov_key(self.prefix, "routing", model))
        return None if raw is None else Assignment.model_validate_json(raw)


def fetch_proofpack(client: redis.Redis[bytes], prefix: str, proofpack_id: str) -> dict[str, JsonValue] | None:
    """The signed ProofPack record stored under ``proofpack_id`` (verify it before trusting it)."""
    raw = client.get(gov_key(prefix, "proofpack", proofpack_id))
    if raw is None:
        return None
    record = orjson.loads(raw)
    return record if isinstance(record, dict) else None
