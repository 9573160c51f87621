"""``shadowgate serve``: the read-only status page, JSON API and verdict endpoint (:mod:`shadowgate.web`)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from governance.contract.connections import kafka_connection, redis_connection
from governance.errors import ConfigError
from shadowgate.commands.governance import keys_dir_option, phase_option, schedule_of
from shadowgate.commands.logformat import configure_logging

__all__ = ["serve"]

if TYPE_CHECKING:
    from shadowgate.web.app import Service


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True,
              help="Port of the page, the API, /healthz, /readyz and /metrics (0: a free one, printed).")
@click.option("--policy", "policy_path", default=None,
              help="Policy YAML the board judges with (default: SHADOWGATE_POLICY_PATH, else the shipped one).")
@keys_dir_option
@phase_option
def serve(host: str, port: int, policy_path: str | None, keys_dir: Path, phase: str | None) -> None:
    """Serve the status page: lifecycle board, live windows as charts, alerts, audit log, ProofPacks.

    Read-only: it reads the worker's windows and the governance state from Redis and follows the alerts and
    audit log topics, verifying every signature with the system trust store of --keys-dir.
    """
    from governance.contract.settings import load_settings
    from governance.lifecycle.identities import load_trust
    from governance.policy.document import load_policy
    from shadowgate.web.app import Service
    from shadowgate.web.feeds import AlertFeed, AuditFeed
    from shadowgate.web.sources import Sources

    settings = load_settings()
    if settings.log_format == "json":  # SHADOWGATE_LOG_FORMAT=json: JSON lines
        configure_logging("WARNING", "json")
    trust = load_trust(keys_dir, schedule_of(phase))
    policy = load_policy(policy_path or settings.policy_path)
    sources = Sources.connect(redis_connection(settings), settings.redis_prefix, policy, trust)
    service = Service(sources, AlertFeed(kafka_connection(settings), settings.topics.alerts, trust),
                      AuditFeed(kafka_connection(settings), settings.topics.lifecycle, trust))
    asyncio.run(_run(service, host, port))


async def _run(service: Service, host: str, port: int) -> None:
    from aiohttp import web

    from shadowgate.web.app import create_app

    runner = web.AppRunner(create_app(service), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another with --port") from None
    bound = runner.addresses[0][1] if runner.addresses else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - only shown, never bound here
    click.echo(f"status page: http://{shown}:{bound}/  (API under /api/, Ctrl-C stops)", err=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
