"""``shadowgate publish | consume | schemas``: synthetic traffic, tailing a topic, JSON Schemas."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import orjson

from governance.contract.connections import KafkaConnection, kafka_config, kafka_connection
from governance.contract.settings import load_settings
from governance.errors import ConfigError, DeliveryError

__all__ = ["consume", "export_schemas", "publish", "schemas"]


@click.command()
@click.option("--pairs", default=10_000, show_default=True, type=click.IntRange(1), help="requests to publish")
@click.option("--model", default="fraud-risk", show_default=True)
@click.option("--production-version", default="1.4.0", show_default=True)
@click.option("--candidate-version", default="1.5.0", show_default=True)
@click.option("--role", type=click.Choice(["shadow", "canary"]), default="shadow", show_default=True)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(0),
              help="events per envelope (0 = one event per message)")
@click.option("--shift", default=0.0, show_default=True, help="mean shift of the candidate's scores")
@click.option("--error-rate", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="share of candidate requests that fail")
@click.option("--labels/--no-labels", default=True, show_default=True, help="also publish labels")
@click.option("--now/--historic", "use_now", default=True, show_default=True,
              help="stamp events with the current time (default) or start at 2026-11-01")
@click.option("--rate", default=1000.0, show_default=True, help="event-time requests per second")
@click.option("--seed", default=7, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write JSON lines to this file (for `shadowgate replay`) instead of publishing")
def publish(pairs: int, model: str, production_version: str, candidate_version: str, role: str,
            batch_size: int, shift: float, error_rate: float, labels: bool, use_now: bool, rate: float,
            seed: int, out: Path | None) -> None:
    """Publish synthetic production/candidate traffic (and labels) through the SDK."""
    from datetime import UTC, datetime

    from shadowgate.sdk import LabelPublisher, ScorePublisher
    from shadowgate.traffic import TrafficSpec, generate

    start = datetime.now(UTC) if use_now else TrafficSpec.start
    spec = TrafficSpec(model=model, production_version=production_version,
                       candidate_version=candidate_version, role=role, pairs=pairs, shift=shift,
                       cand_error_rate=error_rate, start=start, rate_per_s=rate, seed=seed,
                       label_delay_s=1.0 if use_now else 3600.0)
    if out is not None:
        written = 0
        with out.open("wb") as fh:
            for event in generate(spec):
                if event.pop("kind") == "label" and not labels:
                    continue
                fh.write(orjson.dumps(event, option=orjson.OPT_OMIT_MICROSECONDS * 0) + b"\n")
                written += 1
        click.echo(f"wrote {written:,} events to {out}")
        return
    settings = load_settings()
    connection = kafka_connection(settings)
    refused: list[DeliveryError] = []
    t0 = time.perf_counter()
    with ScorePublisher(connection, settings.topics.scores, batch_size=batch_size,
                        on_delivery_error=refused.append) as scores, \
            LabelPublisher(connection, settings.topics.labels, on_delivery_error=refused.append) as label_pub:
        for i, event in enumerate(generate(spec)):
            kind = event.pop("kind")
            if kind == "score":
                scores.publish(event)
            elif labels:
                label_pub.publish(event)
            if i and i % 50_000 == 0:
                click.echo(f"  {i:,} events queued", err=True)
    elapsed = time.perf_counter() - t0
    click.echo(f"published {scores.stats.delivered:,} score events in {scores.stats.messages:,} messages "
               f"and {label_pub.stats.delivered:,} labels to {settings.kafka_bootstrap} in {elapsed:.1f} s "
               f"(failed: {scores.stats.failed + label_pub.stats.failed})")
    if refused:
        raise _undelivered(connection, refused[0], scores.stats.failed + label_pub.stats.failed)


def _undelivered(connection: KafkaConnection, first: DeliveryError, failed: int) -> DeliveryError:
    """The one line a publish that lost events ends with: a missing ACL named like every refusal
    (docs/security.md), anything else as the client said it."""
    from confluent_kafka import KafkaError

    from governance.contract.refusals import denied

    if first.code is not None:
        why = denied(connection, KafkaError(first.code), f"a write to topic {first.topic}")
        if why is not None:
            return DeliveryError(f"{failed} event(s) not delivered: {why}")
    return DeliveryError(f"{failed} event(s) not delivered; the first: {first}")


@click.command()
@click.argument("topic")
@click.option("--from-beginning/--latest", default=True, show_default=True)
@click.option("--max-messages", default=0, show_default=True, type=click.IntRange(0), help="0 = no limit")
@click.option("--idle-timeout", default=5.0, show_default=True, help="stop after this many idle seconds")
def consume(topic: str, from_beginning: bool, max_messages: int, idle_timeout: float) -> None:
    """Print the messages of TOPIC as JSON lines (with partition, offset and headers, e.g. a dead letter's reason)."""
    import uuid

    from confluent_kafka import Consumer

    from governance.contract.refusals import read_denied

    settings = load_settings()
    connection, group = kafka_connection(settings), f"shadowgate-consume-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({
        **kafka_config(connection),
        "group.id": group,
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": False,
        "log_level": 0,  # connection errors come back through poll() and are reported once
    })
    consumer.subscribe([topic])
    seen, idle_since = 0, time.monotonic()
    try:
        while not max_messages or seen < max_messages:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() - idle_since > idle_timeout:
                    break
                continue
            error = msg.error()
            if error is not None:
                why = read_denied(connection, error, group=group, topics=[topic])
                raise ConfigError(why or f"topic {topic}: {error.str()}")
            idle_since = time.monotonic()
            seen += 1
            value: Any
            try:
                value = orjson.loads(msg.value() or b"null")
            except orjson.JSONDecodeError:
                value = (msg.value() or b"").decode("utf-8", "replace")
            doc: dict[str, Any] = {"partition": msg.partition(), "offset": msg.offset(),
                                   "key": (msg.key() or b"").decode("utf-8", "replace")}
            headers: list[tuple[str, bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
            if headers:
                # A dead letter's reason, source coordinates and model travel as headers.
                doc["headers"] = {name: (raw or b"").decode("utf-8", "replace") for name, raw in headers}
            doc["value"] = value
            click.echo(orjson.dumps(doc).decode())
    finally:
        consumer.close()


def export_schemas() -> dict[str, str]:
    """File name -> JSON Schema text of the wire contract and of every governance event."""
    from governance.contract.events import (
        Alert,
        Escalation,
        GateBlocked,
        GateReady,
        RecalibrationRequested,
        RollbackTrigger,
    )
    from governance.contract.wire import LabelEvent, ScoreBatch, ScoreEvent

    models: dict[str, Any] = {
        "score_event": ScoreEvent, "score_batch": ScoreBatch, "label_event": LabelEvent,
        "gate_ready": GateReady, "gate_blocked": GateBlocked, "rollback_trigger": RollbackTrigger,
        "alert": Alert, "escalation": Escalation, "recalibration_requested": RecalibrationRequested,
    }
    return {f"{name}.json": json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True)
            + "\n" for name, model in models.items()}


@click.command()
@click.option("--out", default="schemas", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--check", is_flag=True, help="exit 1 if the files differ from the models (CI)")
def schemas(out: Path, check: bool) -> None:
    """Write the JSON Schemas of the wire contract to OUT (or check they are current)."""
    stale = []
    for name, text in export_schemas().items():
        path = out / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        click.echo(f"wrote {path}")
    if stale:
        raise click.ClickException(f"stale JSON Schemas: {', '.join(stale)}; run `shadowgate schemas`")
