"""The worker's view of the lifecycle: evaluation contexts built from the facts the governance consumer keeps.

The consumer materialises one :class:`~governance.contract.facts.VersionFacts` per model version in Redis;
these factories turn them into the :class:`~governance.policy.evaluator.EvaluationContext` the evaluator
needs, so the worker reads the lifecycle without importing any of the lifecycle service.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis

from governance.contract.comparison import ComparisonKey
from governance.contract.facts import read_version_facts
from governance.contract.stages import Stage
from governance.policy.evaluator import ContextSource, EvaluationContext, Monitor

__all__ = ["lifecycle_context", "production_monitor"]


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
