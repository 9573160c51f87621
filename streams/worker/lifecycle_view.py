"""The worker's view of the lifecycle: evaluation contexts built from the facts the governance consumer keeps.

The consumer materialises one :class:`~governance.contract.facts.VersionFacts` per model version in Redis;
these factories turn them into the :class:`~governance.policy.evaluator.EvaluationContext` the evaluator
needs, so the worker reads the lifecycle without importing any of the lifecycle service.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import redis

from governance.contract.comparison import ComparisonKey
from governance.contract.facts import VersionFacts, gov_key, read_version_facts
from governance.contract.stages import Stage
from governance.errors import InfrastructureError
from governance.policy.evaluator import ContextSource, EvaluationContext, Monitor

__all__ = ["RoundFacts", "lifecycle_context", "production_monitor"]


class RoundFacts:
    """The lifecycle facts of an evaluation round's comparisons, read in ONE ``MGET`` before the round.

    :meth:`prefetch` reads the facts of every candidate and production version of the round's comparisons;
    until :meth:`clear` (the end of the round) :meth:`read` answers from them, as the facts stood when the round
    began, instead of one ``GET`` per comparison and side. Outside a round, and for a version not prefetched,
    :meth:`read` reads Redis. Facts are parsed when read, so a corrupt one fails its comparison only.
    """

    def __init__(self, client: redis.Redis[bytes], prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._raw: dict[tuple[str, str], bytes | None] | None = None

    def prefetch(self, keys: Sequence[ComparisonKey]) -> None:
        wanted = list(dict.fromkeys((k.model, v) for k in keys for v in (k.candidate_version, k.production_version)))
        if not wanted:
            self._raw = {}
            return
        try:
            values = self._client.mget([gov_key(self._prefix, "version", model, version) for model, version in wanted])
        except redis.RedisError as exc:
            raise InfrastructureError(f"cannot read the lifecycle facts of {len(wanted)} versions: {exc}") from None
        self._raw = dict(zip(wanted, values, strict=True))

    def clear(self) -> None:
        self._raw = None

    def read(self, model: str, version: str) -> VersionFacts | None:
        if self._raw is not None and (model, version) in self._raw:
            raw = self._raw[(model, version)]
            return None if raw is None else VersionFacts.model_validate_json(raw)
        return read_version_facts(self._client, self._prefix, model, version)


def lifecycle_context(
    client: redis.Redis[bytes],
    prefix: str,
    fallback: ContextSource,
    lookback_days: int = 7,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    facts: RoundFacts | None = None,
) -> ContextSource:
    """A ``ContextSource`` for the streams evaluator: the candidate's facts from Redis, else ``fallback``.

    Used when the candidate version is registered and in SHADOW (shadow role) or STAGING (canary role);
    escalations count those open plus those raised in the last ``lookback_days``. An unregistered
    candidate gets ``fallback``; a registered one in any other stage (a standby, a retired version still
    scoring) is not judged on its candidate side at all (None). ``facts``: read through it (a round's batch).
    """
    read = (facts or RoundFacts(client, prefix)).read

    def context(key: ComparisonKey, first_event: datetime | None) -> EvaluationContext | None:
        candidate = read(key.model, key.candidate_version)
        expected = Stage.SHADOW if key.role == "shadow" else Stage.STAGING
        if candidate is None:
            return fallback(key, first_event)
        if candidate.stage is not expected:
            return None
        since = clock() - timedelta(days=lookback_days)
        recent = {i for i, at in enumerate(candidate.escalations_raised_at) if at >= since}
        production = read(key.model, key.production_version)
        return EvaluationContext(
            key=key,
            stage="SHADOW" if expected is Stage.SHADOW else "STAGING",
            stage_started_at=candidate.entered_stage_at,
            model_type=candidate.model_type,
            integrity_violations_7d=None,
            escalations_7d=max(len(recent), len(candidate.open_escalations)),
            canary_share=candidate.canary_share,
            trained_at=candidate.trained_at,
            rollback_to=production.rollback_to if production is not None else None,
        )

    return context


def production_monitor(client: redis.Redis[bytes], prefix: str, facts: RoundFacts | None = None) -> Monitor:
    """A ``Monitor`` for the streams evaluator: the serving PRODUCTION version of a comparison, if it is one.

    The production side of every comparison is the version serving clients; while it is the model's
    serving PRODUCTION version, the evaluator also runs the production checks (spec 2.1) and the
    production-side rollback triggers (8.1) on it, whatever stage the candidate is in. ``facts``: read through it.
    """
    read = (facts or RoundFacts(client, prefix)).read

    def monitor(key: ComparisonKey) -> EvaluationContext | None:
        serving = read(key.model, key.production_version)
        if serving is None or serving.stage is not Stage.PRODUCTION:
            return None
        if serving.production_version not in (None, key.production_version):
            return None  # a previous production version still scoring: not the one serving
        return EvaluationContext(key=key, stage="PRODUCTION", trained_at=serving.trained_at,
                                 rollback_to=serving.rollback_to)

    return monitor
