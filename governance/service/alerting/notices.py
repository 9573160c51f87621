"""The notice: one thing a receiver is told, firing or resolved, with the labels that route it.

A verified input becomes zero or more notices (:mod:`governance.service.alerting.tracker` decides which).
Every receiver format (:mod:`governance.service.alerting.payloads`) is built from a notice alone.

Keys:

* ``dedup_key`` names the *condition* (a gate of one comparison with one verdict, a rollback of one version,
  the worker's own alert key): a firing notice and the notice that resolves it share it. It is PagerDuty's
  ``dedup_key`` and the webhook's ``groupKey``; Alertmanager identifies the alert by its labels, which are a
  function of the same fields.
* ``notice_id`` names one notice: a UUID5 of the input it came from (event id, or audit log and seq), its
  ``dedup_key`` and status. The same input always yields the same ids, so a notice delivered again after a
  restart carries the id the receiver saw before (the webhook's ``Idempotency-Key``).

Labels (Alertmanager's identity, and what routes and inhibits): ``alertname``, ``kind``, ``severity``,
``model``, the versions (``production_version``, ``candidate_version``, ``role``, or ``from_version`` /
``to_version`` / ``version``) and the kind's own fields (``gate``, ``stage``, ``verdict``, ``trigger``,
``action``, ``status``, ``runbook``). Every value is bounded by the events' schemas (names, enums); free text
(summaries, reasons, failing checks) goes to annotations only.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from governance.contract.findings import AlertSeverity
from governance.service.alerting.intake import Origin

__all__ = [
    "CONDITION_KINDS",
    "KINDS",
    "RUNBOOKS",
    "SEVERITIES",
    "ConditionKind",
    "Kind",
    "Notice",
    "Status",
    "alertname_for_runbook",
    "notice_id",
]

Status = Literal["firing", "resolved"]
Kind = Literal[
    "alert",
    "recalibration",
    "gate_blocked",
    "gate_inconclusive",
    "gate_ready",
    "rollback_triggered",
    "rollback_completed",
    "rollback_failed",
    "rollback_pending",
    "approval_waiting",
]
KINDS: tuple[Kind, ...] = (
    "alert", "recalibration", "gate_blocked", "gate_inconclusive", "gate_ready", "rollback_triggered",
    "rollback_completed", "rollback_failed", "rollback_pending", "approval_waiting",
)  # fmt: skip
#: The kinds that stay open until an input clears them (the others are one-off events).
ConditionKind = Literal[
    "gate_blocked", "gate_inconclusive", "rollback_triggered", "rollback_failed", "rollback_pending", "approval_waiting"
]
CONDITION_KINDS: tuple[ConditionKind, ...] = (
    "gate_blocked", "gate_inconclusive", "rollback_triggered", "rollback_failed", "rollback_pending",
    "approval_waiting",
)  # fmt: skip
SEVERITIES: tuple[AlertSeverity, ...] = ("info", "warning", "critical")

#: The runbook of each notice the forwarder makes itself (an Alert event names its own; a rollback trigger's
#: comes from the policy's trigger). Every one is a file ``docs/runbooks/<slug>.md``.
RUNBOOKS: dict[Kind, str] = {
    "recalibration": "recalibration-requested",
    "gate_blocked": "gate-blocked",
    "gate_inconclusive": "gate-inconclusive",
    "gate_ready": "gate-ready",
    "rollback_triggered": "rollback-triggered",
    "rollback_completed": "rollback-procedure",
    "rollback_failed": "page-on-call",
    "rollback_pending": "rollback-pending",
    "approval_waiting": "approval-waiting",
}

_NAMESPACE = uuid.UUID("5d0f3c52-8a7e-4c1b-b7f4-2a9e61c0d8e3")
_WORD = re.compile(r"[A-Za-z0-9]+")


def alertname_for_runbook(runbook: str) -> str:
    """``review-score-shift`` -> ``ShadowgateReviewScoreShift``: one alertname per runbook."""
    return "Shadowgate" + "".join(word[:1].upper() + word[1:] for word in _WORD.findall(runbook))


def notice_id(source_id: str, dedup_key: str, status: Status) -> str:
    """The deterministic id of the notice with ``status`` about ``dedup_key`` made from input ``source_id``."""
    return str(uuid.uuid5(_NAMESPACE, f"{source_id}|{dedup_key}|{status}"))


@dataclass(frozen=True)
class Notice:
    """One notice (see the module docstring); ``ends_at`` None means open until a later notice resolves it."""

    notice_id: str
    dedup_key: str
    status: Status
    kind: Kind
    severity: AlertSeverity
    model: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: datetime
    ends_at: datetime | None
    origin: Origin
    source_id: str
    key_id: str
    record: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]

    @property
    def summary(self) -> str:
        return self.annotations["summary"]

    @property
    def runbook(self) -> str:
        return self.annotations["runbook"]

    def to_json(self, *, with_record: bool = True) -> dict[str, Any]:
        """The notice as a JSON object (the webhook body's ``notice``, ``alerts tail --json``, dead letters)."""
        doc: dict[str, Any] = {
            "notice_id": self.notice_id,
            "dedup_key": self.dedup_key,
            "status": self.status,
            "kind": self.kind,
            "severity": self.severity,
            "model": self.model,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat() if self.ends_at is not None else None,
            "source": {
                "source": self.origin.source,
                "topic": self.origin.topic,
                "partition": self.origin.partition,
                "offset": self.origin.offset,
                "id": self.source_id,
                "key_id": self.key_id,
            },
        }
        if with_record:
            doc["record"] = dict(self.record)
        return doc
