"""The status page and its API against the real servers, looked at in a real browser (headless Chromium).

One scene for the module: a real `shadowgate worker` folds traffic published with the SDK into windows in Redis
(40 minutes of history and a live burst), the governance consumer (the kit's, in a thread) holds fraud 1.0.0 in
PRODUCTION and 2.0.0 in SHADOW from a seeded audit log and records the worker's signed gate verdict, and
`shadowgate serve --port 0` serves the page. Every figure on the page and in the API is compared with what
`shadowgate windows --json` and `shadowgate model status --json` print for the same servers; alerts are published
while the page is open (genuine, signed by another key, unsigned, and with markup in their strings).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml
from confluent_kafka.admin import AdminClient

from governance.contract.events import Alert, Evidence, Versions
from governance.contract.publishing import encode_signed_event
from governance.crypto.keyring import Keyring
from governance.service.consumer import GovernanceConsumer
from shadowgate.sdk import LabelPublisher, ScorePublisher
from shadowgate.traffic import TrafficSpec, generate
from streams.state.redis_store import RedisWindowStore
from streams.worker.reading import read_windows
from tests.governance_kit import Env, fast_policy, lifecycle_facts, make_keys, running, seed_log, send
from tests.status_kit import REPO, browser, screenshot, serving
from tests.worker_kit import WorkerEnv, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
POLICY = fast_policy()
MODEL, OLD, NEW = "fraud", "1.0.0", "2.0.0"
HISTORY_PAIRS, LIVE_PAIRS = 480, 120
SCRIPT = "<script>window.__sg_pwned = 1</script>"
IMG = '<img src="x" onerror="window.__sg_pwned = 2">'


@dataclass
class Scene:
    worker: WorkerEnv
    gov: Env
    consumer: GovernanceConsumer
    url: str
    env: dict[str, str]

    def cli(self, *args: str) -> Any:
        done = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "shadowgate", *args], env=self.env, cwd=str(REPO), capture_output=True,
            timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return orjson.loads(done.stdout)

    def get(self, path: str, method: str = "GET") -> tuple[int, Any]:
        request = urllib.request.Request(  # noqa: S310 - our own local server
            self.url + path, method=method, data=b"{}" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own local server
                body, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            body, status = exc.read(), exc.code
        try:
            return status, orjson.loads(body)
        except orjson.JSONDecodeError:
            return status, body.decode()


def _publish(bootstrap: str, topics: Any, spec: TrafficSpec) -> None:
    with ScorePublisher(bootstrap, topics.scores) as scores, LabelPublisher(bootstrap, topics.labels) as labels:
        for event in generate(spec):
            (labels if event.pop("kind") == "label" else scores).publish(event)


@pytest.fixture(scope="module")
def scene(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("status")
    keys_dir = make_keys(root)
    worker = WorkerEnv(kafka_bootstrap, redis_url, uuid.uuid4().hex[:12], keys_dir, partitions=2)
    worker.create_topics()
    policy_path = root / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(POLICY.model_dump(mode="json")))
    gov = Env(kafka_bootstrap, redis_url, worker.prefix, keys_dir, dict(worker.topics.model_dump()), policy_path)
    env = {**worker.env(), "SHADOWGATE_POLICY_PATH": str(policy_path)}
    with ExitStack() as stack:
        stack.callback(_clean, kafka_bootstrap, redis_url, worker)
        seed_log(gov, [lifecycle_facts(MODEL, OLD, "PRODUCTION"), lifecycle_facts(MODEL, NEW, "SHADOW")])
        consumer = stack.enter_context(running(gov, POLICY))
        stack.callback(worker.stop_all)
        # The worker judges under the consumer's policy: a gate judged under another one is refused (issue 14).
        worker.start_worker(root, extra_env={"SHADOWGATE_POLICY_PATH": str(policy_path)})
        now = datetime.now(UTC)
        base = TrafficSpec(model=MODEL, production_version=OLD, candidate_version=NEW, role="shadow",
                           label_delay_s=1.0, beta_a=0.5, beta_b=3.0, delta_sd=0.03)
        # 40 minutes of history (several chart points), then a live burst after the stage began.
        _publish(kafka_bootstrap, worker.topics, replace(base, pairs=HISTORY_PAIRS, start=now - timedelta(minutes=40),
                                                         rate_per_s=HISTORY_PAIRS / (38 * 60), seed=11))
        _publish(kafka_bootstrap, worker.topics, replace(base, pairs=LIVE_PAIRS, start=datetime.now(UTC),
                                                         rate_per_s=200.0, seed=12))
        store = RedisWindowStore.from_url(redis_url, prefix=worker.prefix)
        stack.callback(store.close)

        def folded() -> bool:
            comps = read_windows(store, model=MODEL, windows=["24h"])["comparisons"]
            w = comps[0]["windows"]["24h"] if comps else {}
            return (w.get("sample_count"), w.get("label_count")) == (HISTORY_PAIRS + LIVE_PAIRS,) * 2

        wait_for(folded, 120, "every pair and label folded into the windows", worker)
        wait_for(lambda: NEW in consumer.state.verdicts.get(MODEL, {}), 90, "the worker's gate verdict of 2.0.0",
                 worker)
        url = stack.enter_context(serving(env, root / "serve.log"))
        yield Scene(worker, gov, consumer, url, env)


def _clean(bootstrap: str, redis_url: str, worker: WorkerEnv) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ours = [t for t in admin.list_topics(timeout=10).topics if worker.unique in t]
    for future in (admin.delete_topics(ours).values() if ours else []):
        with suppress(Exception):  # best-effort cleanup of test topics
            future.result(timeout=30)
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{worker.prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _alert(scene: Scene, model: str, summary: str, signer: Any = None, signed: bool = True) -> None:
    now = datetime.now(UTC)
    alert = Alert(event_id=uuid.uuid4(), ts=now, expires_at=now + timedelta(hours=1), model=model,
                  versions=Versions(production=OLD, candidate=NEW, role="shadow"),
                  evidence=Evidence(policy_hash=POLICY.hash()), severity="critical", dedup_key=f"{model}:test",
                  summary=summary, runbook="review-score-shift")
    value = (encode_signed_event(alert, signer or scene.gov.signer(), now) if signed
             else orjson.dumps({"payload": alert.model_dump(mode="json")}))
    send(scene.gov, "alerts", value, b"fraud")


# ------------------------------------------------------------------------------------------ the API


def test_the_api_serves_the_figures_of_the_cli(scene: Scene) -> None:
    cli_windows = scene.cli("windows", "--json")
    status, api_windows = scene.get("/api/comparisons")
    assert status == 200
    assert [{k: v for k, v in c.items() if k != "id"} for c in api_windows["comparisons"]] == cli_windows["comparisons"]
    (comp,) = [c for c in api_windows["comparisons"] if c["candidate_version"] == NEW]
    assert comp["id"] == f"{MODEL}|{OLD}|{NEW}|shadow" and comp["windows"]["24h"]["sample_count"] == 600

    rows = scene.cli("model", "status", "--json")
    status, board = scene.get("/api/models")
    assert status == 200 and len(board["models"]) == len(rows) == 2
    for ours, theirs in zip(board["models"], rows, strict=True):
        assert abs(ours.pop("time_in_stage_s") - theirs.pop("time_in_stage_s")) < 60
        ours.pop("time_in_stage")
        assert ours == theirs
    assert board["routing"][MODEL]["production"] == OLD and board["policy"]["hash"] == POLICY.hash()

    # The chart series: its last 5-minute point is the 5m window; its points add up to the whole traffic.
    cli_5m = {c["candidate_version"]: c for c in scene.cli("windows", "--window", "5m", "--json")["comparisons"]}
    status, series = scene.get(f"/api/series?id={urllib.request.quote(comp['id'])}&span=6h&step=5m")
    assert status == 200 and len(series["t"]) == 72
    for name, values in series["metrics"].items():
        assert values[-1] == cli_5m[NEW]["windows"]["5m"][name], name
    assert sum(v or 0 for v in series["metrics"]["sample_count"]) == 600
    assert sum(1 for v in series["metrics"]["sample_count"] if v) >= 6  # 40 minutes of history: several points
    limits = {(t["metric"], t["value"]) for t in series["thresholds"]}
    assert ("mean_abs_delta", POLICY.shadow.mean_abs_delta.threshold) in limits
    assert ("p99_latency_ms", POLICY.triggers.p99_latency_ms.threshold) in limits
    assert ("error_rate", POLICY.staging.error_rate.threshold) not in limits  # a canary limit, not a shadow one

    status, bad = scene.get("/api/series?id=nonsense&span=6h&step=5m")
    assert status == 400 and "MODEL|PRODUCTION|CANDIDATE|ROLE" in bad["error"]


def test_the_verdict_endpoints_answer_argo_and_flagger(scene: Scene) -> None:
    gate = scene.consumer.state.verdicts[MODEL][NEW]["SHADOW"]
    assert not gate.passed  # classification needs 10,000 pairs under this policy: the worker said BLOCKED
    status, verdict = scene.get(f"/api/verdict/{MODEL}/{NEW}")
    assert status == 200  # Argo Rollouts' web provider counts any non-2xx as an error, not a failure
    assert (verdict["verdict"], verdict["decision"], verdict["passed"]) == ("BLOCKED", "fail", False)
    assert verdict["gate_event_id"] == gate.event_id and verdict["reasons"] == gate.failures
    assert scene.get(f"/api/gate/{MODEL}/{NEW}")[0] == 412
    assert scene.get(f"/api/gate/{MODEL}/{NEW}", "POST")[0] == 412  # Flagger posts its webhook payload
    status, serving_now = scene.get(f"/api/gate/{MODEL}/{OLD}", "POST")
    assert (status, serving_now["verdict"], serving_now["decision"]) == (200, "SERVING", "pass")
    assert scene.get(f"/api/gate/{MODEL}/{NEW}?stage=STAGING")[1]["decision"] == "wait"
    assert scene.get(f"/api/gate/{MODEL}/9.9.9")[0] == 404
    assert scene.get(f"/api/verdict/{MODEL}/9.9.9")[1]["verdict"] == "UNKNOWN"
    assert scene.get(f"/api/verdict/{MODEL}/{NEW}?stage=LATER")[0] == 400

    assert scene.get("/healthz") == (200, "ok\n")
    assert scene.get("/readyz") == (200, {"ready": True, "problems": []})
    status, metrics = scene.get("/metrics")
    assert status == 200 and 'shadowgate_status_verdicts_total{decision="fail"}' in metrics


# ------------------------------------------------------------------------------------------ the page


def test_the_page_shows_the_board_and_the_windows_with_their_limits(scene: Scene) -> None:
    rows = scene.cli("model", "status", "--json")
    windows = {c["candidate_version"]: c for c in scene.cli("windows", "--json")["comparisons"]}
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(scene.url + "/")
        page.wait_for_selector("#board-table tr.version-row")
        page.wait_for_selector(".chart[data-chart=delta] canvas")
        for row in rows:
            tr = page.locator(f"tr.version-row[data-model='{row['model']}'][data-version='{row['version']}']")
            assert tr.locator(".stage").inner_text() == row["stage"]
            assert tr.locator(".role").inner_text() == row["role"]
            assert tr.locator(".next").inner_text() == (row["next_stage"] or "–")
            assert tr.locator(".blocked li.rule").all_inner_texts() == row["blocked_by"]
        shadow_row = page.locator(f"tr.version-row[data-version='{NEW}']")
        assert shadow_row.locator(".blocked li.rule").count() >= 1  # 2.0.0 is blocked, and the page says why

        section = page.locator(f".comparison[data-id='{MODEL}|{OLD}|{NEW}|shadow']")
        for window, values in windows[NEW]["windows"].items():
            for cell in section.locator(f"td[data-window='{window}']").all():
                metric = cell.get_attribute("data-metric")
                assert orjson.loads(cell.get_attribute("data-value") or "") == values[metric], (window, metric)
        delta = section.locator(".chart[data-chart=delta]")
        assert delta.locator("canvas").count() >= 1
        legend = " ".join(delta.locator(".u-legend .u-series").all_inner_texts())
        assert f"limit {POLICY.shadow.mean_abs_delta.threshold} SHADOW mean |Δ|" in legend
        assert orjson.loads(delta.get_attribute("data-thresholds") or "[]") == [
            POLICY.shadow.mean_abs_delta.threshold, POLICY.shadow.p95_abs_delta.threshold,
            POLICY.shadow.p99_abs_delta.threshold]
        latency = " ".join(section.locator(".chart[data-chart=latency] .u-legend").all_inner_texts())
        assert "rollback trigger (1m window" in latency and "production_p99_latency_ms" in latency
        screenshot(page, "status-board-and-windows")
        assert errors == []


def test_alerts_arrive_without_reload_and_forgeries_are_shown_rejected_and_escaped(scene: Scene,
                                                                                    tmp_path: Path) -> None:
    other = Keyring(tmp_path / "other-keys")
    other.generate(datetime.now(UTC))
    genuine = f"P99 latency 1.4 s > 1 s on 2.0.0 ({uuid.uuid4().hex[:6]})"
    forged = f"all clear, promote now ({uuid.uuid4().hex[:6]})"
    with browser() as chromium:
        page = chromium.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(scene.url + "/#alerts")
        page.wait_for_selector("#alert-stream[data-state=live]")
        page.evaluate("window.__sg_marker = 'same page'")

        _alert(scene, MODEL, genuine)
        item = page.locator("li.alert.verified", has_text=genuine)
        item.wait_for(timeout=30_000)
        assert item.locator(".alert-model").inner_text() == MODEL
        assert item.locator("code").inner_text() == scene.gov.signer().key_id
        assert page.evaluate("window.__sg_marker") == "same page"  # pushed, not reloaded
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

        _alert(scene, MODEL, forged, signer=other.signer(datetime.now(UTC)))
        _alert(scene, SCRIPT, f"{IMG} {forged}", signed=False)
        _alert(scene, SCRIPT, f"{IMG} {genuine}")  # genuine, but its strings carry markup
        rejected = page.locator("li.alert.rejected", has_text=forged)
        rejected.first.wait_for(timeout=30_000)
        page.locator("li.alert.rejected", has_text=SCRIPT).wait_for(timeout=30_000)
        page.locator("li.alert.verified", has_text=SCRIPT).wait_for(timeout=30_000)
        assert rejected.count() == 2
        assert "VerificationError" in rejected.first.locator(".reason").inner_text()
        assert page.locator("li.alert.verified", has_text=forged).count() == 0  # never shown as genuine
        marked = page.locator("li.alert.verified", has_text=SCRIPT)
        assert marked.locator(".alert-model").inner_text() == SCRIPT  # the literal text, not markup
        assert IMG in marked.locator(".summary").inner_text()
        assert page.locator("#alert-list script, #alert-list img").count() == 0
        assert page.evaluate("typeof window.__sg_pwned") == "undefined"
        screenshot(page, "status-alerts")

    status, feed = scene.get("/api/alerts")
    statuses = {a.get("summary") or a.get("claims", {}).get("summary"): a["status"] for a in feed["alerts"]}
    assert statuses[genuine] == "verified" and statuses[forged] == "rejected"
    assert feed["counts"]["rejected"] >= 2
