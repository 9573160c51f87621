"""``shadowgate governance`` (the consumer) and ``shadowgate audit verify | export | repair``, plus CLI helpers.

Configuration comes from the settings (``SHADOWGATE_*``: Kafka, Redis, prefix, topics, policy) and these
options, each with an environment variable:

=====================  =============================  ==================================================
option                 environment                    default
=====================  =============================  ==================================================
``--keys-dir``         ``SHADOWGATE_KEYS_DIR``        ``~/.config/shadowgate/keys`` (see governance.identities)
``--commands-topic``   ``SHADOWGATE_TOPICS__COMMANDS``  ``governance.commands``
``--catalog``          ``SHADOWGATE_CATALOG_PATH``    the shipped catalog (package data)
``--phase``            ``SHADOWGATE_PQC_PHASE``       the PQC migration phase of today's date
=====================  =============================  ==================================================

Errors are :mod:`governance.errors` classes, printed by ``shadowgate.cli.main`` as one line (exit 2);
``audit verify`` exits 1 on a broken chain, an unacknowledged foreign record or a log that does not reach
its newest checkpoint.
"""

from __future__ import annotations

import getpass
import logging
import os
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click

from governance.contract.connections import kafka_connection, redis_connection
from governance.contract.refusals import check_kafka, check_redis
from governance.contract.settings import Settings, load_settings
from governance.crypto.keyring import default_keys_dir
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule, parse_phase
from governance.errors import ConfigError
from governance.lifecycle.audit import AuditEntry
from governance.lifecycle.ledger import Transitioned
from shadowgate.commands.logformat import configure_logging

if TYPE_CHECKING:
    from collections.abc import Sequence

    from governance.crypto.live import LiveKeyring
    from governance.lifecycle.chain import ChainReport
    from governance.lifecycle.checkpoint import Checkpoint
    from governance.lifecycle.identities import LiveTrust, Trust
    from governance.service.auditlog import AuditLogReader
    from governance.service.consumer import GovernanceConsumer
    from governance.service.health import ConsumerHealth

__all__ = ["audit", "commands_topic_option", "describe_entry", "governance", "keys_dir_option", "phase_option",
           "schedule_of", "settings"]

_F = TypeVar("_F", bound=Callable[..., Any])


def keys_dir_option(func: _F) -> _F:
    return click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path), envvar="SHADOWGATE_KEYS_DIR",
                        default=default_keys_dir, show_default="~/.config/shadowgate/keys",
                        help="System keyring; approver identities under identities/<ID>/.")(func)


def commands_topic_option(func: _F) -> _F:
    return click.option("--commands-topic", envvar="SHADOWGATE_TOPICS__COMMANDS",
                        default=lambda: load_settings().topics.commands, show_default="governance.commands",
                        help="Topic of signed commands to the governance consumer.")(func)


def phase_option(func: _F) -> _F:
    return click.option("--phase", envvar="SHADOWGATE_PQC_PHASE", default=None, metavar="0-3",
                        help="Pin the PQC migration phase (default: the phase of today's date).")(func)


def schedule_of(phase: str | None) -> MigrationSchedule:
    return DEFAULT_SCHEDULE if phase is None else DEFAULT_SCHEDULE.pinned(parse_phase(phase))


def settings() -> Settings:
    return load_settings()


def now_utc() -> datetime:
    return datetime.now(UTC)


