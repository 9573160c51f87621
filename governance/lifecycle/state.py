"""The governance state: everything the audit log implies, folded entry by entry (event sourcing).

:class:`GovernanceState` is a pure value: the model registry (:mod:`governance.lifecycle.registry`) plus what the
consumer needs beyond it — the latest gate verdict per version and stage, artifact digests, ProofPacks,
the input positions already handled, the ids already seen (replay protection), rollback records,
rejection counts (one per rejected input, also those a summary entry covers), the key revocations the
log recorded, and the consumer's timers: scheduled rollbacks waiting for their time (``scheduled``, by
``model/version``) and automatic promotions blocked only by time (``retries``, by ``model/version/stage``).
:func:`fold` is the only way it changes; the live consumer and a rebuild from the log
call the same function, so the state materialised in Redis equals ``rebuild(log)`` by construction.

Guarantees: :func:`fold` is pure and deterministic; it refuses an entry that does not continue the chain
(``seq`` not the next one, ``prev_hash`` not the head) or whose facts the registry refuses, with
:class:`~governance.errors.VerificationError` naming the seq (a log that cannot be folded is corrupt and
must not be served). Only ids of inputs whose signature verified are remembered, so a forged message
cannot burn the id of a genuine event that arrives later. The consumer's own entries (``input.kind ==
"system"``: repairs, revocations) cover no input position. JSON round-trips exactly
(``model_dump(mode="json")`` / ``model_validate``).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, JsonValue

from governance.contract.stages import Stage
from governance.errors import EventValidationError, PolicyViolation, VerificationError
from governance.lifecycle.audit import GENESIS, AuditEntry, GateRecord, Retry, RollbackRecord
from governance.lifecycle.ledger import ArtifactRecorded
from governance.lifecycle.machine import Assessment
from governance.lifecycle.registry import Registry, apply

__all__ = ["RETRY", "SCHEDULED_ROLLBACK", "GovernanceState", "as_verdict", "fold", "latest_gate", "rebuild",
           "version_key"]

# ``input.type`` of the consumer's timer entries (``input.kind == "system"``, ``input.id`` the timer's key).
SCHEDULED_ROLLBACK = "scheduled_rollback"
RETRY = "promotion_retry"
# A scheduled rollback ends with its version's COMPLETED rollback, a cancellation, or its own attempt failing.
_ENDS_SCHEDULE = ("COMPLETED", "CANCELLED")


def version_key(model: str, version: str) -> str:
    """The key of ``model@version`` in :attr:`GovernanceState.scheduled`."""
    return f"{model}/{version}"

# Rejections after which the input's id is known genuine (its signature verified).
_VERIFIED_REJECTIONS = ("refused", "expired", "replayed")


class GovernanceState(BaseModel):
    """The folded audit log (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    seq: int = -1
    head: str = GENESIS
    registry: Registry = Registry()
    verdicts: dict[str, dict[str, dict[str, GateRecord]]] = {}
    artifacts: dict[str, dict[str, str]] = {}
    proofpacks: dict[str, dict[str, JsonValue]] = {}
    positions: dict[str, int] = {}
    seen: dict[str, int] = {}
    rollbacks: list[RollbackRecord] = []
    rejections: dict[str, int] = {}
    revoked: dict[str, int] = {}  # key id -> seq of the entry that recorded its revocation
    scheduled: dict[str, RollbackRecord] = {}  # model/version -> its pending SCHEDULED rollback
    retries: dict[str, Retry] = {}  # model/version/stage -> an automatic promotion to try again at due_at

    def handled(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the message at these coordinates was already handled (a redelivery)."""
        return offset <= self.positions.get(f"{topic}:{partition}", -1)


def fold(state: GovernanceState, entry: AuditEntry, entry_hash: str) -> GovernanceState:
    """The state after ``entry`` (whose record hashes to ``entry_hash``); ``state`` is not changed."""
    if entry.seq != state.seq + 1:
        raise VerificationError(f"audit entry seq {entry.seq} does not follow seq {state.seq}; the log is corrupt")
    if entry.prev_hash != state.head:
        raise VerificationError(f"audit entry seq {entry.seq} does not link to the previous entry's hash")
    new = state.model_copy(deep=True)
    registry = new.registry
    for fact in entry.facts:
        try:
            registry = apply(registry, fact)
        except (PolicyViolation, EventValidationError) as exc:
            raise VerificationError(f"audit entry seq {entry.seq}: the registry refuses its fact: {exc}") from None
        if isinstance(fact, ArtifactRecorded):  # the digest map readers know (ProofPacks, status), as entry.artifact
            new.artifacts.setdefault(fact.model, {})[fact.version] = fact.sha256
    new.registry = registry
    if entry.gate is not None and entry.gate.counts:
        gate = entry.gate
        new.verdicts.setdefault(gate.model, {}).setdefault(gate.version, {})[gate.stage] = gate
        new.retries.pop(f"{gate.model}/{gate.version}/{gate.stage}", None)  # a newer verdict replaces the retry
    if entry.artifact is not None:
        new.artifacts.setdefault(entry.artifact.model, {})[entry.artifact.version] = entry.artifact.sha256
    if entry.proofpack is not None:
        payload = entry.proofpack.get("payload")
        pack_id = payload.get("proofpack_id") if isinstance(payload, dict) else None
        if not isinstance(pack_id, str):
            raise VerificationError(f"audit entry seq {entry.seq}: its ProofPack has no proofpack_id")
        new.proofpacks[pack_id] = entry.proofpack
    if entry.rollback is not None:
        new.rollbacks.append(entry.rollback)
    _timers(new, entry)
    source = entry.input
    if source.kind != "system":
        new.positions[source.position] = max(source.offset, new.positions.get(source.position, -1))
    rejection = entry.rejection
    if rejection is not None:
        new.rejections[rejection.reason] = new.rejections.get(rejection.reason, 0) + 1
    if entry.summary is not None:
        for reason, count in entry.summary.counts.items():
            new.rejections[reason] = new.rejections.get(reason, 0) + count
    for revocation in entry.revoked:
        new.revoked.setdefault(revocation.key_id, entry.seq)
    if source.id is not None and source.kind != "system" and (rejection is None
                                                              or rejection.reason in _VERIFIED_REJECTIONS):
        new.seen.setdefault(source.id, entry.seq)
    new.seq, new.head = entry.seq, entry_hash
    return new


def _timers(new: GovernanceState, entry: AuditEntry) -> None:
    """Scheduled rollbacks and retries after ``entry`` (its facts already applied to ``new.registry``)."""
    source, record = entry.input, entry.rollback
    if source.kind == "system" and source.type == RETRY and source.id is not None:
        new.retries.pop(source.id, None)
    if record is not None:
        key = version_key(record.model, record.from_version)
        if record.status == "SCHEDULED" and record.due_at is not None:
            new.scheduled.setdefault(key, record)
        elif record.status in _ENDS_SCHEDULE or (record.status == "FAILED" and record.action == "scheduled"):
            new.scheduled.pop(key, None)
    if entry.retry is not None:
        new.retries[entry.retry.key] = entry.retry
    for key, retry in list(new.retries.items()):  # a version that left the stage has nothing to retry
        line = new.registry.models.get(retry.model)
        version = line.versions.get(retry.version) if line is not None else None
        if version is None or version.stage != retry.stage:
            del new.retries[key]
    for key, pending in list(new.scheduled.items()):  # a retired version has nothing left to roll back
        line = new.registry.models.get(pending.model)
        version = line.versions.get(pending.from_version) if line is not None else None
        if version is None or version.stage is Stage.RETIRED:
            del new.scheduled[key]


def rebuild(entries: Iterable[tuple[AuditEntry, str]]) -> GovernanceState:
    """Fold ``(entry, entry_hash)`` pairs, in log order, onto an empty state."""
    state = GovernanceState()
    for entry, digest in entries:
        state = fold(state, entry, digest)
    return state


def latest_gate(state: GovernanceState, model: str, version: str, stage: str) -> GateRecord | None:
    """The latest verified gate decision about ``model@version`` in ``stage`` (SHADOW or STAGING)."""
    return state.verdicts.get(model, {}).get(version, {}).get(stage)


def as_verdict(record: GateRecord | None) -> Assessment | None:
    """The lifecycle verdict a gate decision stands for (None when there was none: it blocks)."""
    if record is None:
        return None
    if record.passed:
        return Assessment(passed=True)
    return Assessment(passed=False, failures=tuple(record.failures) or (f"{record.gate} not READY",))
