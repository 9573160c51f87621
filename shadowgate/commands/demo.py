"""``shadowgate demo``: the product's main job, end to end, on the running Kafka and Redis, in a few minutes.

Every run is fresh: a run id names its topics (``demo.<run>.<topic>``), Redis prefix and consumer group
(``demo-<run>``) and keyring (``<state>/demo/<run>/keys``: the system key and the GID-02 and GID-08
identities), where ``<state>`` is ``SHADOWGATE_STATE_DIR`` (default ``.local``). Decisions use
``deploy/demo-policy.yaml``, the shipped policy with minimum durations and sample sizes scaled down (never
the default). The demo starts one governance consumer and two streams workers as subprocesses (logs in the
run directory), plays the people (CLI commands, run in this process and printed as typed) and the scoring
service (the SDK, routing every request by the signed routing topic), and tells the story in 8 steps:

1. start; 2. ``fraud-risk`` 1.4.0 registered and taken to SHADOW with documents, metadata and approvals;
3. 1.4.0 earns PRODUCTION through the worker's shadow and staging gates and GID-08's approval;
4. 1.5.0 registered (a refused advance first) and taken to SHADOW; 5. real-time shadow traffic, live
windows, the worker's signed GateReady, the consumer moves 1.5.0 to STAGING (canary 5 %); 6. canary traffic,
staging gate READY, GID-08 approves, 1.5.0 in PRODUCTION with its ProofPack; 7. a latency breach of the
serving 1.5.0 makes the worker emit a RollbackTrigger and the consumer restore 1.4.0 (time measured);
8. ``model status``, ``model history``, ``audit verify``.

At the end, and on Ctrl-C or SIGTERM, it stops what it started, writes ``audit.jsonl`` (the signed audit log)
and ``summary.json`` into the run directory and deletes the run's topics and Redis keys. ``--keep`` leaves
everything running; ``shadowgate demo --stop RUN`` cleans up later. Exit 0 when the story completed, 1 when
a step did not happen within ``--timeout`` (the message names the step), 2 on a setup error (e.g. no Kafka).
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Any

import click
import orjson

from governance.errors import ConfigError, ShadowgateError
from governance.lifecycle.audit import AuditEntry
from governance.policy.document import Policy, load_policy
from shadowgate.commands.demo_kit import (
    LEGACY,
    MODEL,
    NEW,
    OLD,
    POLICY_PATH,
    RATE_PER_S,
    REPO,
    TRICKLE_PER_S,
    Audit,
    DemoError,
    Run,
    Service,
    check_servers,
    make_keys,
    make_run,
    moved,
    run_cli,
    say,
    to_shadow,
    write_evidence,
)
from shadowgate.commands.demo_view import View

__all__ = ["demo"]

_BANNER = ("DEMO POLICY (deploy/demo-policy.yaml): minimum stage durations 0 days and sample minimums 1/25 of "
           "spec 3.1, so the lifecycle runs in minutes. Never the default; never for a real model.")


# The minute in progress and the join window (SHADOWGATE_JOIN_WINDOW_S, 60 s) before a minute of event time is judged.
_MINUTE_CLOSE_S = 120.0


def _step(number: int, title: str, proves: str) -> None:
    click.echo()
    click.secho(f"[{number}/8] {title}", bold=True)
    click.secho(f"      proves: {proves}", fg="green")


def _staging_ready(version: str) -> Callable[[AuditEntry], bool]:
    return lambda e: e.gate is not None and e.gate.version == version and e.gate.stage == "STAGING" and e.gate.passed


def _rolled_back(version: str) -> Callable[[AuditEntry], bool]:
    return lambda e: e.rollback is not None and e.rollback.from_version == version and e.rollback.action == "immediate"


def _gates_of(version: str, stage: str) -> Callable[[AuditEntry], bool]:
    return lambda e: e.gate is not None and e.gate.version == version and e.gate.stage == stage


def _windows(policy: Policy, pairs: int, timeout_s: float) -> None:
    """The shadow comparison's live 5-minute window (``shadowgate windows``) beside the demo policy's limits."""
    args = ("windows", "--model", MODEL, "--window", "5m", "--json")
    deadline, w = time.monotonic() + timeout_s, None
    while w is None or (w["label_count"] < pairs and time.monotonic() < deadline):
        doc = orjson.loads(run_cli(*args, echo=False) if w is None else _quiet(*args))
        comp = [c for c in doc["comparisons"] if (c["candidate_version"], c["role"]) == (NEW, "shadow")]
        w = comp[0]["windows"]["5m"] if comp else {"label_count": 0}
        time.sleep(0.5)
    s = policy.shadow
    rows = [("sample_count", ">=", s.model_types["risk_scoring"].min_samples),
            ("label_count", ">=", policy.conclusive.min_labels), ("brier_score", "<", s.brier_score.threshold),
            ("auc_roc", ">", s.auc_roc.threshold), ("precision_at_10", ">", s.precision_at_10.threshold),
            ("mean_abs_delta", "<", s.mean_abs_delta.threshold), ("p99_abs_delta", "<", s.p99_abs_delta.threshold),
            ("p99_latency_ms", "<", s.p99_latency_ms.threshold),
            ("kl_divergence", "<", policy.staging.kl_divergence.threshold)]
    say(f"{'5m window, ' + OLD + ' vs ' + NEW:<30} {'live':>10}   gate", 6)
    for name, op, limit in rows:
        value = w.get(name)
        shown = "-" if value is None else f"{value:,}" if isinstance(value, int) else f"{value:.4f}"
        say(f"{name:<30} {shown:>10}   {op} {limit}", 6)


def _quiet(*args: str) -> str:
    from contextlib import redirect_stdout
    from io import StringIO

    from shadowgate.cli import cli

    out = StringIO()
    with redirect_stdout(out):
        cli.main(args=list(args), prog_name="shadowgate", standalone_mode=False)
    return out.getvalue()


def _status_url(run: Run) -> str:
    for line in (run.root / "status.log").read_text(errors="replace").splitlines():
        if line.startswith("status page: "):
            return line.removeprefix("status page: ").split()[0].rstrip("/")
    raise DemoError(f"the status page did not say where it listens (see {run.root / 'status.log'})")


def _live_window(candidate: str, role: str) -> dict[str, Any] | None:
    """The live 5m window of the fraud model's comparison with ``candidate`` in ``role`` (None before it exists)."""
    doc = orjson.loads(_quiet("windows", "--model", MODEL, "--window", "5m", "--json"))
    found = [c for c in doc["comparisons"] if (c["candidate_version"], c["role"]) == (candidate, role)]
    return found[0]["windows"]["5m"] if found else None


