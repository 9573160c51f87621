"""The model registry as an event-sourced value: ``apply(state, event) -> state``, rebuilt from its log.

Events are facts already decided (the governance consumer appends them to the lifecycle log after the
gates passed); folding them does not re-run the gates, so replaying the log under a later policy gives
the same registry. It does re-check what any fact must respect: the transition table, the stage the
version is in (a stale decision is refused), one canary per model, the production chain. Commands become
facts through :func:`~governance.lifecycle.promotion.decide_transition`, which runs the gates of
:mod:`governance.lifecycle.machine` on the registry's evidence and returns a :class:`Transitioned` fact or raises
:class:`PolicyViolation` naming every rule broken.

Production chain: promoting a version to PRODUCTION pushes the serving one onto
``previous_production`` (it stays in PRODUCTION, frozen, ready to be restored). Retiring the serving
version restores the most recent previous one (or the one named), which is how PRODUCTION -> RETIRED
rolls back without any move outside the transition table.

Guarantees:

* pure and deterministic: the result depends only on the state and the event (time is the event's
  ``at``); the input state is never mutated.
* idempotent by event id: an id already applied returns the state unchanged; the same id with different
  content raises :class:`EventValidationError` (a forged or corrupted redelivery).
* JSON-serialisable: ``Registry.model_dump(mode="json")`` / ``Registry.model_validate`` round-trip
  exactly, so the state can be materialised in Redis and compared with a rebuild from the log.
* cost: each apply copies the state (O(size)); replaying n events is O(n * size), fine for a registry.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, JsonValue

from governance.contract.stages import ModelType, Stage
from governance.errors import EventValidationError, PolicyViolation
from governance.lifecycle.ledger import (
    ApprovalRecorded,
    ArtifactRecorded,
    DocumentRecorded,
    EscalationRaised,
    EscalationResolved,
    Event,
    EventId,
    FeaturesRecorded,
    LifecycleEvent,
    MetadataRecorded,
    Name,
    ProofPackRecorded,
    Registered,
    Transitioned,
    UtcDatetime,
    event_digest,
)
from governance.lifecycle.machine import ALLOWED_TRANSITIONS, FORWARD, Assessment

__all__ = ["Approval", "Artifact", "Escalation", "HistoryEntry", "ModelLine", "ModelVersion", "Registry", "apply",
           "replay"]

# Metadata and features are settled once a version enters SHADOW, whose gate judged them.
_EDITABLE = (Stage.PROPOSAL, Stage.PROTOTYPE, Stage.TRAINING)


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Approval(_State):
    approver: Name
    target: Stage
    event_id: EventId
    at: UtcDatetime


class Escalation(_State):
    """An escalation: it blocks promotion until resolved and, with ``until``, at least until then."""

    reason: str
    raised_at: UtcDatetime
    resolved_at: UtcDatetime | None = None
    resolution: str = ""
    until: UtcDatetime | None = None


class Artifact(_State):
    """The version's artifact: its SHA-256 and, once signed, the verified manifest and who signed it when."""

    sha256: str
    manifest: dict[str, JsonValue] | None = None
    key_id: str | None = None
    signed_at: UtcDatetime | None = None


class HistoryEntry(_State):
    event_id: EventId
    at: UtcDatetime
    kind: str
    actor: str
    from_stage: Stage | None = None
    to_stage: Stage | None = None
    detail: str = ""


class ModelVersion(_State):
    """One registered version of one model and everything its gates judge."""

    model: Name
    version: Name
    model_type: ModelType
    metadata: dict[str, JsonValue] = {}
    features: dict[str, str] = {}
    feature_linkage: Assessment | None = None
    documents: dict[Stage, dict[str, str]] = {}
    stage: Stage
    entered_stage_at: UtcDatetime
    approvals: list[Approval] = []
    escalations: dict[str, Escalation] = {}
    proofpack_id: str | None = None
    artifact: Artifact | None = None
    history: list[HistoryEntry] = []

    def open_escalations(self) -> tuple[str, ...]:
        """Ids of escalations raised and not resolved, sorted."""
        return tuple(sorted(i for i, e in self.escalations.items() if e.resolved_at is None))

    def held_escalations(self, now: datetime) -> tuple[tuple[str, datetime], ...]:
        """``(id, until)`` of resolved escalations that still block at ``now`` (their ``until`` is later), sorted."""
        return tuple(sorted((i, e.until) for i, e in self.escalations.items()
                            if e.resolved_at is not None and e.until is not None and now < e.until))

    def blocking_escalations(self, now: datetime) -> tuple[str, ...]:
        """Ids of every escalation that blocks promotion at ``now``: open ones and held ones, sorted."""
        return tuple(sorted({*self.open_escalations(), *(i for i, _ in self.held_escalations(now))}))

    def approvers_for(self, target: Stage) -> frozenset[str]:
        """Approver ids that approved this version's move to ``target``."""
        return frozenset(a.approver for a in self.approvals if a.target is target)


