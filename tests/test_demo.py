"""`shadowgate demo` as a user runs it: a subprocess against the real Kafka broker and Redis.

The outcome is checked independently of what the demo prints: the signed audit log it exported is verified
with the run's trust store and folded into a state by `governance.lifecycle.state.rebuild`, which must show 1.4.0
serving again after an automatic rollback of 1.5.0 triggered by the latency breach, both ProofPacks, and the
promotions made by the worker's gate events; and nothing of the run may be left behind (processes, topics,
Redis keys). The demo is run as `make demo` runs it, leaving its status page up at the end: the test opens the
board, the rollback's alert and the evidence report of the promoted version (in Chromium too, with screenshots),
then stops it with Ctrl-C (SIGINT), which must end it cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient

from governance.contract.stages import Stage
from governance.crypto.record import verify_record
from governance.crypto.signing import Context
from governance.lifecycle.audit import entry_hash, parse_entry
from governance.lifecycle.chain import verify_chain
from governance.lifecycle.identities import load_trust
from governance.lifecycle.ledger import Transitioned
from governance.lifecycle.state import rebuild
from tests.status_kit import LineReader

REPO = Path(__file__).resolve().parent.parent


def _demo(env: dict[str, str], *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", "demo", *args], env={**os.environ, **env}, cwd=str(REPO),
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )


def _processes_of(group: str) -> list[int]:
    """Pids whose environment names the demo run's consumer group (its workers and consumer)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):
                if f"SHADOWGATE_CONSUMER_GROUP={group}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_the_whole_story_and_leaves_nothing_behind(kafka_bootstrap: str, redis_url: str,
                                                             tmp_path: Path) -> None:
    env = {"SHADOWGATE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SHADOWGATE_REDIS_URL": redis_url,
           "SHADOWGATE_STATE_DIR": str(tmp_path)}
    # As `make demo` runs it: the status page stays up at the end until the user presses Ctrl-C (here: SIGINT).
    proc = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", "demo", "--pairs", "1000", "--timeout", "60", "--port", "0"],
        env={**os.environ, **env}, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader = LineReader(proc)
    try:
        # The rollback step waits for whole minutes of event time to close (up to two minutes, docs/demo.md).
        url = reader.until("status page: http", 420).split()[2].rstrip("/")
        _look_at_the_status_page(url)
        _report_from_the_cli(env, next((tmp_path / "demo").iterdir()), tmp_path / "report.html")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    out = "\n".join(reader.lines) + "\n" + (reader.buffer + rest).decode(errors="replace")
    assert proc.returncode == 0, f"{out[-6000:]}\n{err.decode()[-3000:]}"
    assert "DEMO POLICY" in out and "[8/8]" in out and "rolled back in" in out
    assert "status page stopped; run" in out and "cleaned up" in out
    (root,) = (tmp_path / "demo").iterdir()
    run = root.name

    records = [orjson.loads(line) for line in (root / "audit.jsonl").read_bytes().splitlines() if line.strip()]
    trust, now = load_trust(root / "keys"), datetime.now(UTC)
    report = verify_chain(records, trust.system, now, trust.phase(now))
    assert report.ok, str(report)
    entries = [(parse_entry(verify_record(r, Context.AUDIT_ENTRY, trust.system, now, trust.phase(now))),
                entry_hash(r)) for r in records]
    state = rebuild(entries)
    line = state.registry.models["fraud-risk"]
    assert line.production == "1.4.0"
    assert {v: r.stage for v, r in line.versions.items()} == {"1.4.0": Stage.PRODUCTION, "1.5.0": Stage.RETIRED}
    assert sorted(state.proofpacks) == ["PP-fraud-risk-1.4.0", "PP-fraud-risk-1.5.0"]

    # 1.5.0 went to STAGING on the worker's signed GateReady, to PRODUCTION on GID-08's approval, and out on
    # the worker's RollbackTrigger for the latency breach: nothing but events and signed commands moved it.
    moves = [(e.input.type, f.to_stage) for e, _ in entries for f in e.facts
             if isinstance(f, Transitioned) and f.version == "1.5.0"]
    assert moves == [("advance", "PROTOTYPE"), ("advance", "TRAINING"), ("advance", "SHADOW"),
                     ("GateReady", "STAGING"), ("approve", "PRODUCTION"), ("RollbackTrigger", "RETIRED")]
    (rollback,) = [r for r in state.rollbacks if r.action == "immediate"]
    assert (rollback.from_version, rollback.to_version, rollback.status, rollback.initiated_by) == (
        "1.5.0", "1.4.0", "COMPLETED", "ALEX_AUTOMATED")
    assert rollback.reason.startswith("p99_latency_ms ") and "> 1000" in rollback.reason
    refused = [e for e, _ in entries if e.outcome == "rejected"]
    assert len(refused) == 1 and refused[0].rejection is not None and any(
        "Maggie (GID-02) approval required" in rule for rule in refused[0].rejection.rules)

    summary = orjson.loads((root / "summary.json").read_bytes())
    verdict, *notes = summary["audit_verify"].splitlines()  # `audit verify` also checked the newest checkpoint
    assert summary["ok"] is True and verdict == str(report) and notes == ["  the newest checkpoint matches the log"]
    # The P99 trigger judges whole minutes of event time, each once the stream is a join window (60 s) past it:
    # up to two minutes from the first slow request, on top of the 30 s the rest of the rollback may take.
    assert 0 < summary["rollback_s"] < 30 + 120
    assert [row["stage"] for row in summary["status"]] == ["PRODUCTION", "RETIRED"]

    assert _processes_of(f"demo-{run}") == []
    topics = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    assert [t for t in topics if run in t] == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"demo-{run}*", count=1000)) == []
    finally:
        client.close()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - the demo's own local server
        body = response.read()
    return orjson.loads(body) if response.headers.get_content_type() == "application/json" else body.decode()


