"""The governance consumer (``shadowgate governance``): the single writer of the audit log.

Loop, for each message on the input topics (gates, rollbacks: signed events; commands, approvals:
signed commands), in arrival order per partition::

    intake (JSON, signature block, key known, verify, freshness, replay)
      rejected -> counted in memory (RejectionTally): one summary entry per partition per interval
      accepted -> handle (decide)  ->  [rollback: publish routing in its own transaction, read it back]
               -> seal the entry  ->  ONE transaction: entry + changed routing + checkpoint of the new head
               -> fold it into the state  ->  save the state to Redis  ->  alerts  ->  metrics

Start-up: take the standby lease of the audit log (a second instance waits), renew it by time from then
on; ``init_transactions`` with the log's fixed ``transactional.id`` (fences any earlier writer: its open
transaction is aborted, its next write refused); read the log, classify every record
(:mod:`governance.lifecycle.chain`) and check the newest checkpoint; refuse to start on a break (a fork,
a gap) or a log that does not reach its checkpoint, naming ``shadowgate audit repair``; rebuild the state
from the chain; then, in one transaction: an entry acknowledging foreign records found on the log (junk,
foreign-signed, duplicates), an entry for every key revocation not yet recorded, every model's routing
republished, and a checkpoint. Then resume each input partition right after the last offset the log
records (offsets live in the log, not in a consumer group).

Guarantees:

* one writer: the broker fences every writer of the log but the newest (:class:`FencedError` stops the
  others); the lease is scoped to the audit topic and Kafka cluster, never to a Redis prefix;
* liveness independent of input: the lease is renewed by a timer thread; a rejected input costs a JSON
  parse, a dictionary lookup and at most one signature check, never a signature, a transaction or a state
  write; rejections are summarised (counted per reason, with samples and the offsets covered), so a flood
  adds one entry per partition per ``summary_interval_s``;
* idempotent: a message whose offset the log already covers is skipped (counted as redelivered); an
  input whose id was already handled, at any offset, is rejected as ``replayed`` and changes nothing;
* crash safety: an entry, the routing it changes and the checkpoint commit together or not at all; the
  state is folded and saved only after the commit; after a crash the rebuild from the log and the routing
  republication restore both, and inputs after the last entry are read again;
* keys: given a ``LiveKeyring`` and a ``LiveTrust`` (as ``shadowgate governance`` does), it follows rotations
  and revocations while running (a new approver key in an identity's trust store is accepted from the next
  check on, no restart); a revocation is recorded as an entry, after which the chain refuses that key. When
  its own signing key is due for rotation (``rotate_after``, 90 days, spec 6.4) it rotates it itself, by its
  clock, and records a ``rotated`` entry signed by the new key; the retired key keeps verifying what it signed;
* timers: before each poll, the scheduled rollbacks and promotion retries that are due by the consumer's
  clock are carried out (:mod:`governance.lifecycle.timers`), one entry each, exactly like inputs: nothing
  is recorded as done before its routing and entry committed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from confluent_kafka import TopicPartition
from prometheus_client import CollectorRegistry

from governance.contract.events import Alert, Evidence, Versions
from governance.contract.findings import AlertSeverity
from governance.contract.kafkaio import Record, partitions_of, poll_records
from governance.contract.publishing import encode_signed_event
from governance.crypto.keys import KeyInfo
from governance.crypto.live import LiveKeyring
from governance.crypto.signing import Signer
from governance.errors import ConfigError, DeliveryError, InfrastructureError, ShadowgateError, VerificationError
from governance.lifecycle.audit import (
    AcknowledgedRecord,
    AuditEntry,
    EntryBody,
    KeyRevocation,
    KeyRotation,
    Repair,
    system_input,
)
from governance.lifecycle.chain import NO_CHECKPOINT, ChainWalk, check_anchor, read_items, walk
from governance.lifecycle.checkpoint import read_checkpoints
from governance.lifecycle.handler import Plan, handle
from governance.lifecycle.identities import LiveTrust, Trust
from governance.lifecycle.intake import Refused, intake
from governance.lifecycle.ledger import Transitioned
from governance.lifecycle.promotion import Rules
from governance.lifecycle.proofpack import write_encrypted
from governance.lifecycle.rejections import RejectionTally
from governance.lifecycle.routing import Assignment, RoutingPublisher, assignment_for, encode_assignment
from governance.lifecycle.state import GovernanceState, fold
from governance.lifecycle.state import rebuild as rebuild_state
from governance.lifecycle.timers import next_due
from governance.policy.catalog import FeatureCatalog
from governance.policy.document import Policy
from governance.service.auditlog import AuditWriter, Outgoing, read_log
from governance.service.clients import DEFAULT_COMMANDS_TOPIC, ConsumerClients, ConsumerConfig
from governance.service.lease import Lease, audit_lease_key
from governance.service.metrics import Metrics
from governance.service.rollback import execute_rollback
from governance.service.statestore import StateStore
from governance.service.transactions import TransactionalProducer

__all__ = ["CONSUMER", "DEFAULT_COMMANDS_TOPIC", "ConsumerClients", "ConsumerConfig", "GovernanceConsumer",
           "Metrics", "read_log"]

CONSUMER = "governance-consumer"
log = logging.getLogger("shadowgate.governance")
_ALERT_NS = uuid.UUID("0b6c7f38-5a51-4b1e-9d55-3f0d6c2f9a11")
_ROTATION_RETRY = timedelta(minutes=1)
_TIMERS_PER_POLL = 100  # timers due at once are many only after a long outage; the next poll takes the rest
_SECURITY = {"unsigned": "critical", "unknown_key": "critical", "bad_signature": "critical",
             "expired": "warning", "replayed": "warning", "invalid": "warning", "future": "warning"}


class GovernanceConsumer:
    """See the module docstring. Not thread-safe: one thread runs :meth:`run` (or :meth:`poll_once`).

    ``signer``: the system key, or a :class:`LiveKeyring` that follows rotations; ``trust``: a fixed
    :class:`Trust`, or a :class:`LiveTrust` that follows the trust stores; ``clients``: default
    :meth:`ConsumerClients.connect`.
    """

    def __init__(self, config: ConsumerConfig, *, signer: Signer | LiveKeyring, trust: Trust | LiveTrust,
                 policy: Policy, catalog: FeatureCatalog, metrics: CollectorRegistry,
                 clock: Callable[[], datetime] | None = None, encrypt_to: KeyInfo | None = None,
                 clients: ConsumerClients | None = None) -> None:
        share = policy.staging.canary_traffic_share
        if not share.min <= config.canary_share <= share.max:
            raise ConfigError(f"canary_share {config.canary_share} is outside the policy's "
                              f"staging.canary_traffic_share [{share.min}, {share.max}]")
        self.config, self.policy = config, policy
        self.clock = clock or (lambda: datetime.now(UTC))
        self._keys, self._trust_source = signer, trust
        self._trust = trust.current() if isinstance(trust, LiveTrust) else trust
        first = self._signer_at(self.clock())
        self.rules = Rules(policy=policy, catalog=catalog, canary_share=config.canary_share, signer=first,
                           trust=self._trust)
        self.metrics = Metrics(metrics)
        self.encrypt_to = encrypt_to
        self.state = GovernanceState()
        self.tally = RejectionTally(timedelta(seconds=config.summary_interval_s))
        self.skew = timedelta(seconds=config.command_skew_s)
        self.clients = clients or ConsumerClients.connect(config)
        self.store = StateStore(self.clients.redis, config.prefix)
        self.lease = Lease(self.clients.redis, audit_lease_key(self.clients.cluster_id, config.lifecycle_topic),
                           config.lease_ttl_s)
        self.writer = AuditWriter(self.clients.producer, config.lifecycle_topic, config.checkpoints_topic)
        self.routing = RoutingPublisher(self.clients.producer, config.bootstrap, config.routing_topic, first)
        self._expects = config.inputs()
        self._started = False
        #: whether start() finished (inputs assigned): the readiness the probes see, not _check_running's flag.
        self._assigned = False
        self.rotation_error: str | None = None
        self._rotation_retry_at: datetime | None = None
        #: time.monotonic() of the loop's last round (None: not started): what /healthz reads.
        self.last_beat: float | None = None

    @property
    def started(self) -> bool:
        """Whether it holds the lease and started (chain verified, inputs assigned), until it stops."""
        return self._started and self._assigned

    # ----------------------------------------------------------------------------------- keys

    @property
    def signer(self) -> Signer:
        """The system key signing now (the newest active one when following a :class:`LiveKeyring`)."""
        return self.rules.signer

    @property
    def trust(self) -> Trust:
        return self._trust

    @property
    def _producer(self) -> TransactionalProducer:
        return self.clients.producer  # alerts go through the fenced producer too

    def _signer_at(self, now: datetime) -> Signer:
        return self._keys.signer(now) if isinstance(self._keys, LiveKeyring) else self._keys

    def _refresh_keys(self, now: datetime) -> list[EntryBody]:
        """Follow the key files: rotate the system key when due; the current signer and trust; entries for
        rotations and for revocations not yet recorded."""
        rotated = self._rotate_if_due(now)
        if isinstance(self._trust_source, LiveTrust):
            failures = self._trust_source.failures
            self._trust = self._trust_source.current()
            self.metrics.key_reload_failures.inc(self._trust_source.failures - failures)
            if self._trust is not self.rules.trust:
                self.rules = dataclasses.replace(self.rules, trust=self._trust)
        if isinstance(self._keys, LiveKeyring):
            failures = self._keys.failures
            signer = self._keys.signer(now)
            self.metrics.key_reload_failures.inc(self._keys.failures - failures)
            if signer is not self.rules.signer:
                self.rules = dataclasses.replace(self.rules, signer=signer)
                self.routing.signer = signer
        return rotated + self._revocations(now)

    def _rotate_if_due(self, now: datetime) -> list[EntryBody]:
        """Rotate the system signing key when it passed ``rotate_after`` (only when following a LiveKeyring:
        a fixed Signer is the caller's business). The new key signs from the rotation entry on."""
        if not isinstance(self._keys, LiveKeyring) or not self.rules.signer.key.rotation_due(now):
            return []
        if self._rotation_retry_at is not None and now < self._rotation_retry_at:
            return []
        old = self.rules.signer.key
        try:
            new = self._keys.keyring.rotate_if_due(now, old.algorithm)
        except (ShadowgateError, OSError) as exc:  # the old key stays valid through its overlap: retry later
            self.metrics.key_reload_failures.inc()
            self.rotation_error, self._rotation_retry_at = f"key rotation failed: {exc}", now + _ROTATION_RETRY
            log.warning("%s; key %s keeps signing (it is valid through its overlap), tried again at %s",
                        self.rotation_error, old.key_id, self._rotation_retry_at.isoformat())
            return []
        if self.rotation_error is not None:
            log.info("key rotation done after an earlier failure (%s)", self.rotation_error)
        self.rotation_error, self._rotation_retry_at = None, None
        self._keys.watch.invalidate()
        if isinstance(self._trust_source, LiveTrust):
            self._trust_source.watch.invalidate()
        if new is None:  # another process rotated it already: the reload follows the files, nothing to record
            return []
        retired = next((k for k in self._keys.keyring.list_keys() if k.key_id == old.key_id), None)
        rotation = KeyRotation(store="system", new_key_id=new.key_id, retired_key_id=old.key_id, rotated_at=now,
                               retired_expires_at=retired.expires_at if retired is not None else None)
        source = system_input(self.config.lifecycle_topic, "key_rotated", CONSUMER)
        return [EntryBody(at=now, input=source, outcome="recorded", rotated=[rotation])]

    def _revocations(self, now: datetime) -> list[EntryBody]:
        stores = {"system": self._trust.system, **self._trust.identities}
        new = [KeyRevocation(store=name, key_id=key.key_id, revoked_at=key.revoked_at,
                             reason=key.revocation_reason or "no reason given")
               for name, store in sorted(stores.items()) for key in store
               if key.revoked_at is not None and key.key_id not in self.state.revoked]
        if not new:
            return []
        source = system_input(self.config.lifecycle_topic, "key_revoked", CONSUMER)
        return [EntryBody(at=now, input=source, outcome="recorded", revoked=new)]

    # ----------------------------------------------------------------------------------- start-up

    def start(self, stop: threading.Event | None = None, on_wait: Callable[[str], None] | None = None) -> bool:
        """Take the lease, fence earlier writers, rebuild from the log, republish routing, assign the inputs."""
        if not self.lease.acquire(stop, on_wait):
            return False
        self.lease.keep()
        self.clients.producer.init()
        now = self.clock()
        chain = self.read_chain(now)
        self.state = rebuild_state(chain.entries())
        self._started = True
        try:
            self._commit([*self._acknowledgement(chain, now), *self._refresh_keys(now)], republish=True)
        except BaseException:
            self._started = False
            raise
        assignments = []
        for topic in self._expects:
            for partition in partitions_of(self.clients.consumer, topic):
                offset = self.state.positions.get(f"{topic}:{partition}", -1) + 1
                assignments.append(TopicPartition(topic, partition, offset))
        self.clients.consumer.assign(assignments)
        # Started counts as the loop's first round: /healthz must not see a started consumer that never beat.
        self.last_beat, self._assigned = time.monotonic(), True
        return True

    def read_chain(self, now: datetime) -> ChainWalk:
        """The audit log walked (VerificationError on a break, or when it does not reach its checkpoint)."""
        topic, trust = self.config.lifecycle_topic, self._trust
        records = self.clients.log.entries()
        items = read_items([r.value for r in records], trust.system, now, trust.phase(now),
                           offsets=[r.offset for r in records])
        chain = walk(items)
        if chain.broken is not None:
            where = chain.broken.item.where
            raise VerificationError(f"{topic}: audit log BROKEN at {where}: {chain.broken.problem}; refusing to "
                                    "start: inspect it with `shadowgate audit verify`, then repair it with "
                                    "`shadowgate audit repair --reason ...` (docs/governance.md)")
        checkpoints, _ = read_checkpoints(self.clients.log.checkpoints(), topic, trust.system, now, trust.phase(now))
        problem = check_anchor(chain, checkpoints)
        if problem is not None and problem != NO_CHECKPOINT:
            raise VerificationError(f"{topic}: {problem}; refusing to start: repair it with "
                                    "`shadowgate audit repair --reason ...` (docs/governance.md)")
        return chain

    def rebuild(self) -> GovernanceState:
        """The state folded from the audit log's chain (VerificationError if it is broken)."""
        return rebuild_state(self.read_chain(self.clock()).entries())

    def _acknowledgement(self, chain: ChainWalk, now: datetime) -> list[EntryBody]:
        found = [a for a in chain.unacknowledged() if a.kind != "void"]
        if not found:
            return []
        self.metrics.foreign.inc(len(found))
        notes = [AcknowledgedRecord(digest=a.item.digest, offset=a.item.offset, kind=a.kind,  # type: ignore[arg-type]
                                    detail=a.detail[:512]) for a in found]
        repair = Repair(reason=f"{len(found)} record(s) on {self.config.lifecycle_topic} that are not entries of "
                               "the chain, found at start: never part of the chain", operator=CONSUMER,
                        acknowledged=notes)
        source = system_input(self.config.lifecycle_topic, "foreign_records", CONSUMER)
        return [EntryBody(at=now, input=source, outcome="recorded", repair=repair)]

    # ----------------------------------------------------------------------------------- the loop

    def _check_running(self) -> None:
        if not self._started:
            raise InfrastructureError("GovernanceConsumer.start() was not called (or it was stopped)")
        if not self.lease.ok():
            raise InfrastructureError(f"{self.lease.problem()}; stopping (another instance may take over)")

    def poll_once(self, timeout_s: float = 0.2, stop: threading.Event | None = None) -> list[AuditEntry]:
        """Handle the messages available within ``timeout_s``; returns the entries appended.

        Once ``stop`` is set the rest of the polled messages is left: each message is committed with its entry
        (the audit log holds the positions), so those are read again at the next start, none lost or doubled.
        """
        self._check_running()
        self.last_beat = time.monotonic()
        entries = self._commit(self._refresh_keys(self.clock()))
        entries += self.run_timers()
        for record in poll_records(self.clients.consumer, timeout_s):
            if stop is not None and stop.is_set():
                break
            self._check_running()
            entries += self.process(record)
            if self.tally.due(self.clock()):
                entries += self.flush()
        if self.tally.due(self.clock()):
            entries += self.flush()
        return entries

    def run_timers(self) -> list[AuditEntry]:
        """Carry out the timers due by the consumer's clock (scheduled rollbacks, promotion retries), one entry
        each, each decided on the state the previous one left."""
        entries: list[AuditEntry] = []
        for _ in range(_TIMERS_PER_POLL):
            self._check_running()
            plan = next_due(self.state, self.rules, self.config.lifecycle_topic, self.clock())
            if plan is None:
                break
            entries += self._execute(plan)
        return entries

    def flush(self) -> list[AuditEntry]:
        """Write the pending rejection summaries now (one entry per partition)."""
        return self._commit(self.tally.drain(self.clock())) if len(self.tally) else []

    def run(self, stop: threading.Event, on_wait: Callable[[str], None] | None = None,
            on_entry: Callable[[AuditEntry], None] | None = None) -> None:
        """Start and handle inputs until ``stop`` is set; writes pending summaries, releases the lease."""
        try:
            if not self.start(stop, on_wait):
                return
            while not stop.is_set():
                for entry in self.poll_once(stop=stop):
                    if on_entry is not None:
                        on_entry(entry)
            for entry in self.flush():
                if on_entry is not None:
                    on_entry(entry)
        finally:
            self.close()

    def process(self, record: Record) -> list[AuditEntry]:
        """Handle one message; the entries appended ([] for a redelivery, or a rejection still pending)."""
        if self.state.handled(record.topic, record.partition, record.offset):
            self.metrics.redelivered.inc()
            return []
        expects = self._expects.get(record.topic)
        if expects is None:
            raise ConfigError(f"message from topic {record.topic}, which is not an input of the governance consumer")
        self.metrics.inputs.labels(topic=record.topic).inc()
        now = self.clock()
        result = intake(record, self.state, self._trust, now, expects, self.skew)
        if isinstance(result, Refused):
            self.tally.add(result, now)
            self.metrics.rejected.labels(reason=result.rejection.reason).inc()
            return []
        entries = self.flush()  # positions only grow, and a rollback's routing seq is the next entry's
        return entries + self._execute(handle(self.state, result, self.rules, now))

    def _execute(self, plan: Plan) -> list[AuditEntry]:
        """Carry out ``plan`` (its rollback through the routing first, if any) and commit its entry."""
        body, published = plan.body, None
        if plan.rollback is not None:
            body, published = execute_rollback(plan.rollback, body, self.state, self.config.canary_share,
                                               self.routing, self._trust, self.clock)
        return self._commit([body], published)

    def _commit(self, bodies: Sequence[EntryBody], published: Assignment | None = None,
                republish: bool = False) -> list[AuditEntry]:
        """Seal ``bodies``; write them with the routing they change and a checkpoint in one transaction; then
        fold, save, alert. Nothing is written (and nothing folded) when there are no bodies and no republish."""
        if not bodies and not republish:
            return []
        self._check_running()
        before, now, signer = self.state, self.clock(), self.signer
        sealed = self.writer.seal(bodies, before.seq + 1, before.head, signer, now)
        after = before
        for item in sealed:
            after = fold(after, item.entry, item.hash)
        routing = self._routing(before, after, published, republish, now)
        self.writer.commit(sealed, routing, self.writer.checkpoint(after.seq, after.head, signer, now))
        self.state = after
        self.store.save(after, self.config.canary_share, now)
        for item in sealed:
            self._write_proofpack(item.entry, now)
            self._alert(item.entry, now)
            self._count(item.entry)
        return [item.entry for item in sealed]

    # ----------------------------------------------------------------------------------- effects

    def _routing(self, before: GovernanceState, after: GovernanceState, published: Assignment | None,
                 republish: bool, now: datetime) -> list[Outgoing]:
        """The signed assignments to write with the entries: every model's on start (with ``seq`` one past the
        head, so it wins over a rollback's routing left behind by a crash), else the ones that changed."""
        share, messages = self.config.canary_share, []
        for model in after.registry.models:
            if republish:
                new = assignment_for(after.registry, model, share, after.seq + 1, now)
            else:
                new = assignment_for(after.registry, model, share, after.seq, now)
                old = assignment_for(before.registry, model, share, before.seq, now)
                if model not in before.registry.models and not (new.production or new.canary or new.shadow):
                    continue  # a new model serves nothing yet: nothing to tell the scoring services
                if new.same_routing(published) or (model in before.registry.models and new.same_routing(old)):
                    continue
            value = encode_assignment(new, self.signer, now)
            messages.append(Outgoing(self.config.routing_topic, value, model.encode()))
        return messages

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
        self._alert_log(entry, now)
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

    def _alert_log(self, entry: AuditEntry, now: datetime) -> None:
        """Alerts about the inputs and the log itself: a rejection summary, foreign records, revocations."""
        alerts: list[tuple[AlertSeverity, str, str, str]] = []  # severity, dedup, summary, runbook
        source = entry.input
        if entry.summary is not None:
            counts = entry.summary.counts
            severity: AlertSeverity = "critical" if any(_SECURITY.get(r) == "critical" for r in counts) else "warning"
            text = ", ".join(f"{n} {reason}" for reason, n in counts.items())
            alerts.append((severity, f"rejected|{'+'.join(counts)}|{source.position}",
                           f"rejected {entry.summary.count} input(s) from {source.topic}[{source.partition}] offsets "
                           f"{entry.summary.first_offset}..{entry.summary.last_offset}: {text}",
                           "governance-rejected-input"))
        if entry.repair is not None and entry.repair.acknowledged:
            alerts.append(("critical", "audit-log|foreign-records",
                           f"{len(entry.repair.acknowledged)} foreign record(s) on the audit log "
                           f"{self.config.lifecycle_topic} (not part of the chain): {entry.repair.reason}",
                           "governance-audit-log"))
        if entry.revoked:
            keys = ", ".join(f"{r.key_id} ({r.store})" for r in entry.revoked)
            alerts.append(("warning", "keys|revoked", f"key revocation recorded at audit seq {entry.seq}: {keys}",
                           "key-rotation"))
        for severity, dedup, summary, runbook in alerts:
            self._send_alert(entry, now, model="governance", production=None, severity=severity, dedup=dedup,
                             summary=summary, runbook=runbook)

    def _send_alert(self, entry: AuditEntry, now: datetime, *, model: str, production: str | None,
                    severity: AlertSeverity, dedup: str, summary: str, runbook: str) -> None:
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
        self._started = self._assigned = False
        self.lease.release()
        self.routing.close()
        self.clients.close()