class ModelLine(_State):
    """All versions of one model, with the serving production version and the ones it superseded."""

    production: str | None = None
    previous_production: list[str] = []
    versions: dict[str, ModelVersion] = {}


class Registry(_State):
    """Every model line, and the digest of every event applied (the idempotency record)."""

    models: dict[str, ModelLine] = {}
    applied: dict[str, str] = {}

    def is_applied(self, event_id: str) -> bool:
        """Whether an event with this id has been applied (check before deciding on a redelivery)."""
        return event_id in self.applied

    def get(self, model: str, version: str) -> ModelVersion:
        """The version record; :class:`PolicyViolation` naming it when it is not registered."""
        record = self.models.get(model, ModelLine()).versions.get(version)
        if record is None:
            rule = f"model {model!r} version {version!r} is not registered; register it first"
            raise PolicyViolation(rule, [rule])
        return record


def _refuse(event: LifecycleEvent, rule: str) -> PolicyViolation:
    return PolicyViolation(f"{event.model}@{event.version} event {event.event_id} refused: {rule}", [rule])


def _history(record: ModelVersion, event: LifecycleEvent, detail: str, to: Stage | None = None) -> None:
    record.history.append(
        HistoryEntry(
            event_id=event.event_id,
            at=event.at,
            kind=getattr(event, "kind", "event"),
            actor=event.actor,
            from_stage=record.stage if to is not None else None,
            to_stage=to,
            detail=detail,
        )
    )


def _order(stage: Stage) -> int:
    return len(FORWARD) if stage is Stage.RETIRED else FORWARD.index(stage)


# ----------------------------------------------------------------------------------------------- apply


def _fold_registered(registry: Registry, event: Registered) -> None:
    line = registry.models.setdefault(event.model, ModelLine())
    if event.version in line.versions:
        raise _refuse(event, "this version is already registered; register a new version instead")
    record = ModelVersion(
        model=event.model,
        version=event.version,
        model_type=event.model_type,
        metadata=dict(event.metadata),
        features=dict(event.features),
        feature_linkage=event.feature_linkage,
        stage=Stage.PROPOSAL,
        entered_stage_at=event.at,
    )
    _history(record, event, f"registered as {event.model_type} in PROPOSAL")
    line.versions[event.version] = record


def _fold_editable(registry: Registry, event: MetadataRecorded | FeaturesRecorded) -> None:
    record = registry.get(event.model, event.version)
    if record.stage not in _EDITABLE:
        raise _refuse(event, f"metadata and features are settled once the version left TRAINING (it is {record.stage})")
    if isinstance(event, MetadataRecorded):
        record.metadata = dict(event.metadata)
        _history(record, event, f"metadata recorded ({len(event.metadata)} fields)")
    else:
        record.features, record.feature_linkage = dict(event.features), event.feature_linkage
        _history(
            record,
            event,
            f"{len(event.features)} features recorded, linkage passed={event.feature_linkage.passed}",
        )


def _fold_document(registry: Registry, event: DocumentRecorded) -> None:
    record = registry.get(event.model, event.version)
    if _order(event.stage) < _order(record.stage):
        # The gate that left that stage judged its documents; rewriting them afterwards would rewrite history.
        raise _refuse(event, f"{event.stage} documentation is closed: the version is already in {record.stage}")
    replaced = event.name in record.documents.get(event.stage, {})
    record.documents.setdefault(event.stage, {})[event.name] = event.text
    _history(record, event, f"{event.stage} document {event.name!r} {'replaced' if replaced else 'recorded'}")


def _fold_approval(registry: Registry, event: ApprovalRecorded) -> None:
    record = registry.get(event.model, event.version)
    if event.target is Stage.RETIRED or _order(event.target) <= _order(record.stage):
        raise _refuse(event, f"an approval for {event.target} cannot apply to a version in {record.stage}")
    record.approvals.append(
        Approval(approver=event.approver, target=event.target, event_id=event.event_id, at=event.at)
    )
    _history(record, event, f"{event.approver} approved the move to {event.target}")


def _fold_escalation(registry: Registry, event: EscalationRaised | EscalationResolved) -> None:
    record = registry.get(event.model, event.version)
    existing = record.escalations.get(event.escalation_id)
    if isinstance(event, EscalationRaised):
        if existing is not None:
            raise _refuse(event, f"escalation {event.escalation_id!r} was already raised; use a new id")
        record.escalations[event.escalation_id] = Escalation(reason=event.reason, raised_at=event.at,
                                                             until=event.until)
        until = f" (blocks at least until {event.until.isoformat()})" if event.until is not None else ""
        _history(record, event, f"escalation {event.escalation_id!r} raised: {event.reason}{until}")
        return
    if existing is None or existing.resolved_at is not None:
        raise _refuse(event, f"escalation {event.escalation_id!r} is not open; nothing to resolve")
    existing.resolved_at, existing.resolution = event.at, event.resolution
    _history(record, event, f"escalation {event.escalation_id!r} resolved: {event.resolution}")