def _story(run: Run, policy: Policy, pairs: int, timeout_s: float, summary: dict[str, Any],
           serve_port: int | None) -> None:
    from governance.contract.settings import load_settings
    from governance.contract.topics import ensure_topics, topic_specs
    from governance.lifecycle.identities import load_trust
    from shadowgate.routing_client import RoutingClient

    began = time.monotonic()
    _step(1, f"Start run {run.run}: keys, topics, 1 governance consumer, 2 streams workers",
          "a fresh, isolated run: its own topics, Redis prefix, consumer group and ML-DSA-65 keys")
    click.secho(f"      {_BANNER}", fg="yellow", bold=True)
    make_keys(run.keys)
    ensure_topics(run.bootstrap, topic_specs(load_settings(), partitions=4))
    run.start("governance", "governance", "--policy", str(POLICY_PATH), "--lease-ttl", "5")
    run.start("worker-1", "worker", "--loglevel", "warning")
    run.start("worker-2", "worker", "--loglevel", "warning")
    say(f"keys {os.path.relpath(run.keys)}: system key + GID-02 (Maggie, ML) + GID-08 (ALEX, governance)", 4)
    say(f"topics demo.{run.run}.*, Redis prefix demo-{run.run}, logs {os.path.relpath(run.root)}/*.log", 4)
    say(f"policy {policy.policy_id} {policy.version}, hash {policy.hash()[:16]}...", 4)
    run.wait_log("governance", "governance consumer: audit log", timeout_s)
    if serve_port is not None:
        run.start("status", "serve", "--port", str(serve_port), "--policy", str(POLICY_PATH))
        run.wait_log("status", "status page: ", timeout_s)
        summary["status_url"] = _status_url(run)
        click.secho(f"    status page (live while the demo runs): {summary['status_url']}/", fg="cyan", bold=True)
    routing = RoutingClient(run.bootstrap, run.topic("routing"), load_trust(run.keys).system)
    routing.refresh()
    routing.start()
    audit, service = Audit(run), Service(run, routing)
    audit.check = service.check
    try:
        _lifecycle(run, policy, pairs, timeout_s, _Steps(audit, service, View(_live_window)), summary)
    finally:
        service.stop()
        routing.close()
        audit.close()
    summary["seconds"] = round(time.monotonic() - began, 1)


