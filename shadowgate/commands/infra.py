"""``shadowgate up | down | topics``: local servers and topics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from governance.contract.connections import kafka_connection
from governance.contract.settings import load_settings
from governance.contract.topics import ensure_topics, topic_specs
from governance.errors import ConfigError

__all__ = ["down", "topics", "up"]


def _script() -> Path:
    script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "servers.sh"
    if not script.exists():
        raise ConfigError(
            f"{script} not found: `shadowgate up` runs from a source checkout; "
            "with Docker use `docker compose up -d kafka redis`"
        )
    return script


@click.command()
def up() -> None:
    """Start the local Kafka broker and Redis server (deploy/local; idempotent)."""
    raise SystemExit(subprocess.call(["bash", str(_script()), "up"]))  # noqa: S603,S607


@click.command()
def down() -> None:
    """Stop the local Kafka broker and Redis server."""
    raise SystemExit(subprocess.call(["bash", str(_script()), "down"]))  # noqa: S603,S607


@click.group()
def topics() -> None:
    """Kafka topics shadowgate uses."""


@topics.command("create")
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="partitions of the scores and labels topics")
def topics_create(partitions: int) -> None:
    """Create every topic that does not exist yet (names from SHADOWGATE_TOPICS__*)."""
    settings = load_settings()
    specs = topic_specs(settings, partitions)
    created = ensure_topics(kafka_connection(settings), specs)
    for name in specs:
        click.echo(f"{'created' if name in created else 'exists '}  {name}")


@topics.command("list")
def topics_list() -> None:
    """Print the topic names in use and what each carries."""
    t = load_settings().topics
    rows = [
        (t.scores, "score events and envelopes from scoring services (key = request_id)"),
        (t.labels, "ground-truth labels (key = request_id)"),
        (t.dlq, "invalid messages: original bytes + reason + topic/partition/offset"),
        (t.gates, "signed GateReady / GateBlocked events"),
        (t.rollbacks, "signed RollbackTrigger events"),
        (t.alerts, "signed Alert events"),
        (t.approvals, "signed approvals and escalations"),
        (t.lifecycle, "signed, hash-chained audit log (infinite retention)"),
        (t.routing, "serving assignment per model (compacted)"),
    ]
    for name, what in rows:
        click.echo(f"{name:<24} {what}")