def describe_entry(entry: AuditEntry) -> list[str]:
    """One line per thing an entry says, for people."""
    source = entry.input
    head = f"#{entry.seq} {entry.outcome}: {source.type or 'message'} {source.id or ''}".rstrip()
    lines = [f"{head} (from {source.actor or 'unknown'} via {source.topic}@{source.offset})"]
    for fact in entry.facts:
        if isinstance(fact, Transitioned):
            verb = "rolled back" if fact.rollback else "moved"
            restored = f", restored {fact.restored_version}" if fact.restored_version else ""
            lines.append(f"  {fact.model}@{fact.version} {verb} {fact.from_stage} -> {fact.to_stage}{restored}")
        else:
            lines.append(f"  {fact.kind}: {fact.model}@{fact.version}")
    if entry.gate is not None:
        verdict = "READY" if entry.gate.passed else "BLOCKED"
        lines.append(f"  gate {entry.gate.gate} for {entry.gate.model}@{entry.gate.version}: {verdict}")
    if entry.proofpack is not None:
        payload = entry.proofpack.get("payload")
        lines.append(f"  ProofPack {payload.get('proofpack_id') if isinstance(payload, dict) else '?'} generated")
    if entry.rollback is not None:
        rb = entry.rollback
        lines.append(f"  rollback {rb.status}: {rb.model} {rb.from_version} -> {rb.to_version}"
                     + (f": {rb.error}" if rb.error else ""))
        lines += [f"    - {step}" for step in rb.steps]
    if entry.rejection is not None and entry.rejection.rules:
        lines.append(f"  refused, {len(entry.rejection.rules)} rule(s) broken:")
        lines += [f"    - {rule}" for rule in entry.rejection.rules]
    elif entry.rejection is not None:
        lines.append(f"  rejected ({entry.rejection.reason}): {entry.rejection.message}")
    if entry.blocked:
        lines.append("  not promoted automatically, because:")
        lines += [f"    - {rule}" for rule in entry.blocked]
    if entry.retry is not None:
        lines.append(f"  only time blocks it: the consumer tries again at {entry.retry.due_at.isoformat()}")
    if entry.rollback is not None and entry.rollback.status == "SCHEDULED" and entry.rollback.due_at is not None:
        lines.append(f"  scheduled rollback due {entry.rollback.due_at.isoformat()}")
    for rotation in entry.rotated:
        lines.append(f"  key rotated ({rotation.store}): {rotation.retired_key_id} -> {rotation.new_key_id}")
    return lines + _describe_log_entry(entry)


def _describe_log_entry(entry: AuditEntry) -> list[str]:
    """The lines of a rejection summary, a repair or a key revocation."""
    lines = []
    if entry.summary is not None:
        counts = ", ".join(f"{n} {reason}" for reason, n in entry.summary.counts.items())
        lines.append(f"  {entry.summary.count} input(s) rejected, offsets {entry.summary.first_offset}.."
                     f"{entry.summary.last_offset}: {counts}")
        lines += [f"    - @{s.offset} {s.reason}: {s.type or 'message'}{' ' + s.id if s.id else ''}: "
                  f"{s.message[:160]}" for s in entry.summary.samples]
    if entry.repair is not None:
        repair = entry.repair
        lines.append(f"  {entry.input.type} by {repair.operator}: {repair.reason}")
        lines.append(f"    chain continues from seq {entry.seq - 1} (prev_hash {entry.prev_hash[:16]}...)")
        lines += [f"    void: entry seq {v.seq} {v.hash[:16]}..." + (f" at offset {v.offset}" if v.offset is not None
                  else "") for v in repair.void]
        lines += [f"    acknowledged {a.kind} record {a.digest[:16]}..."
                  + (f" at offset {a.offset}" if a.offset is not None else "") + f": {a.detail[:120]}"
                  for a in repair.acknowledged]
        if repair.supersedes_checkpoints:
            lines.append("    checkpoints published before this entry are superseded")
    lines += [f"  key {r.key_id} ({r.store}) revoked at {r.revoked_at.isoformat()}: {r.reason}"
              for r in entry.revoked]
    return lines


