"""The plumbing of ``shadowgate demo``: a run's names and processes, its evidence files, the audit-log reader,
the in-process CLI runner and the simulated scoring service. The story is in :mod:`shadowgate.commands.demo`.

Guarantees: a run owns every name it creates (topics ``demo.<run>.*``, Redis prefix ``demo-<run>``, consumer
group ``demo-<run>``, directory ``<state>/demo/<run>``), so runs never see each other; every audit entry
:class:`Audit` returns had its ML-DSA-65 signature verified against the run's system trust store; the
scoring service gives every event the wall-clock time of its tick as event time (real time, at most
``TICK_S`` = 100 ms ahead).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson

from governance.errors import InfrastructureError, ShadowgateError
from governance.lifecycle.audit import AuditEntry
from governance.lifecycle.ledger import Transitioned
from shadowgate.traffic import TrafficSpec

__all__ = ["DOCS", "LEGACY", "MODEL", "NEW", "OLD", "POLICY_PATH", "RATE_PER_S", "REPO", "TRICKLE_PER_S", "Audit",
           "DemoError", "Run", "Service", "check_servers", "make_keys", "make_run", "moved", "now_utc", "print_entry",
           "run_cli", "say", "to_shadow", "write_evidence"]

REPO = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO / "deploy" / "demo-policy.yaml"
MODEL, OLD, NEW = "fraud-risk", "1.4.0", "1.5.0"
LEGACY = "rules-v7"  # the pre-governance scorer that 1.4.0 replaces (the production side of its shadow and canary)
RATE_PER_S = 1000.0  # requests per second of the simulated scoring service in a burst
TRICKLE_PER_S = 20.0  # ... and between bursts: traffic never stops, so the worker keeps evaluating
TICK_S = 0.1
FEATURES = {"transaction_amount_usd": "float64", "merchant_category": "category"}
# Production scores ~ Beta(0.3, 3), labels ~ Bernoulli(score): Brier ~0.065, AUC ~0.85, precision@10 % ~0.4;
# the candidate adds N(0, 0.15) noise to logit(score): |delta| stays small and the candidate stays calibrated.
_SPEC = TrafficSpec(model=MODEL, beta_a=0.3, beta_b=3.0, delta_sd=0.15, delta_space="logit", label_delay_s=2.0,
                    rate_per_s=RATE_PER_S,
                    feature_names=("transaction_amount_usd", "merchant_category"),
                    categories=("grocery", "fuel", "travel", "electronics", "other"))
DOCS: dict[str, tuple[str, ...]] = {  # spec 9: every stage's documents and their required sections
    "proposal": ("Objective", "Business Justification", "Technical Approach", "Risk Assessment", "Success Criteria"),
    "feature_analysis": ("Features",), "baseline_metrics": ("Baseline",),
    "training": ("Training Data Description", "Feature List", "Hyperparameters", "Validation Strategy",
                 "Training Metrics"),
    "training_config": ("Config",),
    "shadow": ("Drift Analysis", "Statistical Tests", "Integrity Violations Review", "Recommendation"),
    "canary_results": ("Canary",), "performance_report": ("Performance",),
    "production": ("Deployment Runbook", "Monitoring Dashboard Link", "Rollback Procedure", "On-Call Contacts"),
}


class DemoError(ShadowgateError):
    """A step of the story did not happen (the demo exits 1)."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def say(text: str = "", indent: int = 0) -> None:
    for line in text.splitlines() or [""]:
        click.echo(" " * indent + line)