class _Steps:
    """The audit reader, the scoring service and the terminal view, used together at every step."""

    def __init__(self, audit: Audit, service: Service, view: View) -> None:
        self.audit, self.service, self.view = audit, service, view

    def wait(self, what: str, done: Callable[[AuditEntry], bool], timeout_s: float,
             show: Callable[[AuditEntry], bool], candidate: str, role: str) -> AuditEntry:
        with self.view.waiting(what, candidate, role) as tick:
            return self.audit.wait(what, done, timeout_s, show, on_tick=tick)


def _lifecycle(run: Run, policy: Policy, pairs: int, timeout_s: float, steps: _Steps,
               summary: dict[str, Any]) -> None:
    audit, service = steps.audit, steps.service
    alex = ("--identity", "GID-08")
    _step(2, f"{MODEL} {OLD}: register with metadata, features, artifact; documents; GID-02 approval; to SHADOW",
          "every move is a command signed by a named identity and judged by the lifecycle gates (spec 7.1)")
    to_shadow(OLD, write_evidence(run, OLD), refused_first=False)
    service.wait_routing(f"{OLD} in shadow", lambda a: OLD in a.shadow, 30)

    _step(3, f"{OLD} earns PRODUCTION: shadow beside the pre-governance scorer {LEGACY}, canary, GID-08",
          "no version skips the gates, not even the first: only the worker's signed verdicts open them")
    service.start()
    _burst(steps, pairs, OLD, "shadow")
    steps.wait(f"{OLD} SHADOW -> STAGING", moved(OLD, "STAGING"), timeout_s, _gates_of(OLD, "SHADOW"), OLD, "shadow")
    _canary(steps, policy, OLD, timeout_s)
    run_cli("model", "approve", MODEL, OLD, "--target", "PRODUCTION", *alex)
    service.wait_routing(f"{OLD} serving", lambda a: a.production == OLD, 30)

    _step(4, f"{MODEL} {NEW}: register, a refused advance, then evidence and approval; to SHADOW",
          "a refusal names every broken rule with its spec section; nothing moves without evidence")
    to_shadow(NEW, write_evidence(run, NEW), refused_first=True)
    service.wait_routing(f"{NEW} in shadow", lambda a: NEW in a.shadow, 30)

    _step(5, f"Real-time shadow traffic {OLD} vs {NEW} (SDK); live windows; the worker's GateReady -> STAGING",
          "the shadow completion checklist (spec 3.2) is computed live from the stream and signed by the worker")
    _burst(steps, pairs, NEW, "shadow")
    _windows(policy, pairs, timeout_s)
    steps.wait(f"{NEW} SHADOW -> STAGING", moved(NEW, "STAGING"), timeout_s, _gates_of(NEW, "SHADOW"), NEW, "shadow")

    _step(6, f"Canary traffic; staging gate READY; GID-08 approves; {NEW} to PRODUCTION with its ProofPack",
          "promotion to PRODUCTION needs both the staging gate (spec 2.1) and the governance approver (7.1)")
    _canary(steps, policy, NEW, timeout_s)
    run_cli("model", "approve", MODEL, NEW, "--target", "PRODUCTION", *alex)
    service.wait_routing(f"{NEW} serving", lambda a: a.production == NEW, 30)

    _step(7, f"Latency breach of the serving {NEW}: P99 > 1000 ms -> RollbackTrigger -> rollback to {OLD}",
          "spec 8.1/8.2: the worker detects the breach, the consumer restores the previous version by itself")
    say(f"{NEW} serves every request; {OLD}, the rollback target, keeps scoring each one in shadow (warm standby)", 4)
    service.standby = OLD
    _burst(steps, int(RATE_PER_S), OLD, "shadow")  # one second of healthy traffic first
    say(f"now {NEW} slows down to ~1.5 s per request, at {RATE_PER_S:,.0f} requests/s", 4)
    t0 = time.monotonic()
    service.slow[NEW], service.rate_per_s = 1500.0, RATE_PER_S
    # The trigger judges whole minutes of event time, each once the stream is a join window past it
    # (docs/gates.md, "Event time"): the breach is seen at the close of the minute it starts in, up to two
    # minutes after the first slow request; the step's own timeout comes on top.
    wait_s = timeout_s + _MINUTE_CLOSE_S
    try:
        service.wait_routing(f"{OLD} serving again", lambda a: a.production == OLD, wait_s)
    except DemoError:
        raise DemoError(f"rollback of {NEW}: no RollbackTrigger acted on within {wait_s:.0f} s of the breach "
                        f"(worker logs in {run.root})") from None
    rollback_s = time.monotonic() - t0
    service.rate_per_s, service.standby = TRICKLE_PER_S, None
    entry = audit.wait(f"rollback of {NEW}", _rolled_back(NEW), 30, lambda e: e.rollback is not None)
    summary["rollback_s"] = round(rollback_s, 2)
    summary["rollback"] = entry.rollback.model_dump(mode="json") if entry.rollback else None
    click.secho(f"    rolled back in {rollback_s:.1f} s, from the first slow request to the routing serving {OLD}",
                bold=True)
    service.stop()

    _step(8, "Status, history, and the audit log verified end to end",
          "every decision above is in one signed, hash-chained log that anyone can verify")
    run_cli("model", "status", MODEL)
    run_cli("model", "history", MODEL)
    summary["audit_verify"] = run_cli("audit", "verify").strip()
    summary["status"] = orjson.loads(_quiet("model", "status", MODEL, "--json"))