@click.command()
@keys_dir_option
@commands_topic_option
@phase_option
@click.option("--catalog", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Governed feature catalog YAML (default: SHADOWGATE_CATALOG_PATH, else the shipped one).")
@click.option("--policy", "policy_path", default=None, help="Policy YAML (default: settings, else the shipped one).")
@click.option("--canary-share", type=float, default=None, help="Canary traffic share (default: the policy minimum).")
@click.option("--proofpack-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each ProofPack here, encrypted to the keyring's ML-KEM-768 key.")
@click.option("--lease-ttl", type=click.FloatRange(1.0), default=15.0, show_default=True,
              help="Seconds before a crashed instance's lease expires (the lease is renewed every third of it, "
                   "by a timer, whatever the input).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
              help="text, or JSON lines (default SHADOWGATE_LOG_FORMAT, else text)")
def governance(keys_dir: Path, commands_topic: str, phase: str | None, catalog: Path | None, policy_path: str | None,
               canary_share: float | None, proofpack_dir: Path | None, lease_ttl: float,
               log_format: str | None) -> None:
    """Run the governance consumer (one active instance per audit log; a second one waits for the lease).

    The audit log has one writer, fenced by the broker: a Kafka transactional.id derived from the audit
    topic, so an instance that starts fences every earlier one (which stops with an error naming it).
    Rejected inputs are summarised: one audit entry per input partition every SHADOWGATE_REJECTION_SUMMARY_S
    seconds (5), counted per reason. Keys and trust stores are reloaded while running (checked every
    SHADOWGATE_KEYS_CHECK_S, reloaded every SHADOWGATE_KEYS_RELOAD_S), so `keys rotate` / `keys revoke`
    need no restart; a group- or world-writable keys directory or trust store is refused. It refuses to
    start on a forked or truncated audit log: see `shadowgate audit repair`.

    Besides /metrics, the metrics port answers /healthz (its loop goes round, or it waits as a standby) and
    /readyz (it holds the lease and has started, Redis and Kafka answer, its keys are loaded; 503 with the
    failing checks). On SIGTERM it finishes the input in hand, writes its pending summaries and releases the
    lease (a standby takes over at once) within SHADOWGATE_SHUTDOWN_TIMEOUT_S (10 s).
    """
    from prometheus_client import CollectorRegistry

    from governance.contract.topics import ensure_topics, topic_specs
    from governance.crypto.algorithms import Algorithm
    from governance.crypto.keyring import Keyring
    from governance.policy.catalog import load_catalog
    from governance.policy.document import load_policy
    from governance.service.consumer import ConsumerConfig, GovernanceConsumer
    from shadowgate.commands.metrics import serve_metrics

    config = settings()
    configure_logging(logging.WARNING, log_format or config.log_format)
    log = logging.getLogger("shadowgate.governance")
    policy = load_policy(policy_path or config.policy_path)
    now = now_utc()
    share = canary_share if canary_share is not None else policy.staging.canary_traffic_share.min
    encrypt_to = Keyring(keys_dir).active_key(now, Algorithm.ML_KEM_768) if proofpack_dir is not None else None
    consumer_config = ConsumerConfig.from_settings(config, share, commands_topic, proofpack_dir=proofpack_dir,
                                                   lease_ttl_s=lease_ttl)
    keys, trust = _live_keys(keys_dir, phase, config, now)
    checkpoints = config.topics.checkpoints
    kafka = kafka_connection(config)
    check_kafka(kafka)  # a refused login, no TLS, a wrong CA: one line naming the setting, before anything
    check_redis(redis_connection(config), config.redis_prefix)
    ensure_topics(kafka, {commands_topic: (1, {"retention.ms": "-1"}), checkpoints: topic_specs(config)[checkpoints]})
    registry = CollectorRegistry()
    consumer = GovernanceConsumer(consumer_config, signer=keys, trust=trust, policy=policy,
                                  catalog=load_catalog(catalog or config.catalog_path), metrics=registry,
                                  encrypt_to=encrypt_to)
    health = consumer_health(consumer, keys)
    serve_metrics(config.metrics_port, registry, "the governance consumer",
                  probes={"/healthz": health.live, "/readyz": health.ready})
    stop = _stop_on_sigterm(config.shutdown_timeout_s, log)
    click.echo(f"governance consumer: audit log {consumer_config.lifecycle_topic}, inputs "
               f"{', '.join(consumer_config.inputs())}, canary share {share:.0%}", err=True)

    def waiting(holder: str) -> None:
        click.echo(f"another governance consumer holds the lease ({holder}); waiting for it", err=True)

    def entry_lines(entry: AuditEntry) -> None:
        for line in describe_entry(entry):
            click.echo(line)

    try:
        consumer.run(stop, on_wait=waiting, on_entry=entry_lines)
    except KeyboardInterrupt:
        stop.set()
    if stop.is_set():
        log.warning("stopped: lease released")


def _stop_on_sigterm(timeout_s: float, log: logging.Logger) -> threading.Event:
    """An event SIGTERM sets; the process exits (code 3) if it has not stopped ``timeout_s`` later."""
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: stopping after the input in hand (within %.0f s)", timeout_s)
        stop.set()
        # A stop that hangs (a broker gone mid-transaction) must not outlive the grace period: exit then; what
        # was not committed is read again by the next instance.
        late = threading.Timer(timeout_s, _late)
        late.daemon = True  # does not hold the process once the stop is done
        late.start()

    def _late() -> None:
        log.error("did not stop within %.0f s of SIGTERM; exiting", timeout_s)
        os._exit(3)

    signal.signal(signal.SIGTERM, _stop)
    return stop


def consumer_health(consumer: GovernanceConsumer, keys: LiveKeyring) -> ConsumerHealth:
    """The probes of ``consumer``: Redis through its own client, Kafka through an admin client of its own
    (a probe never waits behind the consumer's calls)."""
    from confluent_kafka.admin import AdminClient

    from governance.contract.connections import kafka_config
    from governance.service.health import ConsumerHealth

    admin = AdminClient({**kafka_config(consumer.config.bootstrap), "log_level": 0})
    redis = consumer.clients.redis
    return ConsumerHealth(
        started=lambda: consumer.started, holds_lease=consumer.lease.ok, last_beat=lambda: consumer.last_beat,
        redis_ping=lambda: redis.ping(), kafka_ping=lambda: admin.list_topics(timeout=2.0).brokers,
        keys_loaded=lambda: keys.signer(now_utc()) is not None,
    )


def _live_keys(keys_dir: Path, phase: str | None, config: Settings, now: datetime) -> tuple[LiveKeyring, LiveTrust]:
    """The keys the consumer follows while it runs, loaded once now: a keyring that cannot sign or a trust
    store others can write stops it here, in one line, before any Kafka or Redis call."""
    from governance.crypto.live import LiveKeyring
    from governance.lifecycle.identities import LiveTrust

    keys = LiveKeyring(keys_dir, check_s=config.keys_check_s, reload_s=config.keys_reload_s)
    keys.signer(now)
    trust = LiveTrust(keys_dir, schedule_of(phase), check_s=config.keys_check_s, reload_s=config.keys_reload_s)
    trust.current()
    return keys, trust


@click.group()
def audit() -> None:
    """Verify, export or repair the signed, hash-chained audit log."""


@audit.command("verify")
@keys_dir_option
@phase_option
@click.option("--file", "path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Verify this exported copy (JSON lines) instead of the lifecycle topic.")
@click.option("--expect-head", default=None, help="Fail unless the last entry hashes to this (detects truncation).")
@click.option("--no-checkpoint", is_flag=True,
              help="Do not check the newest signed checkpoint (offline copies); a truncated tail then goes unnoticed.")
def audit_verify(keys_dir: Path, phase: str | None, path: Path | None, expect_head: str | None,
                 no_checkpoint: bool) -> None:
    """Check every record: signatures, seq, hash links; foreign records, void entries, repairs; and that the log
    reaches the newest signed checkpoint (a cut tail fails). Exit 1 naming the first problem."""
    from governance.lifecycle.chain import verify_chain
    from governance.lifecycle.checkpoint import read_checkpoints
    from governance.lifecycle.identities import load_trust
    from governance.service.auditlog import AuditLogReader

    trust, config, now = load_trust(keys_dir, schedule_of(phase)), settings(), now_utc()
    reader = AuditLogReader(kafka_connection(config), config.topics.lifecycle, config.topics.checkpoints)
    checkpoints = None
    if not no_checkpoint:  # first: a checkpoint read means its entries are committed (see _settled)
        checkpoints, _ = read_checkpoints(reader.checkpoints(), config.topics.lifecycle, trust.system, now,
                                          trust.phase(now))
    if path is not None:
        records = [line for line in path.read_bytes().splitlines() if line.strip()]
        report = verify_chain(records, trust.system, now, trust.phase(now), checkpoints=checkpoints)
    else:
        report = _settled(reader, trust, now, checkpoints)
    click.echo(str(report))
    if not report.ok:
        raise SystemExit(1)
    if expect_head is not None and report.head != expect_head:
        click.echo(f"audit log head {report.head} is not the expected {expect_head} (truncated or replaced)")
        raise SystemExit(1)


def _settled(reader: AuditLogReader, trust: Trust, now: datetime, checkpoints: Sequence[Checkpoint] | None,
             wait_s: float = 5.0) -> ChainReport:
    """The log verified; re-read while it is shorter than a checkpoint already read, for up to ``wait_s``: a
    transaction's markers reach the log's partition and the checkpoint's independently, a few ms apart."""
    import time

    from governance.lifecycle.chain import verify_chain
    from governance.service.client import log_end

    deadline = time.monotonic() + wait_s
    newest = max((c.seq for c in checkpoints or ()), default=-1)
    while True:
        log = reader.entries()
        report = verify_chain([r.value for r in log], trust.system, now, trust.phase(now), checkpoints=checkpoints,
                              offsets=[r.offset for r in log])
        end = log[-1].offset + 1 if log else 0
        if report.ok or report.broken_index is not None or newest < report.entries or time.monotonic() > deadline:
            return report
        while log_end(reader.bootstrap, reader.topic) <= end and time.monotonic() < deadline:
            time.sleep(0.05)


@audit.command("repair")
@keys_dir_option
@phase_option
@click.option("--reason", required=True, help="Why (kept in the signed repair entry).")
@click.option("--head", default=None, metavar="HASH",
              help="Continue the chain from this entry (8+ hex digits of its hash); required when the log forks.")
@click.option("--operator", default=lambda: getpass.getuser(), show_default="the current user",
              help="Who repairs (kept in the entry).")
@click.option("--dry-run", is_flag=True, help="Print the repair and write nothing.")
def audit_repair(keys_dir: Path, phase: str | None, reason: str, head: str | None, operator: str,
                 dry_run: bool) -> None:
    """Append a signed repair entry to a forked, gapped or truncated audit log so the consumer can start again.

    It names the entries that become void (the other branch of a fork, entries after a gap), the foreign
    records it acknowledges, and the head the chain continues from; nothing is deleted. Stop the governance
    consumer first (the repair takes its lease and fences its writer); then start it again.
    """
    from governance.lifecycle.identities import load_trust, system_signer
    from governance.service.repair import RepairTarget, repair_log

    config, now = settings(), now_utc()
    target = RepairTarget(kafka_connection(config), redis_connection(config), config.topics.lifecycle,
                          config.topics.checkpoints)
    outcome = repair_log(target, system_signer(keys_dir, now), load_trust(keys_dir, schedule_of(phase)),
                         reason=reason, operator=operator, now=now, head=head, dry_run=dry_run)
    plan = outcome.plan
    click.echo(f"the chain continues from {plan.head or 'the start'}")
    if len(plan.tips) > 1:
        click.echo("heads it could continue from: " + "; ".join(str(t) for t in plan.tips))
    for void in plan.void:
        click.echo(f"void: entry seq {void.seq} {void.hash}" + (f" at offset {void.offset}" if void.offset is not None
                                                                 else ""))
    for note in plan.acknowledge:
        click.echo(f"acknowledged: {note.kind} record {note.digest[:16]} at offset {note.offset}: {note.detail}")
    if plan.supersedes_checkpoints:
        click.echo("older checkpoints no longer describe the log: superseded by this repair")
    if dry_run:
        click.echo("dry run: nothing written")
        return
    click.echo(f"repaired: entry seq {outcome.seq} appended")
    if outcome.report is not None:
        click.echo(str(outcome.report))
        if not outcome.report.ok:
            raise SystemExit(1)


@audit.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def audit_export(output: Path, force: bool) -> None:
    """Write the audit log as JSON lines (one signed record per line) for archiving or offline verification."""
    from governance.service.auditlog import read_log

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    config = settings()
    records = read_log(kafka_connection(config), config.topics.lifecycle)
    output.write_bytes(b"".join(record.value + b"\n" for record in records))
    click.echo(f"wrote {len(records)} entries to {output}")