@dataclass
class Run:
    """One demo run: its id, directory, environment (``SHADOWGATE_*``), and the processes it started."""

    run: str
    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def bootstrap(self) -> str:
        return self.env["SHADOWGATE_KAFKA_BOOTSTRAP"]

    def topic(self, name: str) -> str:
        return self.env[f"SHADOWGATE_TOPICS__{name.upper()}"]

    def start(self, name: str, *args: str) -> None:
        """``shadowgate ARGS`` in its own process group, output to ``<run>/<name>.log``."""
        with (self.root / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(  # noqa: S603 - our own CLI with our own arguments
                [sys.executable, "-m", "shadowgate", *args], cwd=str(REPO), env={**os.environ, **self.env},
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise DemoError(f"{name} exited with code {proc.returncode}: " + " | ".join(tail))

    def wait_log(self, name: str, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in (self.root / f"{name}.log").read_text(errors="replace"):
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"{name} did not print {text!r} within {timeout_s:.0f} s; see {self.root}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is still running after 30 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def make_run(state_dir: Path, kafka_bootstrap: str, redis_url: str) -> Run:
    """A new run id and directory, and the environment that gives the run its own names."""
    from governance.contract.settings import Topics

    run = uuid.uuid4().hex[:8]
    root = (state_dir / "demo" / run).resolve()
    root.mkdir(parents=True)
    env = {"SHADOWGATE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SHADOWGATE_REDIS_URL": redis_url,
           "SHADOWGATE_REDIS_PREFIX": f"demo-{run}", "SHADOWGATE_CONSUMER_GROUP": f"demo-{run}",
           "SHADOWGATE_METRICS_PORT": "0", "SHADOWGATE_KEYS_DIR": str(root / "keys"),
           "SHADOWGATE_POLICY_PATH": str(POLICY_PATH)}
    for name, default in Topics().model_dump().items():
        env[f"SHADOWGATE_TOPICS__{name.upper()}"] = f"demo.{run}.{default}"
    return Run(run, root, env)


def check_servers(kafka_bootstrap: str, redis_url: str) -> None:
    """One-line errors when Kafka or Redis do not answer (checked before anything is created)."""
    import redis
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 0}).list_topics(timeout=5)
    except KafkaException:
        raise InfrastructureError(f"Kafka at {kafka_bootstrap} does not answer; run `make up` first") from None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        where = redis_url.rsplit("@", 1)[-1]  # never print a password
        raise InfrastructureError(f"Redis at {where} does not answer; run `make up` first") from None
    finally:
        client.close()


def make_keys(keys_dir: Path) -> None:
    """The system key (audit log, routing, worker events) and the keys of GID-02 (Maggie) and GID-08 (ALEX)."""
    from governance.crypto.keyring import Keyring
    from governance.lifecycle.identities import identity_dir

    now = now_utc()
    Keyring(keys_dir).generate(now)
    for identity in ("GID-02", "GID-08"):
        Keyring(identity_dir(keys_dir, identity)).generate(now)


def write_evidence(run: Run, version: str) -> dict[str, Path]:
    """Stage documents (spec 9), metadata (spec 4), features and an artifact of ``version``, as files."""
    folder = run.root / "evidence" / version
    folder.mkdir(parents=True)
    files: dict[str, Path] = {}
    for name, sections in DOCS.items():
        body = [f"# {MODEL} {version}: {name.replace('_', ' ')}", ""]
        for section in sections:
            body += [f"## {section}", "", f"{section} of {MODEL} {version}, written for the demo.", ""]
        files[name] = folder / f"{name}.md"
        files[name].write_text("\n".join(body))
    sha = hashlib.sha256
    metadata = {
        "model_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"shadowgate-demo/{MODEL}/{version}")), "model_type": "EBM",
        "version": version, "training_date": (now_utc() - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "training_data_hash": sha(f"{MODEL}-{version}-training-set".encode()).hexdigest(),
        "monotonicity_constraints": {"transaction_amount_usd": "increasing"},
        "calibration_metrics": {"brier": 0.064, "slope": 0.98, "intercept": -0.01},
        "explainability_method": "ebm_native", "proof_pack_id": f"PP-{MODEL}-{version}",
        "lineage": {"parent_model": None if version == OLD else f"{MODEL}@{OLD}",
                    "training_script": "train/fraud_ebm.py", "config_hash": sha(version.encode()).hexdigest()},
    }
    files["metadata"] = folder / "metadata.json"
    files["metadata"].write_bytes(orjson.dumps(metadata, option=orjson.OPT_INDENT_2))
    files["features"] = folder / "features.json"
    files["features"].write_bytes(orjson.dumps(FEATURES))
    files["artifact"] = folder / "model.ebm"
    files["artifact"].write_bytes(f"EBM model {MODEL} {version}\n".encode())
    return files


def print_entry(entry: AuditEntry) -> None:
    from shadowgate.commands.governance import describe_entry

    say("\n".join(describe_entry(entry)), 4)
    if entry.gate is not None and entry.gate.failures:
        say("\n".join(f"  - {failure}" for failure in entry.gate.failures[:4]), 6)


def moved(version: str, stage: str) -> Callable[[AuditEntry], bool]:
    """Matches the entry that moved ``version`` to ``stage``."""
    return lambda entry: any(isinstance(f, Transitioned) and f.version == version and f.to_stage == stage
                             for f in entry.facts)


class Audit:
    """Reads the run's audit log from its start; prints the entries events caused (gates, rollbacks)."""

    def __init__(self, run: Run) -> None:
        from confluent_kafka import TopicPartition

        from governance.contract.kafkaio import make_consumer
        from governance.lifecycle.identities import load_trust

        self.run = run
        self.trust = load_trust(run.keys)
        self.consumer = make_consumer(run.bootstrap, "demo-audit")
        self.consumer.assign([TopicPartition(run.topic("lifecycle"), 0, 0)])
        self.entries: list[AuditEntry] = []
        self._unread: list[AuditEntry] = []
        self.check: Callable[[], None] = run.check_alive  # raises DemoError when something it waits on died

    def poll(self, timeout_s: float = 0.2) -> list[AuditEntry]:
        from governance.contract.kafkaio import poll_records
        from governance.crypto.record import verify_record
        from governance.crypto.signing import Context
        from governance.lifecycle.audit import parse_entry

        new = []
        for record in poll_records(self.consumer, timeout_s):
            now = now_utc()
            payload = verify_record(orjson.loads(record.value), Context.AUDIT_ENTRY, self.trust.system, now,
                                    self.trust.phase(now))
            new.append(parse_entry(payload))
        self.entries += new
        self._unread += new
        return new

    def wait(self, what: str, done: Callable[[AuditEntry], bool], timeout_s: float,
             show: Callable[[AuditEntry], bool] = lambda entry: True,
             on_tick: Callable[[], None] | None = None) -> AuditEntry:
        """The first unread entry that satisfies ``done``; prints the event-caused entries ``show`` selects.
        ``on_tick`` is called between polls (the terminal view's progress line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            self.poll()
            if on_tick is not None:
                on_tick()
            while self._unread:
                entry = self._unread.pop(0)
                if entry.input.kind != "command" and (show(entry) or done(entry)):
                    print_entry(entry)
                if done(entry):
                    return entry
        raise DemoError(f"{what}: not within {timeout_s:.0f} s (logs in {self.run.root})")

    def close(self) -> None:
        self.consumer.close()


def run_cli(*args: str, expect: tuple[int, ...] = (0,), echo: bool = True) -> str:
    """Run ``shadowgate ARGS`` in this process (the same code as typed); print the command and its output."""
    from shadowgate.cli import cli

    shown = " ".join(shlex.quote(_relative(arg)) for arg in args)
    click.secho(f"    $ shadowgate {shown}", fg="cyan")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            cli.main(args=list(args), prog_name="shadowgate", standalone_mode=False)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except (ShadowgateError, click.ClickException) as exc:
            err.write(f"shadowgate: error: {exc}\n")
            code = 2
    if echo and out.getvalue().strip():
        say(out.getvalue().rstrip(), 6)
    if code not in expect:
        last = (err.getvalue().strip().splitlines() or ["no message"])[-1]
        raise DemoError(f"`shadowgate {shown}` exited {code}: {last}")
    return out.getvalue()


def _relative(arg: str) -> str:
    """``/abs/path`` and ``name=/abs/path`` shown relative to the working directory, as a person would type."""
    name, sep, value = arg.rpartition("=")
    return name + sep + os.path.relpath(value) if value.startswith("/") else arg


def to_shadow(version: str, files: dict[str, Path], refused_first: bool) -> None:
    """Sign ``version``'s artifact (spec 6.3, the build pipeline's system key), register it with its evidence and
    take it PROPOSAL -> ... -> SHADOW with GID-02's commands, training approved (spec 1.2) before SHADOW."""
    ml = ("--identity", "GID-02")
    run_cli("sign", str(files["artifact"]))
    run_cli("model", "register", MODEL, version, "--type", "risk_scoring", "--metadata", str(files["metadata"]),
            "--features", str(files["features"]), "--artifact", str(files["artifact"]), *ml)
    if refused_first:
        run_cli("model", "advance", MODEL, version, *ml, expect=(1,))
    docs = [arg for name in DOCS for arg in ("--doc", f"{name}={files[name]}")]
    run_cli("model", "propose", MODEL, version, *docs, *ml)
    run_cli("model", "approve", MODEL, version, "--target", "PROTOTYPE", *ml)
    for stage in ("PROTOTYPE", "TRAINING", "SHADOW"):
        if stage == "SHADOW":
            run_cli("model", "approve", MODEL, version, "--target", "SHADOW", "--comment", "training approved", *ml)
        run_cli("model", "advance", MODEL, version, *ml)


class Service:
    """The scoring service, in a thread: serves requests in real time as the signed routing says, via the SDK.

    Every ``TICK_S`` it serves ``rate_per_s * TICK_S`` requests: the production version of the routing
    (``LEGACY`` before the first one) scores each; the routing's canary answers the requests routed to it
    (scored by production too, so they pair), else its first shadow version, else ``standby`` (a version kept
    warm outside the routing), scores each in shadow. Labels (``Bernoulli(production score)``) follow 2 s
    later. Event times are wall-clock times of the tick (at most ``TICK_S`` ahead). ``counts`` are totals.
    """

    def __init__(self, run: Run, routing: Any) -> None:
        self.run = run
        self.routing = routing  # shadowgate.routing.RoutingClient following the run's routing topic
        self.rate_per_s = TRICKLE_PER_S
        self.standby: str | None = None
        self.prod_latency_ms = _SPEC.prod_latency_ms
        # Latency of one version when it serves: the breach belongs to the version, not to the production role,
        # so the restored version answers at its own speed from its first request on.
        self.slow: dict[str, float] = {}
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="demo-scoring-service", daemon=True)
        self._seed = 1000

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def check(self) -> None:
        self.run.check_alive()
        if self._error is not None:
            raise DemoError(f"the scoring service failed: {self._error!r}")

    def assignment(self) -> Any:
        return self.routing.assignment(MODEL)

    def burst(self, requests: int, on_tick: Callable[[int], None] | None = None) -> dict[str, int]:
        """Serve ``requests`` more requests at ``RATE_PER_S``, then trickle again; returns what was sent.
        ``on_tick`` gets the requests served so far (the terminal view's progress bar)."""
        before = Counter(self.counts)
        self.rate_per_s = RATE_PER_S
        while self.counts["requests"] - before["requests"] < requests:
            self.check()
            if on_tick is not None:
                on_tick(self.counts["requests"] - before["requests"])
            time.sleep(0.05)
        self.rate_per_s = TRICKLE_PER_S
        time.sleep(_SPEC.label_delay_s + 2 * TICK_S)  # the labels of the last requests
        return {key: self.counts[key] - before[key] for key in ("requests", "pairs", "labels")}

    def wait_routing(self, what: str, ok: Callable[[Any], bool], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            current = self.assignment()
            if current is not None and ok(current):
                canary = f"{current.canary.version} on {current.canary.share:.0%}" if current.canary else "none"
                say(f"routing (signed, verified by RoutingClient): production={current.production}, "
                    f"canary={canary}, shadow={current.shadow}", 4)
                return current
            self.check()
            time.sleep(0.05)
        raise DemoError(f"routing: {what} not seen on {self.run.topic('routing')} within {timeout_s:.0f} s")

    def _loop(self) -> None:
        from shadowgate.sdk import LabelPublisher, ScorePublisher

        try:
            with ScorePublisher(self.run.bootstrap, self.run.topic("scores"), batch_size=200) as scores, \
                    LabelPublisher(self.run.bootstrap, self.run.topic("labels")) as labels:
                pending: list[tuple[float, int, dict[str, Any]]] = []
                carry, tick = 0.0, time.monotonic()
                while not self._stop.is_set():
                    carry += self.rate_per_s * TICK_S
                    if int(carry):
                        self._serve(int(carry), scores, pending)
                        carry -= int(carry)
                    while pending and pending[0][0] <= time.monotonic():
                        labels.publish(heapq.heappop(pending)[2])
                        self.counts["labels"] += 1
                    scores.flush(0.0)
                    tick += TICK_S
                    time.sleep(max(0.0, tick - time.monotonic()))
        except BaseException as exc:  # reported to the main thread by check()
            self._error = exc

    def _serve(self, requests: int, scores: Any, pending: list[tuple[float, int, dict[str, Any]]]) -> None:
        from shadowgate.traffic import generate

        current = self.assignment()
        production = current.production if current is not None and current.production else LEGACY
        role, candidate = "shadow", self.standby
        if current is not None and current.canary is not None:
            role, candidate = "canary", current.canary.version
        elif current is not None and current.shadow:
            candidate = current.shadow[0]
        self._seed += 1
        start, began = now_utc(), time.monotonic()
        spec = replace(_SPEC, pairs=requests, start=start, rate_per_s=requests / TICK_S, role=role,
                       production_version=production, candidate_version=candidate or production, seed=self._seed,
                       prod_latency_ms=self.slow.get(production, self.prod_latency_ms))
        for event in generate(spec):
            if event.pop("kind") == "label":
                self.counts["queued_labels"] += 1  # also the heap's tie-breaker: dicts do not compare
                due = began + (event["ts"] - start).total_seconds()
                heapq.heappush(pending, (due, self.counts["queued_labels"], event))
            elif event["role"] == "production":
                scores.publish(event)
                self.counts["requests"] += 1
            elif candidate is not None and (role == "shadow" or self.routing.route(MODEL, event["request_id"])[1]
                                             == "canary"):
                scores.publish(event)
                self.counts["pairs"] += 1