def _burst(steps: _Steps, requests: int, candidate: str, role: str) -> None:
    with steps.view.publishing(requests, f"{requests:,} requests, {role} {candidate}") as tick:
        sent = steps.service.burst(requests, on_tick=tick)
    say(f"published {sent['requests']:,} requests, {sent['pairs']:,} {role} scores of {candidate}, "
        f"{sent['labels']:,} labels (SDK, real time, {RATE_PER_S:,.0f} requests/s)", 4)


def _canary(steps: _Steps, policy: Policy, version: str, timeout_s: float) -> None:
    current = steps.service.wait_routing(f"{version} as canary",
                                         lambda a: a.canary is not None and a.canary.version == version, 30)
    requests = math.ceil(2 * policy.conclusive.min_pairs / current.canary.share)
    _burst(steps, requests, version, "canary")
    steps.wait(f"staging gate of {version}", _staging_ready(version), timeout_s, _gates_of(version, "STAGING"),
               version, "canary")


def _cleanup(run: Run, summary: dict[str, Any]) -> None:
    """Stop the processes, keep the audit log and summary, delete the run's topics and Redis keys."""
    import redis
    from confluent_kafka.admin import AdminClient

    from governance.service.consumer import read_log

    run.stop()
    with suppress(ShadowgateError):
        records = read_log(run.bootstrap, run.topic("lifecycle"), timeout_s=30)
        (run.root / "audit.jsonl").write_bytes(b"".join(record.value + b"\n" for record in records))
    (run.root / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    admin = AdminClient({"bootstrap.servers": run.bootstrap, "log_level": 0})
    ours = [t for t in admin.list_topics(timeout=10).topics if t.startswith((f"demo.{run.run}.", f"demo-{run.run}"))]
    for future in (admin.delete_topics(ours).values() if ours else []):
        with suppress(Exception):  # best effort: a topic already gone is fine
            future.result(timeout=30)
    client = redis.Redis.from_url(run.env["SHADOWGATE_REDIS_URL"])
    keys = list(client.scan_iter(match=f"demo-{run.run}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    shutil.rmtree(Path(tempfile.gettempdir()) / f"shadowgate-faust-demo-{run.run}", ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@click.command()
@click.option("--pairs", default=1500, show_default=True, type=click.IntRange(1),
              help="Shadow pairs per shadow phase (at least the demo policy's risk_scoring min_samples).")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True, type=click.FloatRange(5.0),
              help="Seconds to wait for each automatic step (gate verdicts, promotions, the rollback).")
@click.option("--keep", is_flag=True, help="Leave the processes, topics and Redis keys for exploring.")
@click.option("--stop", "stop_run", default=None, metavar="RUN", help="Stop and clean up a run kept with --keep.")
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Run the status page during the story and leave it (and the run) up at the end until Ctrl-C. "
                   "--no-serve: no page, exit when the story ends (scripts, CI).")
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True,
              help="Port of the status page (0: a free one).")