def _fold_artifact(registry: Registry, event: ArtifactRecorded) -> None:
    record = registry.get(event.model, event.version)
    current = record.artifact
    same = current is not None and current.sha256 == event.sha256
    if record.stage not in _EDITABLE and not same:
        raise _refuse(event, f"the artifact is settled once the version left TRAINING (it is {record.stage}); "
                             "register a new version instead")
    if event.manifest is None and same and current is not None:
        return  # the same artifact again, unsigned this time: the signature already recorded stays
    record.artifact = Artifact(sha256=event.sha256, manifest=event.manifest, key_id=event.key_id,
                               signed_at=event.signed_at)
    signed = (f", signed by {event.key_id} at {event.signed_at.isoformat()}" if event.key_id and event.signed_at
              else ", no signed manifest")
    _history(record, event, f"artifact sha256 {event.sha256[:16]}... recorded{signed}")


def _fold_proofpack(registry: Registry, event: ProofPackRecorded) -> None:
    record = registry.get(event.model, event.version)
    if record.stage not in (Stage.SHADOW, Stage.STAGING):
        raise _refuse(event, f"a ProofPack is recorded in SHADOW or STAGING, not in {record.stage}")
    record.proofpack_id = event.proofpack_id
    _history(record, event, f"ProofPack {event.proofpack_id} recorded")


def _fold_transition(registry: Registry, event: Transitioned) -> None:
    line = registry.models.get(event.model, ModelLine())
    record = registry.get(event.model, event.version)
    if record.stage is not event.from_stage:
        raise _refuse(event, f"decided from {event.from_stage} but the version is in {record.stage} (stale decision)")
    if event.to_stage not in ALLOWED_TRANSITIONS[event.from_stage]:
        raise _refuse(event, f"transition {event.from_stage} -> {event.to_stage} is not in the transition table")
    if event.to_stage is Stage.STAGING:
        canary = _canary(line, event.version)
        if canary is not None:
            raise _refuse(event, f"version {canary!r} is already in STAGING; one canary per model")
    restored = event.restored_version
    serving = line.production == event.version
    if restored is not None and not (serving and event.to_stage is Stage.RETIRED):
        raise _refuse(event, "only retiring the serving production version restores another one")
    if event.to_stage is Stage.PRODUCTION:
        if line.production is not None:
            line.previous_production.append(line.production)
        line.production = event.version
    elif event.from_stage is Stage.PRODUCTION and serving:
        if restored is None and (line.previous_production or event.rollback):
            raise _refuse(event, f"retiring the serving version must restore one of {line.previous_production}")
        if restored is not None and restored not in line.previous_production:
            raise _refuse(event, f"{restored!r} is not a previous production version: {line.previous_production}")
        line.production = restored
        if restored is not None:
            line.previous_production.remove(restored)
            _history(line.versions[restored], event, f"restored as serving production, replacing {event.version}")
    elif event.from_stage is Stage.PRODUCTION:
        line.previous_production.remove(event.version)
    verb = "rolled back" if event.rollback else "moved"
    _history(
        record,
        event,
        f"{verb} to {event.to_stage}" + (f": {event.reason}" if event.reason else ""),
        event.to_stage,
    )
    record.stage, record.entered_stage_at = event.to_stage, event.at


def _canary(line: ModelLine, other_than: str) -> str | None:
    return next((v for v, r in line.versions.items() if r.stage is Stage.STAGING and v != other_than), None)


def apply(state: Registry, event: Event) -> Registry:
    """The registry after ``event``; ``state`` is left unchanged (see the module guarantees).

    Raises :class:`PolicyViolation` for a fact the registry cannot accept (unknown version, a move outside
    the table, a stale decision, ...) and :class:`EventValidationError` for a reused event id.
    """
    digest = event_digest(event)
    known = state.applied.get(event.event_id)
    if known == digest:
        return state
    if known is not None:
        raise EventValidationError(
            f"event id {event.event_id!r} was already applied with different content; refusing it",
            field="event_id",
        )
    registry = state.model_copy(deep=True)
    if isinstance(event, Registered):
        _fold_registered(registry, event)
    elif isinstance(event, MetadataRecorded | FeaturesRecorded):
        _fold_editable(registry, event)
    elif isinstance(event, DocumentRecorded):
        _fold_document(registry, event)
    elif isinstance(event, ApprovalRecorded):
        _fold_approval(registry, event)
    elif isinstance(event, EscalationRaised | EscalationResolved):
        _fold_escalation(registry, event)
    elif isinstance(event, ProofPackRecorded):
        _fold_proofpack(registry, event)
    elif isinstance(event, ArtifactRecorded):
        _fold_artifact(registry, event)
    else:
        _fold_transition(registry, event)
    registry.applied[event.event_id] = digest
    return registry


def replay(events: Iterable[Event], state: Registry | None = None) -> Registry:
    """Fold ``events`` in order onto ``state`` (an empty registry by default)."""
    registry = state if state is not None else Registry()
    for event in events:
        registry = apply(registry, event)
    return registry
