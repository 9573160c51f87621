"""The governance consumer (``shadowgate governance``): the single writer of the audit log.

Loop, for each message on the input topics (gates, rollbacks: signed events; commands, approvals:
signed commands), in arrival order per partition::

    intake (verify, expiry, replay)  ->  handle (decide)  ->  [rollback: publish routing, read it back]
      ->  append the signed, hash-chained audit entry  ->  fold it into the state  ->  save the state
          to Redis  ->  publish changed routing assignments  ->  alerts  ->  metrics

Start-up: take the Redis lease (a second instance waits), read and verify the whole audit log, rebuild
the state from it, save it to Redis, republish every model's routing, and resume each input partition
right after the last offset the log records (offsets live in the log, not in a consumer group).

Guarantees:

* idempotent: a message whose offset the log already covers is skipped (counted as redelivered); an
  input whose id was already handled, at any offset, is rejected as ``replayed`` and changes nothing;
* nothing unverified is applied: unsigned, forged, wrong-key, expired, replayed or invalid inputs are
  rejected, counted (``shadowgate_governance_rejected_total{reason}``), alerted (alerts topic) and
  appended to the audit log as rejections;
* crash safety: the entry is written (acknowledged by the broker) before the state is saved and the
  routing published; after a crash, the rebuild from the log and the routing republication restore
  both, and inputs after the last entry are read again;
* the lease is checked before every append; an instance that lost it raises and stops.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

import redis
from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry, Counter

from governance.contract.events import Alert, Evidence, Versions
from governance.contract.findings import AlertSeverity
from governance.contract.kafkaio import Record, SyncProducer, make_consumer, partitions_of, poll_records, read_range
from governance.contract.publishing import decode_record, encode_signed_event
from governance.contract.settings import Settings
from governance.contract.stages import Stage
from governance.crypto.keys import KeyInfo
from governance.crypto.signing import Signer
from governance.errors import ConfigError, DeliveryError, InfrastructureError, VerificationError
from governance.lifecycle import audit as _audit
from governance.lifecycle.audit import AuditEntry, EntryBody, entry_hash, parse_entry, verify_chain
from governance.lifecycle.handler import Rules, handle, rejected
from governance.lifecycle.identities import Trust
from governance.lifecycle.intake import Refused, intake
from governance.lifecycle.ledger import Transitioned
from governance.lifecycle.proofpack import write_encrypted
from governance.lifecycle.routing import Assignment, RoutingPublisher, assignment_for
from governance.lifecycle.state import GovernanceState, fold
from governance.policy.catalog import FeatureCatalog
from governance.policy.document import Policy
from governance.service.auditlog import AuditWriter
from governance.service.lease import Lease
from governance.service.rollback import execute_rollback
from governance.service.statestore import StateStore

__all__ = ["DEFAULT_COMMANDS_TOPIC", "ConsumerConfig", "GovernanceConsumer", "Metrics", "read_log"]

DEFAULT_COMMANDS_TOPIC = "governance.commands"
_ALERT_NS = uuid.UUID("0b6c7f38-5a51-4b1e-9d55-3f0d6c2f9a11")
_SECURITY = {"unsigned": "critical", "unknown_key": "critical", "bad_signature": "critical",
             "expired": "warning", "replayed": "warning", "invalid": "warning"}


@dataclass(frozen=True)
class ConsumerConfig:
    """Where the consumer reads and writes; ``canary_share`` must lie in the policy's canary range."""

    bootstrap: str
    redis_url: str
    prefix: str
    gates_topic: str
    rollbacks_topic: str
    approvals_topic: str
    commands_topic: str
    lifecycle_topic: str
    routing_topic: str
    alerts_topic: str
    canary_share: float
    lease_ttl_s: float = 15.0
    proofpack_dir: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings, canary_share: float, commands_topic: str = DEFAULT_COMMANDS_TOPIC,
                      **overrides: object) -> ConsumerConfig:
        t = settings.topics
        return cls(bootstrap=settings.kafka_bootstrap, redis_url=settings.redis_url_value(),
                   prefix=settings.redis_prefix, gates_topic=t.gates, rollbacks_topic=t.rollbacks,
                   approvals_topic=t.approvals, commands_topic=commands_topic, lifecycle_topic=t.lifecycle,
                   routing_topic=t.routing, alerts_topic=t.alerts, canary_share=canary_share,
                   **overrides)  # type: ignore[arg-type]

    def inputs(self) -> dict[str, Literal["command", "event"]]:
        return {self.gates_topic: "event", self.rollbacks_topic: "event",
                self.approvals_topic: "command", self.commands_topic: "command"}


