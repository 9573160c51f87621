"""The facts of the lifecycle log: what happened to a model version, as validated JSON events.

Each event is a fact already decided (by the governance consumer, the CLI, or
:func:`~governance.lifecycle.promotion.decide_transition`); :func:`~governance.lifecycle.registry.apply` folds them
into the registry. Every event names its model and version, carries a unique ``event_id`` (the idempotency key),
the time it happened (``at``, aware, normalised to UTC) and who caused it (``actor``).

=====================  ==============================================================================
kind                   fact
=====================  ==============================================================================
registered             a new version, in PROPOSAL, with its model type (spec 3.1 class), metadata and
                       features so far
metadata_recorded      the version's metadata (spec 4), replacing the previous one
features_recorded      the version's input features ``{name: dtype}`` and the catalog linkage verdict
document_recorded      one Markdown document of one stage (spec 9)
approval_recorded      an approver (GID-02, GID-08, ...) approved the version's move to a target stage
escalation_raised      an escalation on the version; it blocks promotion until resolved (and, when it has an
                       ``until``, at least until then: the ``blocks_until`` of an Escalation event)
escalation_resolved    that escalation resolved
artifact_recorded      the version's model artifact: its SHA-256 and, when signed, the verified manifest
                       (spec 6.3) with the key that signed it
proofpack_recorded     the version's ProofPack exists, with its ``PP-`` id
transitioned           a decided stage move, with the evidence the gates judged and, for a retired
                       serving production version, the previous version it restored
=====================  ==============================================================================

Guarantees: events are immutable; unknown fields are refused; :func:`event_digest` is a SHA-256 over
the canonical JSON (sorted keys), equal for equal events however their dicts were ordered.
"""

from __future__ import annotations

import hashlib
from datetime import UTC
from functools import cache
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

from governance.contract.stages import ModelType, Stage
from governance.crypto.canonical import canonical_bytes
from governance.errors import EventValidationError
from governance.lifecycle.machine import Assessment

__all__ = [
    "ApprovalRecorded",
    "DocumentRecorded",
    "EscalationRaised",
    "EscalationResolved",
    "ArtifactRecorded",
    "Event",
    "EventId",
    "LifecycleEvent",
    "FeaturesRecorded",
    "MetadataRecorded",
    "Name",
    "ProofPackRecorded",
    "Registered",
    "Transitioned",
    "UtcDatetime",
    "event_digest",
    "parse_event",
]

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
DocName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
ProofPackId = Annotated[str, StringConstraints(pattern=r"^PP-[A-Za-z0-9][A-Za-z0-9._-]*$")]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda value: value.astimezone(UTC))]


class LifecycleEvent(BaseModel):
    """Fields every lifecycle event carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: EventId
    at: UtcDatetime
    actor: Name = "system"
    model: Name
    version: Name


class Registered(LifecycleEvent):
    kind: Literal["registered"] = "registered"
    model_type: ModelType
    metadata: dict[str, JsonValue] = {}
    features: dict[str, str] = {}
    feature_linkage: Assessment | None = None


class MetadataRecorded(LifecycleEvent):
    kind: Literal["metadata_recorded"] = "metadata_recorded"
    metadata: dict[str, JsonValue]


class FeaturesRecorded(LifecycleEvent):
    kind: Literal["features_recorded"] = "features_recorded"
    features: dict[str, str]
    feature_linkage: Assessment


class DocumentRecorded(LifecycleEvent):
    kind: Literal["document_recorded"] = "document_recorded"
    stage: Stage
    name: DocName
    text: str


class ApprovalRecorded(LifecycleEvent):
    kind: Literal["approval_recorded"] = "approval_recorded"
    approver: Name
    target: Stage


class EscalationRaised(LifecycleEvent):
    kind: Literal["escalation_raised"] = "escalation_raised"
    escalation_id: EventId
    reason: Text
    until: UtcDatetime | None = None


class EscalationResolved(LifecycleEvent):
    kind: Literal["escalation_resolved"] = "escalation_resolved"
    escalation_id: EventId
    resolution: Text


class ArtifactRecorded(LifecycleEvent):
    """The version's artifact digest; ``manifest`` is its signed manifest record (``shadowgate sign``), verified by
    the consumer when recorded, with the signing key and time it carries (None: not signed yet)."""

    kind: Literal["artifact_recorded"] = "artifact_recorded"
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    manifest: dict[str, JsonValue] | None = None
    key_id: str | None = None
    signed_at: UtcDatetime | None = None


class ProofPackRecorded(LifecycleEvent):
    kind: Literal["proofpack_recorded"] = "proofpack_recorded"
    proofpack_id: ProofPackId


class Transitioned(LifecycleEvent):
    """A decided stage move; ``restored_version`` is the production version it restored, if any."""

    kind: Literal["transitioned"] = "transitioned"
    from_stage: Stage
    to_stage: Stage
    reason: str = ""
    rollback: StrictBool = False
    restored_version: Name | None = None
    approvals: tuple[str, ...] = ()
    shadow_checklist: Assessment | None = None
    staging_gate: Assessment | None = None


Event = Annotated[
    Registered
    | MetadataRecorded
    | FeaturesRecorded
    | DocumentRecorded
    | ApprovalRecorded
    | EscalationRaised
    | EscalationResolved
    | ArtifactRecorded
    | ProofPackRecorded
    | Transitioned,
    Field(discriminator="kind"),
]


@cache
def _event_adapter() -> TypeAdapter[Event]:
    return TypeAdapter(Event)


def parse_event(data: object) -> Event:
    """The event in a JSON object (dict); :class:`EventValidationError` naming the first bad field."""
    try:
        return _event_adapter().validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EventValidationError(f"lifecycle event refused: {where}: {first['msg']}", field=where) from exc


def event_digest(event: Event) -> str:
    """SHA-256 hex of the canonical JSON of ``event``."""
    return hashlib.sha256(canonical_bytes(event.model_dump(mode="json"))).hexdigest()
