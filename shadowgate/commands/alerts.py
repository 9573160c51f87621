"""``shadowgate alerts tail | forward``: read the signed alerts, or deliver them to the on-call's tools.

Both read the settings (``SHADOWGATE_*``: Kafka, topics, policy) and verify every message against the
system trust store of ``--keys-dir`` (``SHADOWGATE_KEYS_DIR``), as the governance consumer does.

* ``tail`` prints verified notices (``--json``: one JSON object per line) and every forged, unsigned or
  invalid message as REJECTED with its reason; ``--model`` and ``--severity`` filter the notices.
* ``forward --config FILE`` (``SHADOWGATE_ALERTS_CONFIG``) delivers them to the receivers the file names
  (:mod:`governance.service.alerting.config`) and serves ``/metrics``, ``/healthz`` and ``/readyz`` on
  ``--port`` (default ``SHADOWGATE_METRICS_PORT``, 9464; 0 = off). ``--check`` validates the file and exits.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from governance.contract.connections import kafka_connection
from governance.contract.refusals import check_kafka
from shadowgate.commands.governance import keys_dir_option, now_utc, phase_option, schedule_of, settings
from shadowgate.commands.logformat import configure_logging

if TYPE_CHECKING:
    from governance.contract.settings import Settings
    from governance.service.alerting.follow import Shown
    from governance.service.alerting.intake import Source

__all__ = ["alerts"]

_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_SOURCES = ("alerts", "gates", "rollbacks", "audit")


def _topics(config: Settings, sources: tuple[str, ...]) -> dict[Source, str]:
    t = config.topics
    every: dict[Source, str] = {"alerts": t.alerts, "gates": t.gates, "rollbacks": t.rollbacks, "audit": t.lifecycle}
    return {source: topic for source, topic in every.items() if source in sources}


def _trigger_runbooks(policy_path: str | None) -> dict[str, str]:
    from governance.policy.document import load_policy

    triggers = load_policy(policy_path).triggers
    return {name: str(getattr(triggers, name).runbook) for name in type(triggers).model_fields
            if hasattr(getattr(triggers, name), "runbook")}


def _clean(text: str) -> str:
    """Event text for a terminal: control characters (escape sequences) shown as '?'."""
    return _CONTROL.sub("?", text)


def _line(shown: Shown, color: bool) -> str:
    if shown.rejected is not None:
        r = shown.rejected
        claims = ", ".join(f"{k} {v}" for k, v in sorted(r.claims.items())) or "nothing"
        text = (f"{'-':20}  {'REJECTED':8}  {r.reason:14}  {r.origin.position}: {r.message} "
                f"(claims {claims}; unverified, not forwarded)")
        return click.style(_clean(text), fg="magenta", bold=True) if color else _clean(text)
    notice = shown.notice
    assert notice is not None  # noqa: S101 - a Shown holds one of the two
    when = notice.starts_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    state = "RESOLVED" if notice.status == "resolved" else "FIRING"
    text = (f"{when:20}  {notice.severity.upper():8}  {state:14}  {notice.model}  {notice.alertname}  "
            f"{notice.summary}  [runbook {notice.runbook} · {notice.origin.position} · signed by {notice.key_id}]")
    style = {"critical": "red", "warning": "yellow", "info": "cyan"}[notice.severity]
    return click.style(_clean(text), fg="green" if state == "RESOLVED" else style) if color else _clean(text)


def _json(shown: Shown) -> bytes:
    if shown.rejected is not None:
        r = shown.rejected
        return orjson.dumps({"verified": False, "rejected": {"reason": r.reason, "message": r.message,
                                                             "source": r.origin.position, "claims": r.claims}})
    assert shown.notice is not None  # noqa: S101
    return orjson.dumps({"verified": True, **shown.notice.to_json(with_record=False)})


@click.group()
def alerts() -> None:
    """Follow the signed alerts, or forward them to Alertmanager, webhooks, Slack and PagerDuty."""


@alerts.command("tail")
@keys_dir_option
@phase_option
@click.option("--model", "models", multiple=True, help="Only this model's notices (repeatable).")
@click.option("--severity", type=click.Choice(list(_SEVERITY_RANK)), default="info", show_default=True,
              help="Only notices at least this severe.")
@click.option("--source", "sources", type=click.Choice(_SOURCES), multiple=True,
              help="Read only these sources (default: all: alerts, gates, rollbacks, audit).")
@click.option("--last", type=click.IntRange(0), default=20, show_default=True,
              help="Show the last N messages of each partition, then new ones.")
@click.option("--from-beginning", is_flag=True, help="Show every message the topics hold.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep following, or stop at the end the topics had at start.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def tail(keys_dir: Path, phase: str | None, models: tuple[str, ...], severity: str, sources: tuple[str, ...],
         last: int, from_beginning: bool, follow: bool, as_json: bool) -> None:
    """Print the verified alerts, gate decisions and rollback outcomes; forged ones as REJECTED."""
    from governance.lifecycle.identities import load_trust
    from governance.service.alerting.follow import Follower

    config = settings()
    follower = Follower(kafka_connection(config), _topics(config, sources or _SOURCES),
                        load_trust(keys_dir, schedule_of(phase)), now_utc, last=None if from_beginning else last,
                        trigger_runbooks=_trigger_runbooks(config.policy_path))
    floor = _SEVERITY_RANK[severity]
    color = not as_json and sys.stdout.isatty()
    follower.start()
    try:
        while True:
            for shown in follower.poll():
                notice = shown.notice
                if notice is not None and (_SEVERITY_RANK[notice.severity] < floor
                                           or (models and notice.model not in models)):
                    continue
                if as_json:
                    sys.stdout.buffer.write(_json(shown) + b"\n")
                    sys.stdout.flush()
                else:
                    click.echo(_line(shown, color))
            if not follow and follower.at_start_end():
                break
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
        click.echo(f"{follower.shown} notice(s) read, {follower.rejected} message(s) rejected "
                   "(forged, unsigned or invalid: never forwarded)", err=True)


@alerts.command("forward")
@keys_dir_option
@phase_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              envvar="SHADOWGATE_ALERTS_CONFIG", help="Receivers YAML (see README, Receiving alerts).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="/metrics, /healthz, /readyz port (default SHADOWGATE_METRICS_PORT; 0 = off).")
@click.option("--check", is_flag=True, help="Validate the config file (and read its secrets), then exit.")
@click.option("--loglevel", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def forward(keys_dir: Path, phase: str | None, config_path: Path, port: int | None, check: bool,
            loglevel: str) -> None:
    """Deliver every verified alert, gate decision and rollback outcome to the configured receivers."""
    import logging
    import signal
    from types import FrameType

    from prometheus_client import CollectorRegistry

    from governance.lifecycle.identities import load_trust
    from governance.service.alerting.config import load_config
    from governance.service.alerting.forwarder import Forwarder
    from governance.service.alerting.server import HealthServer

    config = load_config(config_path)
    receivers = ", ".join(f"{r.name} ({r.type})" for r in config.receivers)
    if check:
        click.echo(f"{config_path}: OK: {len(config.receivers)} receiver(s): {receivers}; sources "
                   f"{', '.join(config.sources)}; dead letters to {config.dead_letter_topic}")
        return
    env = settings()
    configure_logging(loglevel.upper(), env.log_format)  # SHADOWGATE_LOG_FORMAT=json: JSON lines
    logging.getLogger("shadowgate.kafka").setLevel(logging.WARNING)
    trust = load_trust(keys_dir, schedule_of(phase))
    registry = CollectorRegistry()
    check_kafka(kafka_connection(env))  # a refused login, no TLS, a wrong CA: one line naming the setting
    forwarder = Forwarder(config, bootstrap=kafka_connection(env), topics=_topics(env, config.sources), trust=trust,
                          registry=registry, trigger_runbooks=_trigger_runbooks(env.policy_path))
    chosen = env.metrics_port if port is None else port
    server = HealthServer(chosen, registry, forwarder.health, forwarder.ready) if chosen else None

    def _stop(signum: int, frame: FrameType | None) -> None:
        forwarder.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    forwarder.start()
    if server is not None:
        server.start()
    click.echo(f"alert forwarder: receivers {receivers}; sources {', '.join(config.sources)}; dead letters to "
               f"{config.dead_letter_topic}" + (f"; /metrics /healthz /readyz on :{server.port}" if server else ""),
               err=True)
    try:
        forwarder.run()
    except KeyboardInterrupt:
        forwarder.stop.set()
    finally:
        forwarder.close()
        if server is not None:
            server.close()
