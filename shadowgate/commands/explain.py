"""``shadowgate model explain MODEL VERSION``: why is this version blocked, right now.

Evaluates the next gate of VERSION on the live windows in Redis, now: the windows are read afresh from the
window store the workers write (:meth:`streams.worker.rounds.Evaluator.judge`), the lifecycle facts come from
what the governance consumer keeps in Redis, event time is the comparison's newest event and the source's
freshness is judged at the wall clock, as in the live worker. Nothing is published and no evaluator state is
touched: it is a read. Printed: every check with its value, threshold, verdict (outcome and enforcement)
and the policy section it enforces (:mod:`governance.policy.sections`), then what is still missing: days,
samples, labels (from the checks), documents, approvals and every other lifecycle rule (from the governance
state, :func:`governance.lifecycle.report.blockers`). ``--json`` prints the same as one document.

A SHADOW version is judged on its shadow comparison(s), a STAGING one on its canary comparison(s), a
PRODUCTION one by the production checks on the comparison that monitors it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import orjson

from governance.contract.findings import Check
from governance.errors import ConfigError
from governance.policy.document import Policy
from governance.policy.sections import section_of
from shadowgate.commands.governance import now_utc, settings

__all__ = ["explain", "explanations", "missing"]


def _days(check: Check) -> str | None:
    if check.value is None or check.threshold is None:
        return None
    return f"{check.threshold - check.value:.2f} more days ({check.threshold:g} required, {check.value:.2f} elapsed)"


def missing(policy: Policy, checks: list[Check], window: dict[str, Any]) -> dict[str, str]:
    """What the checks still wait for: ``days``, ``samples`` and ``labels``, each with how much (none: {})."""
    out: dict[str, str] = {}
    by_name = {check.name: check for check in checks}
    duration = by_name.get("min_duration_met")
    if duration is not None and duration.outcome == "FAIL":
        days = _days(duration)
        if days:
            out["days"] = days
    pairs = window.get("sample_count")
    need = by_name.get("min_samples_met")
    if need is not None and need.outcome == "FAIL" and need.threshold is not None and need.value is not None:
        out["samples"] = f"{int(need.threshold - need.value):,} more pairs ({int(need.threshold):,} required)"
    elif isinstance(pairs, int) and pairs < policy.conclusive.min_pairs:
        out["samples"] = (f"{policy.conclusive.min_pairs - pairs:,} more pairs for the metric checks "
                          f"({policy.conclusive.min_pairs:,} required, {pairs:,} seen)")
    labels = window.get("label_count")
    if isinstance(labels, int) and labels < policy.conclusive.min_labels and _needs_labels(checks):
        out["labels"] = (f"{policy.conclusive.min_labels - labels:,} more labels ({policy.conclusive.min_labels:,} "
                         f"required, {labels:,} joined)")
    return out


_LABELLED = ("brier_score", "precision_at_10", "auc_roc", "calibration_slope", "metrics_pass_gate")


def _needs_labels(checks: list[Check]) -> bool:
    return any(c.name.removeprefix("metrics.") in _LABELLED and c.outcome in ("INCONCLUSIVE", "WARN", "FAIL")
               for c in checks)  # fmt: skip


def _check_doc(check: Check) -> dict[str, Any]:
    return {**check.model_dump(mode="json"), "section": section_of(check.name)}


def explanations(model: str, version: str, policy: Policy, clock: datetime) -> list[dict[str, Any]]:
    """One document per comparison that judges ``model@version``, from the live windows (see the module doc)."""
    from governance.contract.connections import redis_client, redis_connection
    from streams.state.redis_store import RedisWindowStore
    from streams.worker.evaluator_states import MemoryEvaluatorStates
    from streams.worker.lifecycle_view import lifecycle_context, production_monitor
    from streams.worker.reading import comparison_keys
    from streams.worker.rounds import Evaluator, default_context

    config = settings()
    client = redis_client(redis_connection(config))
    store = RedisWindowStore(client, config.redis_prefix)
    try:
        context = lifecycle_context(client, config.redis_prefix, default_context(policy), clock=lambda: clock)
        evaluator = Evaluator(store, policy, MemoryEvaluatorStates(), context,
                              monitor=production_monitor(client, config.redis_prefix))  # fmt: skip
        out = []
        for key in comparison_keys(store, model):
            if version not in (key.candidate_version, key.production_version):
                continue
            for ctx, result, snaps in evaluator.judge(key, clock=clock):
                judged = key.production_version if ctx.stage == "PRODUCTION" else key.candidate_version
                if judged != version:
                    continue
                window = snaps.get(policy.windows.production if ctx.stage == "PRODUCTION" else policy.windows.stage)
                figures = dict(window.metrics) if window is not None else {}
                out.append({
                    "comparison": key.as_id(),
                    "stage": ctx.stage,
                    "stage_started_at": ctx.stage_started_at.isoformat() if ctx.stage_started_at else None,
                    "gate": result.gate,
                    "verdict": result.verdict,
                    "event_time": result.evaluated_at.isoformat(),
                    "newest_event": (window.latest_event_ts.isoformat()
                                     if window is not None and window.latest_event_ts else None),
                    "evaluated_at": clock.isoformat(),
                    "checks": [_check_doc(check) for check in result.checks],
                    "missing": missing(policy, result.checks, figures),
                })  # fmt: skip
        return out
    finally:
        store.close()


def _lifecycle(model: str, version: str, policy: Policy, now: datetime) -> tuple[str | None, list[str]]:
    """(stage, every lifecycle rule that would refuse the next move) from the governance state in Redis."""
    from governance.contract.connections import redis_client, redis_connection
    from governance.lifecycle.report import blockers
    from governance.service.statestore import StateStore

    config = settings()
    client = redis_client(redis_connection(config))
    try:
        state = StateStore(client, config.redis_prefix).load()
    finally:
        client.close()
    if state is None:
        return None, [f"no governance state under Redis prefix {config.redis_prefix!r}: is `shadowgate governance` "
                      "running? (documents and approvals unknown)"]
    if model not in state.registry.models or version not in state.registry.models[model].versions:
        raise ConfigError(f"{model}@{version} is not registered; `shadowgate model status` lists the versions")
    return state.registry.get(model, version).stage.value, blockers(state, policy, model, version, now)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@click.command("explain")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--policy", "policy_path", default=None, help="Policy YAML (default: settings, else the shipped one).")
def explain(model_name: str, version: str, as_json: bool, policy_path: str | None) -> None:
    """Why VERSION is blocked right now: its next gate on the live windows, every check, what is missing."""
    from governance.policy.document import load_policy

    policy = load_policy(policy_path or settings().policy_path)
    clock = now_utc().astimezone(UTC)
    stage, rules = _lifecycle(model_name, version, policy, clock)
    gates = explanations(model_name, version, policy, clock)
    doc = {"model": model_name, "version": version, "stage": stage, "evaluated_at": clock.isoformat(),
           "policy_hash": policy.hash(), "gates": gates, "lifecycle_blockers": rules}  # fmt: skip
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    _print(doc)


def _print(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180)
    console.print(f"{doc['model']}@{doc['version']}: {doc['stage'] or 'stage unknown'}; evaluated now "
                  f"({doc['evaluated_at']}), policy {doc['policy_hash'][:12]}")
    if not doc["gates"]:
        console.print("no live window judges this version (no comparison with traffic, or its stage has no gate)")
    for gate in doc["gates"]:
        console.print(f"\ngate {gate['gate']} on {gate['comparison']}: [bold]{gate['verdict']}[/bold] "
                      f"(event time {gate['event_time']}, newest event {gate['newest_event']})")
        table = Table(show_lines=False)
        for column in ("check", "outcome", "value", "fails when", "enforcement", "policy §", "why"):
            table.add_column(column, overflow="fold")
        for c in gate["checks"]:
            threshold = _fmt(c["threshold"]) if c["upper_threshold"] is None else \
                f"[{_fmt(c['threshold'])}, {_fmt(c['upper_threshold'])}]"
            table.add_row(c["name"], c["outcome"], _fmt(c["value"]), f"{c['comparator']} {threshold}",
                          c["enforcement"], c["section"], c["message"])
        console.print(table)
        for what, how in gate["missing"].items():
            console.print(f"still missing: {what}: {how}")
    if doc["lifecycle_blockers"]:
        console.print("\nlifecycle rules still unmet (documents, approvals, ...):")
        for rule in doc["lifecycle_blockers"]:
            console.print(f"  - {rule}")
    elif doc["stage"]:
        console.print("\nno lifecycle rule blocks the next move")
