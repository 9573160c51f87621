"""Repairing the audit log (``shadowgate audit repair``): a signed entry that says which entries are void and
from which head the chain continues, so a consumer that refused a broken log can start again.

Procedure (:func:`repair_log`):

1. read the log and the checkpoints and plan the repair (:func:`governance.lifecycle.repair.plan_repair`):
   every valid entry that links back to the start forms a tree; the chain continues from the chosen tip
   (``head``: required when the log forks, naming one of the tips); every other entry (the other branch
   of a fork, entries after a gap) is void; foreign records and duplicates are acknowledged; checkpoints
   the repaired chain no longer reaches are superseded. ``dry_run`` stops here: nothing is written.
2. take the audit log's standby lease (refused while a governance consumer holds it: stop it first) and
   initialise the log's transactions, which fences any other writer;
3. read and plan again (nothing can be appended any more), then append the repair entry, signed by the
   system key, and a checkpoint of it, in one transaction;
4. verify the repaired log with its checkpoints.

Nothing is deleted: void entries and foreign records stay on the topic and in exports, and
``audit verify`` lists each of them with the repair that accounts for it. The state the consumer rebuilds
leaves the void entries out; inputs only they had handled are read and handled again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis
from confluent_kafka import Consumer

from governance.contract.connections import KafkaTarget, RedisTarget, redis_client
from governance.contract.kafkaio import make_consumer
from governance.crypto.signing import Signer
from governance.errors import ConfigError
from governance.lifecycle.audit import EntryBody, system_input
from governance.lifecycle.chain import NO_CHECKPOINT, ChainReport, Item, check_anchor, read_items, verify_chain, walk
from governance.lifecycle.checkpoint import Checkpoint, read_checkpoints
from governance.lifecycle.identities import Trust
from governance.lifecycle.repair import RepairPlan, plan_repair
from governance.service.auditlog import AuditLogReader, AuditWriter
from governance.service.clients import cluster_id
from governance.service.lease import Lease, audit_lease_key
from governance.service.transactions import TransactionalProducer, transactional_id

__all__ = ["RepairOutcome", "RepairTarget", "repair_log"]


@dataclass(frozen=True)
class RepairTarget:
    """The audit log to repair and where its lease lives."""

    bootstrap: KafkaTarget
    redis_url: RedisTarget
    lifecycle_topic: str
    checkpoints_topic: str


@dataclass(frozen=True)
class RepairOutcome:
    plan: RepairPlan
    seq: int | None = None  # the repair entry's seq (None: dry run)
    report: ChainReport | None = None  # the log verified after the repair


def _read(reader: AuditLogReader, trust: Trust, now: datetime) -> tuple[list[Item], list[Checkpoint]]:
    records = reader.entries()
    items = read_items([r.value for r in records], trust.system, now, trust.phase(now),
                       offsets=[r.offset for r in records])
    checkpoints, _ = read_checkpoints(reader.checkpoints(), reader.topic, trust.system, now, trust.phase(now))
    return items, checkpoints


def _plan(items: list[Item], checkpoints: list[Checkpoint], head: str | None, topic: str) -> RepairPlan:
    chain = walk(items)
    anchor = check_anchor(chain, checkpoints)
    if chain.broken is None and not chain.unacknowledged() and anchor in (None, NO_CHECKPOINT):
        raise ConfigError(f"nothing to repair: {topic} is a whole chain of {len(chain.links)} entries "
                          "(`shadowgate audit verify` says what it holds)")
    return plan_repair(items, checkpoints, head)


def repair_log(target: RepairTarget, signer: Signer, trust: Trust, *, reason: str, operator: str, now: datetime,
               head: str | None = None, dry_run: bool = False) -> RepairOutcome:
    """Plan and (unless ``dry_run``) write the repair of ``target`` (see the module docstring)."""
    if not reason.strip():
        raise ConfigError("a repair needs a reason (--reason), kept in the signed entry")
    reader = AuditLogReader(target.bootstrap, target.lifecycle_topic, target.checkpoints_topic)
    plan = _plan(*_read(reader, trust, now), head, target.lifecycle_topic)
    if dry_run:
        return RepairOutcome(plan)
    client: redis.Redis[bytes] = redis_client(target.redis_url)
    metadata: Consumer = make_consumer(target.bootstrap, "audit-repair")
    try:
        lease = Lease(client, audit_lease_key(cluster_id(metadata), target.lifecycle_topic), ttl_s=60.0)
        if not lease.try_acquire():
            raise ConfigError(f"a governance consumer holds the lease {lease.key}; stop it before repairing "
                              f"{target.lifecycle_topic}")
        try:
            return _write(target, reader, signer, trust, reason.strip(), operator, now, head)
        finally:
            lease.release()
    finally:
        metadata.close()
        client.close()


def _write(target: RepairTarget, reader: AuditLogReader, signer: Signer, trust: Trust, reason: str, operator: str,
           now: datetime, head: str | None) -> RepairOutcome:
    producer = TransactionalProducer(target.bootstrap, transactional_id(target.lifecycle_topic))
    try:
        producer.init()  # from here on no other writer can append: plan again on what is final
        items, checkpoints = _read(reader, trust, now)
        plan = _plan(items, checkpoints, head, target.lifecycle_topic)
        writer = AuditWriter(producer, target.lifecycle_topic, target.checkpoints_topic)
        body = EntryBody(at=now, input=system_input(target.lifecycle_topic, "repair", operator), outcome="recorded",
                         repair=plan.repair(reason, operator))
        sealed = writer.seal([body], plan.next_seq, plan.prev_hash, signer, now)
        writer.commit(sealed, [], writer.checkpoint(sealed[0].entry.seq, sealed[0].hash, signer, now))
    finally:
        producer.close()
    records = reader.entries()
    checkpoints_after, _ = read_checkpoints(reader.checkpoints(), target.lifecycle_topic, trust.system, now,
                                            trust.phase(now))
    report = verify_chain([r.value for r in records], trust.system, now, trust.phase(now),
                          checkpoints=checkpoints_after, offsets=[r.offset for r in records])
    return RepairOutcome(plan, sealed[0].entry.seq, report)
