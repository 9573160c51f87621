"""``shadowgate governance`` (the consumer) and ``shadowgate audit verify | export``, plus the shared CLI helpers.

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
``audit verify`` exits 1 on a broken chain.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from governance.contract.settings import Settings, load_settings
from governance.crypto.keyring import default_keys_dir
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule, parse_phase
from governance.errors import ConfigError
from governance.lifecycle.audit import AuditEntry
from governance.lifecycle.ledger import Transitioned

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
              help="Seconds before a crashed instance's lease expires.")
def governance(keys_dir: Path, commands_topic: str, phase: str | None, catalog: Path | None, policy_path: str | None,
               canary_share: float | None, proofpack_dir: Path | None, lease_ttl: float) -> None:
    """Run the governance consumer (one active instance; a second one waits for the lease)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from prometheus_client import CollectorRegistry

    from governance.contract.topics import ensure_topics
    from governance.crypto.algorithms import Algorithm
    from governance.crypto.keyring import Keyring
    from governance.lifecycle.identities import load_trust, system_signer
    from governance.policy.catalog import load_catalog
    from governance.policy.document import load_policy
    from governance.service.consumer import ConsumerConfig, GovernanceConsumer
    from shadowgate.commands.metrics import serve_metrics

    config = settings()
    policy = load_policy(policy_path or config.policy_path)
    now = now_utc()
    share = canary_share if canary_share is not None else policy.staging.canary_traffic_share.min
    encrypt_to = Keyring(keys_dir).active_key(now, Algorithm.ML_KEM_768) if proofpack_dir is not None else None
    consumer_config = ConsumerConfig.from_settings(config, share, commands_topic, proofpack_dir=proofpack_dir,
                                                   lease_ttl_s=lease_ttl)
    ensure_topics(config.kafka_bootstrap, {commands_topic: (1, {"retention.ms": "-1"})})
    registry = CollectorRegistry()
    serve_metrics(config.metrics_port, registry, "the governance consumer")
    consumer = GovernanceConsumer(consumer_config, signer=system_signer(keys_dir, now),
                                  trust=load_trust(keys_dir, schedule_of(phase)), policy=policy,
                                  catalog=load_catalog(catalog or config.catalog_path), metrics=registry,
                                  encrypt_to=encrypt_to)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
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


@click.group()
def audit() -> None:
    """Verify or export the signed, hash-chained audit log."""


@audit.command("verify")
@keys_dir_option
@phase_option
@click.option("--file", "path", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Verify this exported copy (JSON lines) instead of the lifecycle topic.")
@click.option("--expect-head", default=None, help="Fail unless the last entry hashes to this (detects truncation).")
def audit_verify(keys_dir: Path, phase: str | None, path: Path | None, expect_head: str | None) -> None:
    """Check every entry's signature, seq and hash link; report the first broken entry (exit 1)."""
    from governance.lifecycle.audit import verify_chain
    from governance.lifecycle.identities import load_trust
    from governance.service.consumer import read_log

    trust = load_trust(keys_dir, schedule_of(phase))
    if path is not None:
        records = [line for line in path.read_bytes().splitlines() if line.strip()]
    else:
        config = settings()
        records = [record.value for record in read_log(config.kafka_bootstrap, config.topics.lifecycle)]
    now = now_utc()
    report = verify_chain(records, trust.system, now, trust.phase(now))
    click.echo(str(report))
    if not report.ok:
        raise SystemExit(1)
    if expect_head is not None and report.head != expect_head:
        click.echo(f"audit log head {report.head} is not the expected {expect_head} (truncated or replaced)")
        raise SystemExit(1)


@audit.command("export")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def audit_export(output: Path, force: bool) -> None:
    """Write the audit log as JSON lines (one signed entry per line) for archiving or offline verification."""
    from governance.service.consumer import read_log

    if output.exists() and not force:
        raise ConfigError(f"{output} exists; pass --force to overwrite it")
    config = settings()
    records = read_log(config.kafka_bootstrap, config.topics.lifecycle)
    output.write_bytes(b"".join(record.value + b"\n" for record in records))
    click.echo(f"wrote {len(records)} entries to {output}")
