"""Governance events: the schemas the evaluator emits and the governance consumer reads.

Six event types share one envelope (:class:`_Event`): ``event_id`` (UUID), ``ts`` and ``expires_at``
(timezone-aware, normalised to UTC; a consumer refuses an expired event as a replay), ``model`` and
``versions``, the ``evidence`` behind the decision (checks with values and thresholds, window bounds with
Kafka offsets, statistics, and the policy hash), and an optional ``signature`` that
``governance.crypto`` fills over :meth:`_Event.canonical_payload`.

=======================  =========================  ==================================================
type                     topic (default)            carries
=======================  =========================  ==================================================
GateReady                shadow.gates               gate, stage: every check passed or only warned
GateBlocked              shadow.gates               gate, stage, verdict, the failing checks
RollbackTrigger          shadow.rollbacks           trigger, action, reason, from / to version
Alert                    shadow.alerts              severity, dedup key, summary, runbook hint
Escalation               (input, via the CLI)       raised_by, reason, blocks_until (promotion blocked)
RecalibrationRequested   shadow.alerts              calibration drift and its limit
=======================  =========================  ==================================================

Guarantees: validation is strict (unknown fields, wrong types, NaN and naive datetimes are refused), so a
consumer fails closed; ``parse_event(event.to_json()) == event``; ``canonical_payload`` is the
deterministic byte form of everything but the signature (governance.crypto's canonical JSON), equal
before and after a JSON round trip, so a signature made by the producer verifies at the consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal, Self, get_args
from uuid import UUID

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from governance.contract.findings import Action, AlertSeverity, Check, GateVerdict, StatResult, WindowRef
from governance.contract.stages import GatedStage
from governance.crypto.canonical import canonical_bytes
from governance.errors import EventValidationError

__all__ = [
    "Alert",
    "Escalation",
    "EventType",
    "Evidence",
    "GateBlocked",
    "GateReady",
    "GovernanceEvent",
    "RecalibrationRequested",
    "RollbackTrigger",
    "Versions",
    "parse_event",
]

EventType = Literal["GateReady", "GateBlocked", "RollbackTrigger", "Alert", "Escalation", "RecalibrationRequested"]
_Text = Annotated[str, Field(min_length=1, max_length=512)]
_PolicyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Versions(_Frozen):
    """The production version and, for a comparison, the candidate and its role."""

    production: _Text
    candidate: _Text | None = None
    role: Literal["shadow", "canary"] | None = None


class Evidence(_Frozen):
    """What a decision rests on; ``policy_hash`` is :meth:`governance.policy.document.Policy.hash`."""

    policy_hash: _PolicyHash
    checks: list[Check] = Field(default_factory=list)
    windows: list[WindowRef] = Field(default_factory=list)
    statistics: list[StatResult] = Field(default_factory=list)


class _Event(_Frozen):
    event_id: UUID
    ts: AwareDatetime
    expires_at: AwareDatetime
    model: _Text
    versions: Versions
    evidence: Evidence
    signature: dict[str, Any] | None = None

    @field_validator("ts", "expires_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _expiry_after_ts(self) -> Self:
        if self.expires_at <= self.ts:
            raise ValueError(f"expires_at {self.expires_at.isoformat()} must be after ts {self.ts.isoformat()}")
        return self

    def canonical_payload(self) -> bytes:
        """The bytes a signature covers: canonical JSON of every field except ``signature``."""
        return canonical_bytes(self.model_dump(mode="json", exclude={"signature"}))

    def to_json(self) -> bytes:
        """The wire form (UTF-8 JSON, sorted keys), signature included."""
        return orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


class GateReady(_Event):
    """A promotion gate turned READY: every check passed or only warned."""

    type: Literal["GateReady"] = "GateReady"
    gate: _Text
    stage: GatedStage


class GateBlocked(_Event):
    """A promotion gate is not READY; ``failing_checks`` are the checks that keep it so."""

    type: Literal["GateBlocked"] = "GateBlocked"
    gate: _Text
    stage: GatedStage
    verdict: GateVerdict
    failing_checks: Annotated[list[Check], Field(min_length=1)]

    @field_validator("verdict")
    @classmethod
    def _not_ready(cls, value: GateVerdict) -> GateVerdict:
        if value == "READY":
            raise ValueError("a GateBlocked event cannot carry verdict READY (emit GateReady)")
        return value


class RollbackTrigger(_Event):
    """A rollback trigger of spec 8.1 fired; ``to_version`` None means no known target (decide manually)."""

    type: Literal["RollbackTrigger"] = "RollbackTrigger"
    trigger: _Text
    action: Action
    reason: _Text
    from_version: _Text
    to_version: _Text | None


class Alert(_Event):
    """Something a person should look at; consumers page at most once per ``dedup_key``."""

    type: Literal["Alert"] = "Alert"
    severity: AlertSeverity
    dedup_key: _Text
    summary: _Text
    runbook: _Text


class Escalation(_Event):
    """A person escalated a model version: promotion is blocked until ``blocks_until`` (spec 3.2 item 6)."""

    type: Literal["Escalation"] = "Escalation"
    raised_by: _Text
    reason: _Text
    blocks_until: AwareDatetime

    @field_validator("blocks_until")
    @classmethod
    def _utc_until(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class RecalibrationRequested(_Event):
    """Production calibration drift passed its limit (spec 2.1: trigger re-calibration)."""

    type: Literal["RecalibrationRequested"] = "RecalibrationRequested"
    calibration_drift: float
    threshold: float
    reason: _Text


GovernanceEvent = Annotated[
    GateReady | GateBlocked | RollbackTrigger | Alert | Escalation | RecalibrationRequested,
    Field(discriminator="type"),
]


@cache
def _adapter() -> TypeAdapter[GovernanceEvent]:
    # Built on first use, not at import time.
    return TypeAdapter(GovernanceEvent)


def parse_event(data: bytes | str) -> GovernanceEvent:
    """Validate one event from its JSON bytes; EventValidationError names the first offending field."""
    try:
        return _adapter().validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if loc and loc[0] in get_args(EventType):  # the union's tag, not a field of the event
            loc = loc[1:]
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = ["type"]
        path = ".".join(loc) or "<event>"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise EventValidationError(f"invalid governance event: {path}: {first['msg']}{more}", field=path) from None
