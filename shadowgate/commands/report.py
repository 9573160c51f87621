"""``shadowgate report MODEL VERSION --html FILE``: a version's ProofPack as one self-contained HTML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from governance.contract.connections import KafkaTarget, kafka_connection, redis_connection
from governance.errors import ConfigError
from shadowgate.commands.governance import keys_dir_option, phase_option, schedule_of

__all__ = ["report"]


@click.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--html", "output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Write the report here (one HTML file, no external resource).")
@click.option("--no-audit", is_flag=True, help="Do not read the audit log (approvals are then not cross-checked).")
@click.option("--no-windows", is_flag=True, help="Do not read the window store (no distributions).")
@keys_dir_option
@phase_option
def report(model_name: str, version: str, output: Path, no_audit: bool, no_windows: bool, keys_dir: Path,
           phase: str | None) -> None:
    """Render VERSION's ProofPack, verified, with its gate checks, tests, distributions, drift and approvals."""
    from datetime import UTC, datetime

    from governance.contract.settings import load_settings
    from governance.lifecycle.identities import load_trust
    from governance.policy.document import load_policy
    from shadowgate.report import render_report
    from shadowgate.web.sources import Sources

    settings = load_settings()
    trust, now = load_trust(keys_dir, schedule_of(phase)), datetime.now(UTC)
    sources = Sources.connect(redis_connection(settings), settings.redis_prefix, load_policy(settings.policy_path),
                              trust)
    try:
        found = sources.proofpack(model_name, version, now)
        if found is None:
            raise ConfigError(f"{model_name}@{version} has no ProofPack yet (generated on promotion to PRODUCTION)")
        items = None if no_audit else _audit_items(kafka_connection(settings), settings.topics.lifecycle, trust, now)
        html = render_report(found[1], trust, None if no_windows else sources.store, now, items)
    finally:
        sources.close()
    output.write_text(html, encoding="utf-8")
    click.echo(f"evidence report of {found[0].proofpack_id} (signature verified) written to {output}")


def _audit_items(bootstrap: KafkaTarget, topic: str, trust: Any, now: Any) -> list[dict[str, Any]]:
    """Every audit entry, verified in order (signature, seq, hash link); stops at the first broken one."""
    from governance.errors import CryptoError, EventValidationError
    from governance.lifecycle.audit import GENESIS
    from governance.service.consumer import read_log
    from shadowgate.web.feeds import judge_entry

    items: list[dict[str, Any]] = []
    head = GENESIS
    for seq, record in enumerate(read_log(bootstrap, topic)):
        try:
            item, head = judge_entry(record, trust, now, seq, head)
        except (CryptoError, EventValidationError) as exc:
            click.echo(f"audit log broken at offset {record.offset} ({exc}); later entries not used", err=True)
            break
        items.append({**item, "status": "verified"})
    return items
