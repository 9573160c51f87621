"""The governance consumer process: /healthz and /readyz on its metrics port, JSON-line logs, and a clean stop on
SIGTERM mid-work (within SHADOWGATE_SHUTDOWN_TIMEOUT_S, its lease released, nothing lost or doubled)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from governance.lifecycle.audit import AuditEntry, parse_entry
from governance.lifecycle.commands import Escalate, new_command, sign_command
from governance.lifecycle.identities import identity_signer
from governance.service.auditlog import read_log
from governance.service.consumer import GovernanceConsumer
from governance.service.health import ConsumerHealth
from tests.fault_servers import free_port
from tests.governance_kit import Env, catalog, fast_policy, lifecycle_facts, make_env, make_keys, now_utc, seed_log
from tests.worker_kit import probe

REPO = Path(__file__).resolve().parent.parent
ESCALATIONS, JUNK = 240, 60


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        tmp_path: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, make_keys(tmp_path))


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The consumers a test starts: any still running at the end (a failed assertion) is killed, not leaked."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _entries(env: Env) -> list[AuditEntry]:
    return [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]


def _inputs(env: Env) -> list[bytes]:
    """ESCALATIONS signed escalations, one junk message after every fourth."""
    now = now_utc()
    signer = identity_signer(env.keys_dir, "GID-08", now)
    values = []
    for i in range(ESCALATIONS):
        command = new_command(Escalate, identity="GID-08", now=now, model="fraud", version="1.0.0",
                              escalation_id=f"ESC-{i}", reason="label delay")
        values.append(orjson.dumps(sign_command(command, signer, now)))
        if i % 4 == 3:
            values.append(b"\x00not json")
    assert len(values) == ESCALATIONS + JUNK
    return values


def _start(env: Env, port: int, log: Path) -> subprocess.Popen[bytes]:
    process_env = {**{k: v for k, v in os.environ.items() if not k.startswith("SHADOWGATE_")}, **env.cli_env(),
                   "SHADOWGATE_METRICS_PORT": str(port), "SHADOWGATE_REJECTION_SUMMARY_S": "0.5",
                   "SHADOWGATE_LOG_FORMAT": "json", "PYTHONPATH": str(REPO)}
    with log.open("ab") as out:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "shadowgate", "governance", "--lease-ttl", "5"], env=process_env, cwd=REPO,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _until(predicate: Callable[[], object], timeout_s: float, what: str, proc: subprocess.Popen[bytes],
           log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s (exit {proc.poll()})\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


def _sigterm(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    began = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return code, time.monotonic() - began


def test_sigterm_mid_work_stops_in_time_and_loses_or_doubles_nothing(env: Env, tmp_path: Path,
                                                                     started: list[subprocess.Popen[bytes]]) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    seeded = len(_entries(env))
    producer = Producer({"bootstrap.servers": env.bootstrap, "acks": "all", "linger.ms": 20})
    for value in _inputs(env):
        producer.produce(env.topics["commands"], value, b"fraud")
    assert producer.flush(60) == 0
    port, log = free_port(), tmp_path / "governance.log"

    proc = _start(env, port, log)
    started.append(proc)
    _until(lambda: probe(port)[0] == 200, 120, "ready", proc, log)
    status, ready = probe(port)
    assert ready["failing"] == [] and ready["ok"] is True
    live_status, live = probe(port, "/healthz")
    assert live_status == 200 and live["standby"] is False and live["since_loop_s"] < 5
    # A second instance waits for the lease: live, not ready.
    standby_port, standby_log = free_port(), tmp_path / "standby.log"
    standby = _start(env, standby_port, standby_log)
    started.append(standby)
    _until(lambda: probe(standby_port, "/healthz")[0] == 200, 120, "standby live", standby, standby_log)
    standby_status, standby_ready = probe(standby_port)
    assert standby_status == 503 and {"lease", "started"} <= set(standby_ready["failing"])
    assert probe(standby_port, "/healthz")[1]["standby"] is True
    _until(lambda: len(_entries(env)) >= seeded + 20, 120, "mid-work", proc, log)
    code, took = _sigterm(proc)
    at_stop = _entries(env)
    assert code == 0, log.read_text()[-3000:]
    print(f"stopped {took:.2f} s after SIGTERM, {len(at_stop) - seeded} entries written by then")
    assert took < 10.0, f"stopped {took:.1f} s after SIGTERM, more than SHADOWGATE_SHUTDOWN_TIMEOUT_S"
    escalations = [e for e in at_stop if e.facts and e.facts[0].kind == "escalation_raised"]
    assert 0 < len(escalations) < ESCALATIONS, "SIGTERM came mid-work"
    lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["logger"] == "shadowgate.governance" and "SIGTERM" in line["msg"] for line in lines)
    assert any(line["msg"] == "stopped: lease released" for line in lines)

    # The standby takes the released lease (it does not wait for it to expire) and finishes the rest.
    proc, log, began = standby, standby_log, time.monotonic()
    _until(lambda: probe(standby_port)[0] == 200, 60, "the standby ready", proc, log)
    took_over = time.monotonic() - began
    print(f"the standby was ready {took_over:.2f} s after the first stopped")
    assert took_over < 4.0  # under the 5 s lease TTL: the lease was released, not left to expire

    def finished() -> bool:
        entries = _entries(env)
        raised = sum(1 for e in entries if e.facts and e.facts[0].kind == "escalation_raised")
        junk = sum(e.summary.count for e in entries if e.summary is not None)
        return raised == ESCALATIONS and junk == JUNK

    _until(finished, 120, "every input handled", proc, log)
    code, _ = _sigterm(proc)
    assert code == 0
    entries = _entries(env)
    ids = [e.facts[0].escalation_id for e in entries if e.facts and e.facts[0].kind == "escalation_raised"]  # type: ignore[union-attr]
    assert sorted(ids) == sorted(f"ESC-{i}" for i in range(ESCALATIONS))  # none lost, none doubled
    assert sum(e.summary.count for e in entries if e.summary is not None) == JUNK
    verify = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", "audit", "verify"], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env.cli_env(), "PYTHONPATH": str(REPO)}, cwd=REPO, check=False)
    assert verify.returncode == 0 and f"audit log OK: {len(entries)} entries" in verify.stdout, verify.stdout


def test_health_answers_from_its_probes() -> None:
    clock = [100.0]
    state = {"started": False, "lease": False, "beat": None, "redis": True, "kafka": True}

    def fail() -> bool:
        raise ConnectionError("down")

    health = ConsumerHealth(started=lambda: bool(state["started"]), holds_lease=lambda: bool(state["lease"]),
                            last_beat=lambda: state["beat"], redis_ping=lambda: state["redis"] or fail(),  # type: ignore[arg-type]
                            kafka_ping=lambda: state["kafka"], keys_loaded=lambda: True, stall_s=30.0,
                            monotonic=lambda: clock[0])
    # A standby waiting for the lease: live, not ready.
    assert health.live() == (True, {"standby": True, "since_loop_s": None})
    assert health.ready() == (False, {"failing": ["lease", "started"], "since_loop_s": None})
    state.update(started=True, lease=True, beat=95.0)
    assert health.live() == (True, {"standby": False, "since_loop_s": 5.0})
    assert health.ready() == (True, {"failing": [], "since_loop_s": 5.0})
    state.update(redis=False, kafka=False)
    assert health.ready()[1]["failing"] == ["kafka", "redis"]
    clock[0] = 125.1 + 5  # the loop has not gone round for 35.1 s: stuck
    assert health.live() == (False, {"standby": False, "since_loop_s": 35.1})


def test_a_consumer_is_started_only_once_its_inputs_are_assigned_and_live_from_then(env: Env) -> None:
    """start() sets its running flag before it republishes and assigns the inputs (seconds, on a busy broker).
    The probes must not see that half-way point: not ready until the inputs are assigned, and live (a beat)
    the moment they are (a CI run answered /readyz 200 then /healthz 503 for a consumer that had not looped)."""
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "SHADOW")])
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=fast_policy(),
                                  catalog=catalog(), metrics=CollectorRegistry())
    seen: list[tuple[bool, float | None]] = []
    assign = consumer.clients.consumer.assign

    def watched_assign(partitions: list[Any]) -> None:
        seen.append((consumer.started, consumer.last_beat))  # mid-start: the probes' view
        assign(partitions)

    consumer.clients.consumer.assign = watched_assign  # type: ignore[method-assign]
    health = ConsumerHealth(started=lambda: consumer.started, holds_lease=consumer.lease.ok,
                            last_beat=lambda: consumer.last_beat, redis_ping=lambda: True, kafka_ping=lambda: True,
                            keys_loaded=lambda: True)
    try:
        assert consumer.start()
        assert seen == [(False, None)]
        assert consumer.started and consumer.last_beat is not None
        assert health.live()[0] and health.live()[1]["standby"] is False
        assert health.ready() == (True, {"failing": [], "since_loop_s": health.ready()[1]["since_loop_s"]})
    finally:
        consumer.close()
    assert not consumer.started and not health.ready()[0]