def demo(pairs: int, timeout_s: float, keep: bool, stop_run: str | None, serve: bool, port: int) -> None:
    """Run the whole lifecycle of a fraud model end to end on the running Kafka and Redis (`make up`)."""
    from governance.contract.settings import load_settings

    policy = load_policy(POLICY_PATH)
    need = policy.shadow.model_types["risk_scoring"].min_samples
    if pairs < need:
        raise click.BadParameter(f"{pairs} is below the demo policy's risk_scoring min_samples {need}: the "
                                 "shadow gate could never pass", param_hint="--pairs")
    settings = load_settings()
    state_dir = Path(os.environ.get("SHADOWGATE_STATE_DIR", REPO / ".local"))
    check_servers(settings.kafka_bootstrap, settings.redis_url_value())
    if stop_run is not None:
        _stop_kept(state_dir, stop_run)
        return
    run = make_run(state_dir, settings.kafka_bootstrap, settings.redis_url_value())
    os.environ.update(run.env)  # the in-process CLI commands read the run's settings from the environment
    summary: dict[str, Any] = {"run": run.run, "policy": str(POLICY_PATH), "policy_hash": policy.hash(),
                               "pairs": pairs, "ok": False}
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        _story(run, policy, pairs, timeout_s, summary, port if serve else None)
        summary["ok"] = True
        if serve and not keep:
            _linger(run, summary)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("\ninterrupted: stopping what the demo started", err=True)
        code = 0 if summary["ok"] else 130
    except DemoError as exc:
        click.secho(f"\nshadowgate demo: FAILED: {exc}", fg="red", err=True)
        code = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not interrupt the clean-up
            signal.signal(signum, signal.SIG_IGN)
        _finish(run, keep and code != 130, summary)
    if code:
        raise SystemExit(code)
    if serve and not keep:
        click.secho(f"status page stopped; run {run.run} cleaned up", bold=True)
        return
    click.secho(f"\ndemo complete in {summary['seconds']:.0f} s: {MODEL} {OLD} serving again after the rollback; "
                f"audit log verified. Evidence in {os.path.relpath(run.root)}", bold=True)
    click.secho(_BANNER, fg="yellow")


def _linger(run: Run, summary: dict[str, Any]) -> None:
    """The story is done: print where to look, and keep everything up until Ctrl-C (or SIGTERM)."""
    url = summary["status_url"]
    click.secho(f"\ndemo complete in {summary['seconds']:.0f} s: {MODEL} {OLD} serving again after the rollback; "
                f"audit log verified. Evidence in {os.path.relpath(run.root)}", bold=True)
    click.secho(_BANNER, fg="yellow")
    click.echo(f"  lifecycle board, live windows, alerts, audit log:  {url}/")
    click.echo(f"  evidence report of the promoted {NEW}:             {url}/report/{MODEL}/{NEW}")
    click.echo(f"  verdict API (Argo Rollouts / Flagger):             {url}/api/verdict/{MODEL}/{OLD}")
    click.secho(f"status page: {url}/  (left running; press Ctrl-C to stop it and clean up)", bold=True)
    while True:  # until KeyboardInterrupt (Ctrl-C, or SIGTERM through _interrupt)
        run.check_alive()
        time.sleep(1.0)


def _finish(run: Run, keep: bool, summary: dict[str, Any]) -> None:
    if not keep:
        _cleanup(run, summary)
        return
    (run.root / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    (run.root / "pids.json").write_bytes(orjson.dumps({name: p.pid for name, p in run.procs.items()}))
    env = run.root / "env.sh"
    env.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in run.env.items()))
    click.echo(f"\n--keep: still running (process groups {', '.join(str(p.pid) for p in run.procs.values())}), "
               f"topics demo.{run.run}.*, Redis prefix demo-{run.run}")
    click.echo(f"  explore: source {os.path.relpath(env)} && shadowgate model status")
    click.echo(f"  stop:    shadowgate demo --stop {run.run}   (or kill -TERM -- "
               + " ".join(f"-{p.pid}" for p in run.procs.values()) + ")")


def _stop_kept(state_dir: Path, run_id: str) -> None:
    """Stop the processes of a run kept with --keep (checked to be ours) and clean up its topics and keys."""
    root = state_dir / "demo" / run_id
    if not (root / "env.sh").exists():
        raise ConfigError(f"no kept demo run {run_id} under {state_dir / 'demo'}")
    pairs = [shlex.split(line)[1].split("=", 1) for line in (root / "env.sh").read_text().splitlines()]
    env = {key: value for key, value in pairs}
    run = Run(run_id, root.resolve(), env)
    for name, pid in orjson.loads((root / "pids.json").read_bytes()).items():
        with suppress(OSError):  # gone already, or a reused pid that is not ours: leave it alone
            if b"shadowgate" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.killpg(pid, signal.SIGTERM)
                deadline = time.monotonic() + 30
                while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                say(f"stopped {name} (process group {pid})")
    summary = orjson.loads((root / "summary.json").read_bytes())
    _cleanup(run, summary)
    (root / "env.sh").unlink()
    say(f"run {run_id}: topics and Redis keys deleted; audit log and summary in {os.path.relpath(root)}")
