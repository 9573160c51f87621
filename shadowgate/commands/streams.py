"""``shadowgate worker | windows | replay``: the streaming evaluator and reading its windows."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from governance.contract.connections import kafka_config, kafka_connection, redis_client, redis_connection
from governance.contract.refusals import check_kafka, check_redis
from governance.contract.settings import Settings, load_settings
from governance.errors import ConfigError, ShadowgateError
from shadowgate.commands.logformat import logging_config

__all__ = ["replay", "windows", "worker"]


@click.command()
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="port of /metrics, /healthz and /readyz (default SHADOWGATE_METRICS_PORT; 0 = off)")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--keys-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              envvar="SHADOWGATE_KEYS_DIR", help="keyring whose active ML-DSA key signs the governance events")
@click.option("--instance-id", default=None,
              help="static membership in the consumer group (default SHADOWGATE_INSTANCE_ID; none: dynamic): "
                   "restarted within the session timeout, the worker takes its partitions back without a "
                   "rebalance. One per process: two processes with one id fence each other until one stops")
def worker(metrics_port: int | None, loglevel: str, keys_dir: Path | None, instance_id: str | None) -> None:
    """Run a worker: pair scores, fold windows into Redis, emit signed gate events.

    Start N of them to share the partitions (one consumer group). A batch's offsets are committed only
    once its windows are in Redis and its dead letters in the dead-letter topic; a failing batch is tried
    again with backoff, never skipped. Besides /metrics, the metrics port answers /healthz (200 unless the
    worker's consumer failed for good) and /readyz (200 when it joined its group, Redis and Kafka answer,
    its keys are loaded and no batch has been stuck past SHADOWGATE_UNREADY_AFTER_S; 503 with the reasons).
    """
    import faust
    from prometheus_client import REGISTRY

    from governance.contract.topics import ensure_topics, topic_specs
    from governance.crypto import default_keys_dir
    from governance.crypto.live import LiveKeyring
    from shadowgate.commands.metrics import serve_metrics
    from streams.worker.app import create_app
    from streams.worker.runtime import tune_gc
    from streams.worker.telemetry import WorkerMetrics

    settings = load_settings(**({"instance_id": instance_id} if instance_id else {}))
    tune_gc(settings.gc_young_threshold)
    # Reloaded while running (SHADOWGATE_KEYS_CHECK_S / _RELOAD_S): a rotated key signs from its rotation on.
    signer = LiveKeyring(keys_dir or default_keys_dir(), check_s=settings.keys_check_s,
                         reload_s=settings.keys_reload_s)
    try:
        signer.signer(datetime.now(UTC))
    except ShadowgateError as exc:
        raise ConfigError(
            f"the worker cannot sign governance events: {exc} "
            f"(keys dir {keys_dir or default_keys_dir()}; choose another with --keys-dir or SHADOWGATE_KEYS_DIR)"
        ) from None
    check_kafka(kafka_connection(settings))  # a refused login, no TLS, a wrong CA: one line naming the setting
    check_redis(redis_connection(settings), settings.redis_prefix)
    _check_copartitioned(settings)
    # Only the worker's own topics: with ACLs a worker sees (and may create) no governance topic.
    t = settings.topics
    mine = (t.scores, t.labels, t.dlq, t.gates, t.rollbacks, t.alerts)
    ensure_topics(kafka_connection(settings), {n: s for n, s in topic_specs(settings).items() if n in mine})
    port = settings.metrics_port if metrics_port is None else metrics_port
    metrics = WorkerMetrics(REGISTRY)
    handle = create_app(settings, metrics=metrics, signer=signer)
    serve_metrics(port, REGISTRY, "the worker", probes={"/healthz": handle.health.live, "/readyz": handle.health.ready})
    if port:
        click.echo(f"metrics on :{port}/metrics, probes on :{port}/healthz and :{port}/readyz", err=True)
    faust.Worker(handle.app, loglevel=loglevel.upper(),  # SHADOWGATE_LOG_FORMAT=json: JSON lines
                 logging_config=logging_config(loglevel, settings.log_format)).execute_from_commandline()


def _check_copartitioned(s: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient({**kafka_config(kafka_connection(s)), "log_level": 0}).list_topics(timeout=10)
    except Exception as exc:  # confluent-kafka raises KafkaException: say it in one line
        raise ConfigError(f"Kafka at {s.kafka_bootstrap} does not answer ({exc}); is it up? (`make up`)") from None
    counts = {t: len(md.topics[t].partitions) for t in (s.topics.scores, s.topics.labels) if t in md.topics}
    if len(counts) == 2 and len(set(counts.values())) != 1:
        raise ConfigError(
            f"topics {s.topics.scores} and {s.topics.labels} must have the same partition count "
            f"(they have {counts}): a label must land on the partition of its scores"
        )


@click.command()
@click.option("--model", default=None, help="only this model's comparisons")
@click.option("--window", "window_names", multiple=True, default=None,
              help="5m, 1h, 24h, 7d, 14d or since=<ISO datetime>; repeatable (default: all five)")
@click.option("--json", "as_json", is_flag=True, help="print the JSON document")
def windows(model: str | None, window_names: tuple[str, ...], as_json: bool) -> None:
    """Show the live windows of every comparison from Redis."""
    from streams.state.redis_store import RedisWindowStore
    from streams.worker.reading import DEFAULT_WINDOWS, read_windows

    settings = load_settings()
    store = RedisWindowStore(redis_client(redis_connection(settings)), prefix=settings.redis_prefix)
    doc = read_windows(store, model=model, windows=window_names or DEFAULT_WINDOWS)
    store.close()
    _print(doc, as_json)
    _exit_on_errors(doc)


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--window", "window_names", multiple=True, default=None,
              help="windows to report (default: all five); repeatable")
@click.option("--json", "as_json", is_flag=True, help="print the JSON document")
@click.option("--model-type", type=click.Choice(["risk_scoring", "classification", "anomaly_detection", "ranking"]),
              default=None, help="shadow rules to apply (default: the strictest of the policy)")
@click.option("--policy", "policy_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, envvar="SHADOWGATE_POLICY_PATH", help="policy YAML (default: the shipped policy)")
@click.option("--evaluate-every", default=60.0, show_default=True, type=click.FloatRange(min=1.0),
              help="seconds of event time between evaluations (the live worker evaluates every second)")
@click.option("--now", "now", default=None, type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"]),
              help="the clock event time is bounded around, as the live worker bounds it around its own "
                   "(SHADOWGATE_MAX_EVENT_LEAD_S ahead, SHADOWGATE_MAX_EVENT_LAG_S behind; outside: dead "
                   "letters). Default: now. Replay older recordings at the time they were recorded, "
                   "e.g. --now 2026-11-02T00:00:00Z (UTC unless an offset is given)")
def replay(file: Path, window_names: tuple[str, ...], as_json: bool, model_type: str | None,
           policy_path: Path | None, evaluate_every: float, now: datetime | None) -> None:
    """Evaluate recorded traffic (JSON lines of score, envelope and label events) with no Kafka or Redis.

    Event time is bounded as in the live worker, around --now (default: now), so traffic replayed soon
    after it was recorded gives the live worker's windows.
    """
    from governance.policy.catalog import load_catalog
    from governance.policy.document import load_policy
    from streams.decode.bounds import EventTimeBounds
    from streams.fold.aggregate import catalog_config
    from streams.worker.reading import DEFAULT_WINDOWS
    from streams.worker.replay import replay_file
    from streams.worker.runtime import tune_gc

    settings = load_settings()
    tune_gc(Settings.model_fields["gc_young_threshold"].default)
    clock = None if now is None else (now if now.tzinfo else now.replace(tzinfo=UTC)).timestamp()
    # The worker's binning and feature check: the catalog of SHADOWGATE_CATALOG_PATH (default: the shipped one).
    config = catalog_config(load_catalog(settings.catalog_path))
    doc = replay_file(file, windows=window_names or DEFAULT_WINDOWS, policy=load_policy(policy_path),
                      config=config, model_type=model_type, evaluate_every_s=evaluate_every,
                      bounds=EventTimeBounds(settings.max_event_lead_s, settings.max_event_lag_s), now_s=clock,
                      join_window_s=settings.join_window_s, close_delay_s=settings.minute_close_s,
                      progress=lambda n: click.echo(f"  {n:,} lines", err=True))  # fmt: skip
    _print(doc, as_json, empty="no comparisons: the file holds no production event paired with a candidate's")
    if not as_json:
        _print_events(doc)
    _exit_on_errors(doc)


_SHOWN = ("sample_count", "label_count", "mean_abs_delta", "p95_abs_delta", "p99_abs_delta", "kl_divergence",
          "psi", "decision_flip_rate", "p99_latency_ms", "error_rate", "brier_score", "auc_roc",
          "precision_at_10", "calibration_slope", "orphan_rate", "integrity_violations", "feature_violations")


_NO_LIVE_COMPARISONS = "no comparisons yet: publish scores and run `shadowgate worker`"


def _print(doc: dict[str, object], as_json: bool, empty: str = _NO_LIVE_COMPARISONS) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    comparisons = doc.get("comparisons") or []
    for failure in doc.get("errors") or []:  # type: ignore[attr-defined]
        click.echo(f"{failure['model']}: {failure['production_version']} (production) vs "
                   f"{failure['candidate_version']} ({failure['role']}): {failure['error']}", err=True)
    if not comparisons:
        click.echo(empty)
        return
    console = Console()
    for comp in comparisons:  # type: ignore[attr-defined]
        table = Table(title=f"{comp['model']}: {comp['production_version']} (production) vs "
                            f"{comp['candidate_version']} ({comp['role']})")
        table.add_column("metric")
        names = list(comp["windows"])
        for name in names:
            table.add_column(name, justify="right")
        for metric in _SHOWN:
            table.add_row(metric, *[_fmt(comp["windows"][w].get(metric)) for w in names])
        console.print(table)
    logging.getLogger(__name__).debug("printed %d comparisons", len(comparisons))  # type: ignore[arg-type]


def _exit_on_errors(doc: dict[str, Any]) -> None:
    """Exit 1 (after everything was printed) when a comparison could not be read or evaluated."""
    failed = [*(doc.get("errors") or []), *(doc.get("evaluation_errors") or [])]
    if failed:
        click.echo(f"{len(failed)} comparison read(s) or evaluation(s) failed; the others are complete", err=True)
        sys.exit(1)


def _print_events(doc: dict[str, Any]) -> None:
    events = doc.get("events") or []
    stats = doc.get("stats") or {}
    outside = stats.get("ahead", 0) + stats.get("behind", 0)
    click.echo(f"{stats.get('lines', 0):,} lines: {stats.get('pairs', 0):,} pairs, "
               f"{stats.get('labeled_pairs', 0):,} labelled, {stats.get('dead_letters', 0):,} invalid"
               + (f" ({outside:,} dated outside the event-time bounds: see --now)" if outside else "")
               + f"; {len(events)} governance events")
    for failure in doc.get("evaluation_errors") or []:
        click.echo(f"  evaluation of {failure['comparison']} at {failure['at']} failed: {failure['error']}")
    for event in events:
        detail = event.get("verdict") or event.get("action") or event.get("severity") or ""
        failing = ", ".join(c.get("name", "") for c in event.get("failing_checks") or [])
        click.echo(f"  {event['ts']}  {event['type']:<16} {detail:<12} {failing}")


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