def _look_at_the_status_page(url: str) -> None:
    """What an on-call engineer and an approver would open: the board, the alert of the rollback, the report."""
    from tests.status_kit import browser, screenshot  # noqa: I001 - kept local: the quick tests need no browser

    board = _get(f"{url}/api/models")
    assert {(r["version"], r["stage"]) for r in board["models"]} == {("1.4.0", "PRODUCTION"), ("1.5.0", "RETIRED")}
    verdict = _get(f"{url}/api/verdict/fraud-risk/1.5.0")
    assert (verdict["verdict"], verdict["decision"]) == ("ROLLED_BACK", "fail")
    report = _get(f"{url}/report/fraud-risk/1.5.0")
    assert "Signature verified" in report and "PP-fraud-risk-1.5.0" in report
    assert report.count("<svg") >= 4  # |delta| and score distributions and calibration of the shadow gate, drift
    # One per approval: GID-02's PROTOTYPE and training (SHADOW, spec 1.2) approvals, GID-08's PRODUCTION one.
    assert report.count("audit entry #") == 3 and "not found in the verified audit log" not in report
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/")
        page.wait_for_selector("tr.version-row[data-version='1.5.0'] .stage")
        assert page.locator("tr.version-row[data-version='1.5.0'] .stage").inner_text() == "RETIRED"
        page.locator("li.alert.verified", has_text="rollback COMPLETED").first.wait_for(timeout=30_000)
        page.wait_for_selector(".chart canvas")
        screenshot(page, "demo-status-page")
        page.goto(f"{url}/report/fraud-risk/1.5.0")
        assert page.locator("h1").inner_text() == "Evidence report: fraud-risk 1.5.0"
        screenshot(page, "demo-evidence-report-1.5.0")


def _report_from_the_cli(env: dict[str, str], root: Path, out: Path) -> None:
    """`shadowgate report` with the run's settings: the same verified evidence, as a file."""
    run = root.name
    settings = {**env, "SHADOWGATE_REDIS_PREFIX": f"demo-{run}", "SHADOWGATE_KEYS_DIR": str(root / "keys"),
                "SHADOWGATE_TOPICS__LIFECYCLE": f"demo.{run}.governance.lifecycle"}
    done = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", "report", "fraud-risk", "1.5.0", "--html", str(out)],
        env={**os.environ, **settings}, cwd=str(REPO), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "PP-fraud-risk-1.5.0 (signature verified) written to" in done.stdout
    html = out.read_text()
    assert "Signature verified" in html and html.count("<svg") >= 4 and html.count("audit entry #") == 3
    assert "<script" not in html and "http" not in html.split("</title>", 1)[1].split("<body>", 1)[0]


@pytest.mark.real_clock
def test_demo_says_run_make_up_when_kafka_does_not_answer(tmp_path: Path) -> None:
    done = _demo({"SHADOWGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1", "SHADOWGATE_STATE_DIR": str(tmp_path)}, timeout_s=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "shadowgate: error: Kafka at 127.0.0.1:1 does not answer; run `make up` first"
    assert not (tmp_path / "demo").exists()


@pytest.mark.integration
def test_demo_says_run_make_up_when_redis_does_not_answer(kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {"SHADOWGATE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SHADOWGATE_REDIS_URL": "redis://:secret@127.0.0.1:1/0",
           "SHADOWGATE_STATE_DIR": str(tmp_path)}
    done = _demo(env, timeout_s=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "shadowgate: error: Redis at 127.0.0.1:1/0 does not answer; run `make up` first"
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_fewer_pairs_than_the_shadow_gate_needs(tmp_path: Path) -> None:
    done = _demo({"SHADOWGATE_STATE_DIR": str(tmp_path)}, "--pairs", "999", timeout_s=60)
    assert done.returncode == 2
    assert "--pairs" in done.stderr and "999 is below the demo policy's risk_scoring min_samples 1000" in done.stderr
