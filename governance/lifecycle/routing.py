"""Serving assignments: which version of a model serves, which is the canary and on what share, which shadow.

The governance consumer derives one :class:`Assignment` per model from the registry after every audit
entry that changes it, signs it (``Context.EVENT``, payload ``type: RoutingAssignment``) and publishes it
to the compacted routing topic keyed by model name, so the topic always holds the latest assignment of
every model. Scoring services read it with :class:`shadowgate.routing_client.RoutingClient`::

    {"payload": {"type": "RoutingAssignment", "model": "fraud", "production": "1.4.0",
                 "canary": {"version": "1.5.0", "share": 0.05}, "shadow": ["1.6.0"],
                 "seq": 42, "issued_at": "2026-11-26T12:00:00.000000+00:00"},
     "signature": {...}}

``seq`` is the audit-log sequence number the assignment reflects: a reader keeps the assignment with the
highest ``seq``, so an old signed record published again cannot roll the routing back.

Guarantees: :func:`assignment_for` is pure (the canary is the version in STAGING, the shadows the
versions in SHADOW, production the registry's serving version); :meth:`Assignment.route` splits traffic
deterministically by request id (the same request always goes to the same version; over many requests
the canary's share converges to ``share``); :func:`decode_assignment` verifies before it parses.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from confluent_kafka import TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from governance.contract.connections import KafkaTarget
from governance.contract.kafkaio import Sender, make_consumer, poll_records
from governance.contract.publishing import decode_record
from governance.contract.stages import Stage
from governance.crypto.keys import TrustStore
from governance.crypto.record import sign_record, verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signer
from governance.errors import EventValidationError, InfrastructureError
from governance.lifecycle.ledger import Name, UtcDatetime
from governance.lifecycle.registry import Registry

__all__ = ["Assignment", "Canary", "RoutingPublisher", "assignment_for", "decode_assignment", "encode_assignment"]

_TYPE = "RoutingAssignment"


class Canary(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Name
    share: Annotated[float, Field(gt=0, le=1)]


class Assignment(BaseModel):
    """The serving assignment of one model (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["RoutingAssignment"] = "RoutingAssignment"
    model: Name
    production: Name | None
    canary: Canary | None = None
    shadow: list[Name] = []
    seq: Annotated[int, Field(ge=-1)]
    issued_at: UtcDatetime

    def same_routing(self, other: Assignment | None) -> bool:
        """Whether ``other`` routes traffic identically (ignores ``seq`` and ``issued_at``)."""
        return other is not None and (self.production, self.canary, self.shadow) == (
            other.production,
            other.canary,
            other.shadow,
        )

    def route(self, request_id: str) -> tuple[str | None, Literal["production", "canary"]]:
        """The version that answers ``request_id`` and its role (shadow versions score every request too)."""
        if self.canary is not None:
            digest = hashlib.sha256(f"{self.model}|{request_id}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2.0**64 < self.canary.share:
                return self.canary.version, "canary"
        return self.production, "production"


def assignment_for(registry: Registry, model: str, canary_share: float, seq: int, now: datetime) -> Assignment:
    """The assignment the registry implies for ``model`` (an unknown model serves nothing)."""
    line = registry.models.get(model)
    if line is None:
        return Assignment(model=model, production=None, seq=seq, issued_at=now)
    staging = sorted(v for v, r in line.versions.items() if r.stage is Stage.STAGING)
    shadow = sorted(v for v, r in line.versions.items() if r.stage is Stage.SHADOW)
    canary = Canary(version=staging[0], share=canary_share) if staging else None
    return Assignment(model=model, production=line.production, canary=canary, shadow=shadow, seq=seq, issued_at=now)


def encode_assignment(assignment: Assignment, signer: Signer, now: datetime) -> bytes:
    """The signed message value of ``assignment``."""
    return orjson.dumps(sign_record(assignment.model_dump(mode="json"), Context.EVENT, signer, now))


def decode_assignment(raw: bytes, trust_store: TrustStore, now: datetime, phase: Phase) -> Assignment:
    """The verified assignment in ``raw``; VerificationError or EventValidationError otherwise."""
    payload = verify_record(decode_record(raw), Context.EVENT, trust_store, now, phase)
    if payload.get("type") != _TYPE:
        raise EventValidationError(f"routing record has type {payload.get('type')!r}, not {_TYPE}", field="type")
    try:
        return Assignment.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<assignment>"
        raise EventValidationError(f"routing assignment: {where}: {first['msg']}", field=where) from None


class RoutingPublisher:
    """Publishes assignments and reads one back from its offset (spec 8.2 step 4, verify the routing)."""

    def __init__(self, producer: Sender, bootstrap: KafkaTarget, topic: str, signer: Signer) -> None:
        self.producer = producer
        self.topic = topic
        self.signer = signer
        self._reader: Any = None
        self._bootstrap = bootstrap

    def publish(self, assignment: Assignment, now: datetime) -> tuple[int, int]:
        """Write ``assignment`` keyed by model; returns ``(partition, offset)`` once acknowledged."""
        value = encode_assignment(assignment, self.signer, now)
        return self.producer.send(self.topic, value, assignment.model.encode())

    def read_back(
        self, partition: int, offset: int, trust_store: TrustStore, now: datetime, phase: Phase, timeout_s: float = 10.0
    ) -> Assignment:
        """The verified assignment stored at ``offset``; InfrastructureError if it cannot be read in time."""
        if self._reader is None:
            self._reader = make_consumer(self._bootstrap, "routing-readback")
        self._reader.assign([TopicPartition(self.topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for record in poll_records(self._reader, 0.2, max_messages=1):
                    if record.offset == offset:
                        return decode_assignment(record.value, trust_store, now, phase)
        finally:
            self._reader.unassign()
        where = f"{self.topic}[{partition}]@{offset}"
        raise InfrastructureError(f"routing record {where} not readable within {timeout_s} s")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
