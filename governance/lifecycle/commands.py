"""Signed commands: how people (the CLI) ask the governance consumer, the single writer, to act.

A command is a signed record (``Context.APPROVAL``: a person's decision) on the commands topic, signed by
the key of the identity it names (see :mod:`governance.lifecycle.identities`)::

    {"payload": {"command": "approve", "command_id": "<uuid>", "identity": "GID-08",
                 "issued_at": "...", "expires_at": "...", "model": "fraud", "version": "1.5.0",
                 "target": "PRODUCTION", "comment": ""},
     "signature": {...}}

=========  ===================================================================================
command    effect (the consumer decides; a refusal names every broken rule)
=========  ===================================================================================
register   a new version in PROPOSAL with its model type, and optionally metadata (valid as a whole,
           spec 4.2, or refused naming every violation), features, the artifact's SHA-256 and its
           signed manifest (spec 6.3, ``shadowgate sign FILE``)
propose    evidence for the version: stage documents, metadata, features, artifact digest and manifest
approve    the signing identity approves the version's move to ``target`` (GID-02: PROTOTYPE and,
           "training approved", SHADOW; GID-08: the shadow review, STAGING, and PRODUCTION)
escalate   raise an escalation on the version (blocks promotion until resolved)
resolve    resolve an escalation
advance    move the version to ``target`` (default: the next stage), through its gates
rollback   the spec 8.2 rollback of the version (to ``restore_version`` or the previous production)
cancel     GID-08 overrides the version's pending scheduled rollback (spec 8.1), with a reason
=========  ===================================================================================

Guarantees: schemas are strict (unknown fields refused); ``expires_at`` is after ``issued_at`` and at
most a day later; the answer to a command is the audit entry whose ``input.id`` is the command id.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from governance.contract.stages import ModelType, Stage
from governance.crypto.record import sign_record
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError
from governance.lifecycle.ledger import Name, UtcDatetime

__all__ = [
    "COMMAND_TTL",
    "Advance",
    "Approve",
    "Command",
    "DocumentIn",
    "CancelRollback",
    "Escalate",
    "Propose",
    "Register",
    "Resolve",
    "Rollback",
    "new_command",
    "parse_command",
    "sign_command",
]

COMMAND_TTL = timedelta(minutes=10)
_MAX_TTL = timedelta(days=1)
_Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
_C = TypeVar("_C", bound="_Command")


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    identity: Name
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    model: Name
    version: Name

    @model_validator(mode="after")
    def _ttl(self) -> Self:
        if not self.issued_at < self.expires_at <= self.issued_at + _MAX_TTL:
            raise ValueError("expires_at must be after issued_at and at most one day later")
        return self


def _manifest_needs_digest(command: _C) -> _C:
    if getattr(command, "artifact_manifest", None) is not None and getattr(command, "artifact_sha256", None) is None:
        raise ValueError("artifact_manifest needs artifact_sha256: the manifest is checked against the artifact")
    return command


class DocumentIn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    stage: Stage
    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
    text: str


class Register(_Command):
    command: Literal["register"] = "register"
    model_type: ModelType
    metadata: dict[str, JsonValue] = {}
    features: dict[str, str] = {}
    artifact_sha256: _Sha256 | None = None
    artifact_manifest: dict[str, JsonValue] | None = None

    @model_validator(mode="after")
    def _manifest_names_an_artifact(self) -> Self:
        return _manifest_needs_digest(self)


class Propose(_Command):
    command: Literal["propose"] = "propose"
    documents: list[DocumentIn] = []
    metadata: dict[str, JsonValue] | None = None
    features: dict[str, str] | None = None
    artifact_sha256: _Sha256 | None = None
    artifact_manifest: dict[str, JsonValue] | None = None

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.documents and self.metadata is None and self.features is None and self.artifact_sha256 is None:
            raise ValueError("propose needs at least one document, metadata, features or an artifact digest")
        return _manifest_needs_digest(self)


class Approve(_Command):
    command: Literal["approve"] = "approve"
    target: Stage
    comment: str = ""


class Escalate(_Command):
    command: Literal["escalate"] = "escalate"
    escalation_id: Name
    reason: _Text


class Resolve(_Command):
    command: Literal["resolve"] = "resolve"
    escalation_id: Name
    resolution: _Text


class Advance(_Command):
    command: Literal["advance"] = "advance"
    target: Stage | None = None
    reason: str = ""


class Rollback(_Command):
    command: Literal["rollback"] = "rollback"
    reason: _Text
    restore_version: Name | None = None


class CancelRollback(_Command):
    """An approver's signed override of a pending scheduled rollback (only GID-08 may give it)."""

    command: Literal["cancel_rollback"] = "cancel_rollback"
    reason: _Text


Command = Annotated[
    Register | Propose | Approve | Escalate | Resolve | Advance | Rollback | CancelRollback,
    Field(discriminator="command"),
]


@cache
def _adapter() -> TypeAdapter[Command]:
    return TypeAdapter(Command)


def parse_command(payload: object) -> Command:
    """The command in a verified payload; :class:`EventValidationError` naming the first bad field."""
    try:
        return _adapter().validate_python(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<command>"
        raise EventValidationError(f"invalid command: {where}: {first['msg']}", field=where) from None


def new_command(kind: type[_Command], *, identity: str, now: datetime, ttl: timedelta = COMMAND_TTL,
                **fields: Any) -> Command:
    """A command of ``kind`` with a fresh id, issued at ``now`` by ``identity``."""
    data = {"command_id": str(uuid.uuid4()), "identity": identity, "issued_at": now, "expires_at": now + ttl, **fields}
    return parse_command(kind(**data).model_dump(mode="json"))


def sign_command(command: Command, signer: Signer, now: datetime) -> dict[str, Any]:
    """The signed record of ``command`` (``Context.APPROVAL``), ready to send as JSON."""
    payload = command.model_dump(mode="json")
    if payload.get("artifact_manifest", False) is None:  # without a manifest, the bytes of the previous version
        del payload["artifact_manifest"]
    return sign_record(payload, Context.APPROVAL, signer, now)