class Metrics:
    """The consumer's Prometheus counters, registered in the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inputs = Counter("shadowgate_governance_inputs", "Messages handled, by topic", ["topic"],
                              registry=registry)
        self.rejected = Counter("shadowgate_governance_rejected", "Inputs rejected, by reason", ["reason"],
                                registry=registry)
        self.transitions = Counter("shadowgate_governance_transitions", "Stage moves applied, by target stage",
                                   ["to_stage"], registry=registry)
        self.rollbacks = Counter("shadowgate_governance_rollbacks", "Rollbacks, by status", ["status"],
                                 registry=registry)
        self.redelivered = Counter("shadowgate_governance_redelivered", "Messages skipped: offset already in the log",
                                   registry=registry)
        self.alert_failures = Counter("shadowgate_governance_alert_failures", "Alerts that could not be published",
                                      registry=registry)
        # Every known label value starts at 0, so increase() sees the first increment (a series born at 1 has
        # no earlier sample: the first failed rollback would never fire ShadowgateRollbackFailed).
        for reason in get_args(_audit.RejectReason):
            self.rejected.labels(reason=reason)
        for status in get_args(_audit.RollbackStatus):
            self.rollbacks.labels(status=status)
        for stage in Stage:
            self.transitions.labels(to_stage=stage.value)


def read_log(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Record]:
    """Every message of the (single-partition) audit log topic, in order."""
    consumer = make_consumer(bootstrap, "audit-read")
    try:
        partitions = partitions_of(consumer, topic)
        if partitions != [0]:
            raise ConfigError(f"audit log topic {topic} has {len(partitions)} partitions; it needs exactly 1 (order)")
        return list(read_range(consumer, topic, 0, 0, timeout_s))
    finally:
        consumer.close()


class GovernanceConsumer:
    """See the module docstring. Not thread-safe: one thread runs :meth:`run` (or :meth:`poll_once`)."""

    def __init__(self, config: ConsumerConfig, *, signer: Signer, trust: Trust, policy: Policy,
                 catalog: FeatureCatalog, metrics: CollectorRegistry, clock: Callable[[], datetime] | None = None,
                 encrypt_to: KeyInfo | None = None) -> None:
        share = policy.staging.canary_traffic_share
        if not share.min <= config.canary_share <= share.max:
            raise ConfigError(f"canary_share {config.canary_share} is outside the policy's "
                              f"staging.canary_traffic_share [{share.min}, {share.max}]")
        self.config, self.trust, self.policy = config, trust, policy
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rules = Rules(policy=policy, catalog=catalog, canary_share=config.canary_share, signer=signer)
        self.metrics = Metrics(metrics)
        self.encrypt_to = encrypt_to
        self.signer = signer
        self.state = GovernanceState()
        self._redis: redis.Redis[bytes] = redis.Redis.from_url(config.redis_url)
        self.store = StateStore(self._redis, config.prefix)
        self.lease = Lease(self._redis, config.prefix, config.lease_ttl_s)
        self._producer = SyncProducer(config.bootstrap)
        self.writer = AuditWriter(self._producer, config.lifecycle_topic, signer)
        self.routing = RoutingPublisher(self._producer, config.bootstrap, config.routing_topic, signer)
        self._consumer = make_consumer(config.bootstrap, "governance")
        self._expects = config.inputs()
        self._started = False

    # ----------------------------------------------------------------------------------- start-up

    def start(self, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> bool:
        """Take the lease, rebuild from the log, republish routing, assign the inputs (False: stopped)."""
        if not self.lease.acquire(stop, on_wait):
            return False
        self.state = self.rebuild()
        now = self.clock()
        self.store.save(self.state, self.config.canary_share, now)
        for model in self.state.registry.models:
            self.routing.publish(assignment_for(self.state.registry, model, self.config.canary_share,
                                                self.state.seq, now), now)
        assignments = []
        for topic in self._expects:
            for partition in partitions_of(self._consumer, topic):
                offset = self.state.positions.get(f"{topic}:{partition}", -1) + 1
                assignments.append(TopicPartition(topic, partition, offset))
        self._consumer.assign(assignments)
        self._started = True
        return True

    def rebuild(self) -> GovernanceState:
        """The state folded from the whole audit log, after verifying its chain (VerificationError if broken)."""
        records = read_log(self.config.bootstrap, self.config.lifecycle_topic)
        now = self.clock()
        report = verify_chain((r.value for r in records), self.trust.system, now, self.trust.phase(now))
        if not report.ok:
            raise VerificationError(f"{self.config.lifecycle_topic}: {report}; refusing to start on a broken log")
        state = GovernanceState()
        for record in records:
            signed = decode_record(record.value)
            state = fold(state, parse_entry(signed["payload"]), entry_hash(signed))
        return state

    # ----------------------------------------------------------------------------------- the loop

    def poll_once(self, timeout_s: float = 0.2) -> list[AuditEntry]:
        """Handle the messages available within ``timeout_s``; returns the entries appended."""
        if not self._started:
            raise InfrastructureError("GovernanceConsumer.start() was not called (or it was stopped)")
        if not self.lease.renew_if_due():
            raise InfrastructureError(f"lost the governance lease {self.lease.key}; another instance took over")
        entries = []
        for record in poll_records(self._consumer, timeout_s):
            entry = self.process(record)
            if entry is not None:
                entries.append(entry)
        return entries

    def run(self, stop: threading.Event, on_wait: Callable[[str], None] | None = None,
            on_entry: Callable[[AuditEntry], None] | None = None) -> None:
        """Start and handle inputs until ``stop`` is set; releases the lease on the way out."""
        try:
            if not self.start(stop, on_wait):
                return
            while not stop.is_set():
                for entry in self.poll_once():
                    if on_entry is not None:
                        on_entry(entry)
        finally:
            self.close()

    def process(self, record: Record) -> AuditEntry | None:
        """Handle one message (None: a redelivery the log already covers)."""
        if self.state.handled(record.topic, record.partition, record.offset):
            self.metrics.redelivered.inc()
            return None
        expects = self._expects.get(record.topic)
        if expects is None:
            raise ConfigError(f"message from topic {record.topic}, which is not an input of the governance consumer")
        self.metrics.inputs.labels(topic=record.topic).inc()
        now = self.clock()
        result = intake(record, self.state, self.trust, now, expects)
        published: Assignment | None = None
        if isinstance(result, Refused):
            body = rejected(result, now)
        else:
            plan = handle(self.state, result, self.rules, now)
            body = plan.body
            if plan.rollback is not None:
                body, published = execute_rollback(plan.rollback, body, self.state, self.config.canary_share,
                                                   self.routing, self.trust, self.clock)
        return self._commit(body, published)

    def _commit(self, body: EntryBody, published: Assignment | None) -> AuditEntry:
        if not self.lease.held():
            raise InfrastructureError(f"lost the governance lease {self.lease.key}; not appending (another writer)")
        before = self.state
        now = self.clock()
        entry, record = self.writer.append(body, before.seq + 1, before.head, now)
        self.state = fold(before, entry, entry_hash(record))
        self.store.save(self.state, self.config.canary_share, now)
        self._publish_routing(before, published, now)
        self._write_proofpack(entry, now)
        self._alert(entry, now)
        self._count(entry)
        return entry

    # ----------------------------------------------------------------------------------- effects

    def _publish_routing(self, before: GovernanceState, published: Assignment | None, now: datetime) -> None:
        share, after = self.config.canary_share, self.state
        for model in after.registry.models:
            new = assignment_for(after.registry, model, share, after.seq, now)
            old = assignment_for(before.registry, model, share, before.seq, now)
            if model not in before.registry.models and not (new.production or new.canary or new.shadow):
                continue  # a new model serves nothing yet: nothing to tell the scoring services
            if new.same_routing(published) or (model in before.registry.models and new.same_routing(old)):
                continue
            self.routing.publish(new, now)

    def _write_proofpack(self, entry: AuditEntry, now: datetime) -> None:
        if entry.proofpack is not None and self.config.proofpack_dir is not None and self.encrypt_to is not None:
            write_encrypted(dict(entry.proofpack), self.config.proofpack_dir, self.encrypt_to, now)

    def _alert(self, entry: AuditEntry, now: datetime) -> None:
        source, rejection, rollback = entry.input, entry.rejection, entry.rollback
        if rejection is not None and rejection.reason in _SECURITY:
            severity: AlertSeverity = _SECURITY[rejection.reason]  # type: ignore[assignment]
            summary = (f"rejected {source.type or 'message'} {source.id or ''} from {source.topic}[{source.partition}]"
                       f"@{source.offset}: {rejection.reason}: {rejection.message}")
            self._send_alert(entry, now, model="governance", production=None, severity=severity,
                             dedup=f"rejected|{rejection.reason}|{source.digest[:16]}", summary=summary,
                             runbook="governance-rejected-input")
        if rollback is not None:
            line = self.state.registry.models.get(rollback.model)
            production = line.production if line is not None else None
            if rollback.status == "FAILED":
                summary = (f"P0 MODEL_ROLLBACK_FAILED: {rollback.model} {rollback.from_version} -> "
                           f"{rollback.to_version}: {rollback.error}")
                self._send_alert(entry, now, model=rollback.model, production=production, severity="critical",
                                 dedup="MODEL_ROLLBACK_FAILED|P0", summary=summary, runbook="page-on-call")
            else:
                summary = (f"rollback {rollback.status}: {rollback.model} {rollback.from_version} -> "
                           f"{rollback.to_version} ({rollback.reason})")
                self._send_alert(entry, now, model=rollback.model, production=production, severity="warning",
                                 dedup=f"rollback|{rollback.status}", summary=summary, runbook="rollback-procedure")

    def _send_alert(self, entry: AuditEntry, now: datetime, *, model: str, production: str | None,
                    severity: AlertSeverity, dedup: str, summary: str, runbook: str) -> None:
        """Publish a signed Alert about ``entry`` (id from the entry's seq and ``dedup``); a refusal is counted."""
        alert = Alert(
            event_id=uuid.uuid5(_ALERT_NS, f"{self.config.lifecycle_topic}|{entry.seq}|{dedup}"),
            ts=now, expires_at=now + timedelta(seconds=self.policy.events.ttl_s), model=model,
            versions=Versions(production=production or "none"), evidence=Evidence(policy_hash=self.policy.hash()),
            severity=severity, dedup_key=f"{model}|{dedup}"[:512], summary=summary[:512], runbook=runbook,
        )
        try:
            self._producer.send(self.config.alerts_topic, encode_signed_event(alert, self.signer, now), model.encode())
        except DeliveryError:
            self.metrics.alert_failures.inc()

    def _count(self, entry: AuditEntry) -> None:
        if entry.rejection is not None:
            self.metrics.rejected.labels(reason=entry.rejection.reason).inc()
        if entry.rollback is not None:
            self.metrics.rollbacks.labels(status=entry.rollback.status).inc()
        for fact in entry.facts:
            if isinstance(fact, Transitioned):
                self.metrics.transitions.labels(to_stage=fact.to_stage.value).inc()

    def close(self) -> None:
        """Release the lease and the Kafka and Redis clients."""
        self._started = False
        self.lease.release()
        self.routing.close()
        self._producer.close()
        self._consumer.close()
        self._redis.close()
