"""Lifecycle facts as the worker reads them: one Redis key per model version, written by the governance consumer.

Keys (all under ``<prefix>:gov:``, see :mod:`governance.service.statestore` for the rest)::

    version:<model>:<version> JSON of VersionFacts: what the evaluator needs about one version

The consumer, the single writer, rewrites them in one MULTI/EXEC after each audit entry. The worker only
reads them (:func:`read_version_facts`, one GET), so it needs nothing of the lifecycle service.
"""

from __future__ import annotations

from datetime import datetime

import redis
from pydantic import BaseModel, ConfigDict

from governance.contract.stages import ModelType, Stage
from governance.errors import InfrastructureError

__all__ = ["VersionFacts", "gov_key", "read_version_facts"]


def gov_key(prefix: str, *parts: str) -> str:
    """The Redis key of a governance record: ``<prefix>:gov:<part>:<part>...``."""
    return ":".join((prefix, "gov", *parts))


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


def read_version_facts(client: redis.Redis[bytes], prefix: str, model: str, version: str) -> VersionFacts | None:
    """The facts of ``model@version`` as last materialised (None if the version is unknown)."""
    try:
        raw = client.get(gov_key(prefix, "version", model, version))
    except redis.RedisError as exc:
        raise InfrastructureError(f"cannot read lifecycle facts of {model}@{version}: {exc}") from None
    return None if raw is None else VersionFacts.model_validate_json(raw)
