"""``shadowgate alerts forward`` against the real Kafka, a real Alertmanager and local receivers that fail.

What is proved: a receiver that answers 500s, times out or answers garbage is retried until it recovers and
then gets every notice exactly once (per notice id), while the healthy receivers are not held back; a lane's
committed position never passes a notice it has not delivered, even across a SIGKILL; a permanent refusal
goes to the dead-letter topic with its reason; forged and unsigned alerts are never delivered anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from governance.contract.publishing import encode_signed_event
from governance.service.consumer import read_log
from tests.alerting_kit import AlertmanagerServer, HttpReceiver
from tests.alerting_samples import alert, blocked, ready, trigger
from tests.forwarder_kit import SECRET, Forwarder, dead_letters, forwarders
from tests.governance_kit import (
    Env,
    fast_policy,
    gate_ready,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    rollback_trigger,
    running,
    seed_log,
    send,
    send_event,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("forwarder"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)


@pytest.fixture
def dlq(make_topic: Callable[..., str]) -> str:
    return make_topic("dlq")


@pytest.fixture
def made(kafka_bootstrap: str) -> Iterator[list[Forwarder]]:
    with forwarders(kafka_bootstrap) as out:
        yield out


@pytest.fixture
def receivers() -> Iterator[Callable[[str], HttpReceiver]]:
    opened: list[HttpReceiver] = []

    def _open(mode: str = "ok") -> HttpReceiver:
        opened.append(HttpReceiver(mode))
        return opened[-1]

    yield _open
    for receiver in opened:
        receiver.close()


def _ids(receiver: HttpReceiver, path: str = "/hook") -> list[str]:
    return [r.headers["Idempotency-Key"] for r in receiver.delivered(path)]


def _notices(receiver: HttpReceiver, path: str = "/hook") -> list[dict[str, object]]:
    return [r.json()["notice"] for r in receiver.delivered(path)]


def _hook(name: str, receiver: HttpReceiver) -> dict[str, str]:
    return {"name": name, "type": "webhook", "url": f"{receiver.url}/hook", "secret_file": "hook.secret"}


def test_an_outage_of_500s_timeouts_and_garbage_is_retried_and_every_notice_arrives_once(
        env: Env, dlq: str, alertmanager: AlertmanagerServer, tmp_path: Path, unique: str, made: list[Forwarder],
        receivers: Callable[[str], HttpReceiver]) -> None:
    flaky, steady = receivers("500"), receivers("ok")
    model = f"fraud-{unique}"
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[
        {"name": "am", "type": "alertmanager", "url": alertmanager.url},
        _hook("hook", flaky), _hook("steady", steady),
        {"name": "slack", "type": "slack", "url": f"{steady.url}/slack", "match": {"severities": ["critical"]}},
        {"name": "pd", "type": "pagerduty", "url": f"{steady.url}/pd", "routing_key_file": "hook.secret"}])
    made.append(fwd)
    fwd.start()
    now = now_utc()
    genuine = orjson.loads(encode_signed_event(alert(model, ts=now, summary="genuine KL"), env.signer(), now))
    forged = {**genuine, "payload": {**genuine["payload"], "summary": "FORGED page", "severity": "critical"}}
    unsigned = alert(model, ts=now, summary="UNSIGNED page").model_dump(mode="json")
    send(env, "alerts", orjson.dumps(genuine), model.encode())
    send(env, "alerts", orjson.dumps(forged), model.encode())
    send(env, "alerts", orjson.dumps(unsigned), model.encode())
    send_event(env, "gates", blocked(model, "2.0.0", ts=now))
    send_event(env, "rollbacks", trigger(model, "3.0.0", "2.0.0", ts=now))

    # The healthy receiver gets everything while the flaky one fails, and commits past it; the flaky one does not.
    wait_until(lambda: len(steady.delivered("/hook")) == 3, timeout_s=30, what="3 notices at the steady receiver")
    wait_until(lambda: len(flaky.answered("500")) >= 3, timeout_s=30, what="the flaky receiver failing")
    wait_until(lambda: fwd.committed("steady", env.topics["alerts"]) == 3, what="steady's position past the alerts")
    for topic in ("alerts", "gates", "rollbacks"):
        assert fwd.committed("hook", env.topics[topic]) == 0, f"hook committed {topic} past an undelivered notice"
    flaky.set_mode("timeout")
    wait_until(lambda: fwd.metric("shadowgate_alerts_delivery_attempts_total", receiver="hook", result="timeout") >= 1,
               timeout_s=30, what="an attempt timed out")
    flaky.set_mode("garbage")
    wait_until(lambda: fwd.metric("shadowgate_alerts_delivery_attempts_total", receiver="hook", result="garbage") >= 2,
               timeout_s=30, what="garbage answers")
    assert fwd.committed("hook", env.topics["alerts"]) == 0
    assert fwd.get("/healthz")[0] == 200  # garbage and timeouts never crash it
    flaky.set_mode("ok")
    wait_until(lambda: sorted(_ids(flaky)) == sorted(_ids(steady)), timeout_s=30, what="the flaky receiver caught up")

    for receiver in (flaky, steady):
        assert all(count == 1 for count in Counter(_ids(receiver)).values()), Counter(_ids(receiver))
    assert sorted(n["labels"]["alertname"] for n in _notices(flaky)) == [  # type: ignore[index]
        "ShadowgateGateBlocked", "ShadowgateReviewScoreShift", "ShadowgateRollbackTriggered"]
    request = flaky.delivered("/hook")[0]
    stamp = request.headers["X-Shadowgate-Timestamp"]
    mac = hmac.new(SECRET.encode(), f"{stamp}.".encode() + request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Shadowgate-Signature"] == f"v1={mac}"
    assert request.json()["record"]["signature"]["alg"] == "ML-DSA-65"
    wait_until(lambda: fwd.committed("hook", env.topics["alerts"]) == 3, what="hook's position past the alerts")

    wait_until(lambda: len(alertmanager.alerts(model=model)) == 3, what="three alerts in Alertmanager")
    (triggered,) = alertmanager.alerts(model=model, alertname="ShadowgateRollbackTriggered")
    assert {k: triggered["labels"][k] for k in ("severity", "kind", "from_version", "trigger", "action")} == {
        "severity": "critical", "kind": "rollback_triggered", "from_version": "3.0.0", "trigger": "error_rate",
        "action": "immediate"}
    (kl,) = alertmanager.alerts(model=model, alertname="ShadowgateReviewScoreShift")
    assert kl["labels"]["severity"] == "warning" and kl["annotations"]["summary"] == "genuine KL"
    assert kl["annotations"]["runbook_url"] == "https://runbooks.example.com/review-score-shift.md"

    # The gate clears: every receiver is told, Alertmanager resolves it (and notifies the resolve).
    send_event(env, "gates", ready(model, "2.0.0", ts=now + timedelta(seconds=1)))
    wait_until(lambda: len(_ids(flaky)) == 4 and len(_ids(steady)) == 4, what="the resolve at both receivers")
    assert _notices(flaky)[-1]["status"] == "resolved"
    wait_until(lambda: alertmanager.alerts(model=model, alertname="ShadowgateGateBlocked") == [],
               what="the gate resolved in Alertmanager")
    wait_until(lambda: bool(alertmanager.notified("resolved", model=model, alertname="ShadowgateGateBlocked")),
               what="Alertmanager's resolved notification")

    # Slack got the critical one only; PagerDuty a trigger per firing notice and a resolve with the same key.
    (slack,) = steady.delivered("/slack")
    assert "ShadowgateRollbackTriggered" in slack.json()["text"] and slack.json()["blocks"]
    pd = [r.json() for r in steady.delivered("/pd")]
    assert [e["event_action"] for e in pd] == ["trigger", "trigger", "trigger", "resolve"]
    gate_key = next(e["dedup_key"] for e in pd if e["payload"]["class"] == "ShadowgateGateBlocked")
    assert pd[-1] == {"routing_key": SECRET, "event_action": "resolve", "dedup_key": gate_key}

    # Forged and unsigned alerts went nowhere but the dead-letter topic, and were counted.
    everything = [r.body for receiver in (flaky, steady) for r in receiver.seen()]
    everything += [orjson.dumps(a) for a in alertmanager.alerts(model=model)]
    assert not any(b"FORGED" in body or b"UNSIGNED" in body for body in everything)
    reasons = sorted(h["shadowgate.reason"].split(":")[0] for h, _ in dead_letters(env.bootstrap, dlq))
    assert reasons == ["bad_signature", "unsigned"]
    assert fwd.metric("shadowgate_alerts_rejected_total", source="alerts", reason="bad_signature") == 1
    assert fwd.metric("shadowgate_alerts_rejected_total", source="alerts", reason="unsigned") == 1
    for result in ("http_5xx", "timeout", "garbage"):
        assert fwd.metric("shadowgate_alerts_delivery_attempts_total", receiver="hook", result=result) >= 1, result
    assert fwd.metric("shadowgate_alerts_delivered_total", receiver="hook") == 4
    assert fwd.metric("shadowgate_alerts_received_total", model=model, kind="rollback_triggered",
                      severity="critical") == 1
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="rollback_triggered", model=model) == 1
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="gate_blocked", model=model) == 0
    assert fwd.stop() == 0


def test_a_refusal_and_endless_garbage_go_to_the_dead_letter_topic_and_the_lane_moves_on(
        env: Env, dlq: str, tmp_path: Path, unique: str, made: list[Forwarder],
        receivers: Callable[[str], HttpReceiver]) -> None:
    picky, junk = receivers("ok"), receivers("garbage")
    picky.rule = lambda body: "400" if b"REFUSE-ME" in body else None
    model = f"risk-{unique}"
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[_hook("picky", picky), _hook("junk", junk)],
                    retry={"timeout_s": 1.0, "initial_backoff_s": 0.05, "max_backoff_s": 0.2, "max_garbage": 3})
    made.append(fwd)
    fwd.start()
    send_event(env, "alerts", alert(model, summary="REFUSE-ME", ts=now_utc()))
    send_event(env, "alerts", alert(model, summary="fine", ts=now_utc(), dedup_key=f"{model}|other"))
    wait_until(lambda: fwd.committed("picky", env.topics["alerts"]) == 2
               and fwd.committed("junk", env.topics["alerts"]) == 2, timeout_s=30, what="both lanes past both")
    assert [n["annotations"]["summary"] for n in _notices(picky)] == ["fine"]  # type: ignore[index]
    assert len(picky.answered("400")) == 1  # refused once: not retried
    assert len(junk.answered("garbage")) == 6  # 3 attempts per notice, then dead-lettered
    letters = [(h, orjson.loads(v)) for h, v in dead_letters(env.bootstrap, dlq)]
    assert sorted((h["shadowgate.receiver"], h["shadowgate.reason"].split(":")[0]) for h, _ in letters) == [
        ("junk", "garbage"), ("junk", "garbage"), ("picky", "refused")]
    refused = next(doc for h, doc in letters if h["shadowgate.receiver"] == "picky")
    assert refused["reason"] == 'refused: HTTP 400: {"error":"400"} (after 1 attempt(s))'
    assert refused["status"] == 400 and refused["notice"]["annotations"]["summary"] == "REFUSE-ME"
    assert refused["notice"]["record"]["signature"]["alg"] == "ML-DSA-65"
    assert fwd.metric("shadowgate_alerts_dead_lettered_total", receiver="picky", reason="refused") == 1
    assert fwd.metric("shadowgate_alerts_dead_lettered_total", receiver="junk", reason="garbage") == 2


def test_sigkill_mid_outage_loses_nothing_and_repeats_nothing_to_the_receivers_that_had_it(
        env: Env, dlq: str, tmp_path: Path, unique: str, made: list[Forwarder],
        receivers: Callable[[str], HttpReceiver]) -> None:
    down, steady = receivers("500"), receivers("ok")
    model = f"churn-{unique}"
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[_hook("down", down), _hook("steady", steady)])
    made.append(fwd)
    fwd.start()
    for n in range(3):
        send_event(env, "alerts", alert(model, summary=f"before {n}", ts=now_utc(), dedup_key=f"{model}|{n}"))
    wait_until(lambda: fwd.committed("steady", env.topics["alerts"]) == 3, what="steady delivered and committed 3")
    wait_until(lambda: len(down.answered("500")) >= 2, what="the down receiver failing")
    assert fwd.committed("down", env.topics["alerts"]) == 0
    fwd.kill()
    assert fwd.committed("down", env.topics["alerts"]) == 0  # the position never passed the undelivered alert
    for n in range(3, 5):
        send_event(env, "alerts", alert(model, summary=f"while dead {n}", ts=now_utc(), dedup_key=f"{model}|{n}"))
    down.set_mode("ok")
    fwd.start()
    wait_until(lambda: len(_ids(down)) == 5 and len(_ids(steady)) == 5, timeout_s=30, what="all 5 at both")
    wait_until(lambda: fwd.committed("down", env.topics["alerts"]) == 5, what="down's position at the end")
    assert sorted(_ids(down)) == sorted(_ids(steady))
    for receiver in (down, steady):
        assert all(count == 1 for count in Counter(_ids(receiver)).values()), Counter(_ids(receiver))
    summaries = sorted(str(n["annotations"]["summary"]) for n in _notices(down))  # type: ignore[index]
    assert summaries == ["before 0", "before 1", "before 2", "while dead 3", "while dead 4"]
    assert fwd.stop() == 0


def test_rollbacks_and_an_approval_through_the_real_governance_consumer_reach_alertmanager_once_each(
        env: Env, dlq: str, alertmanager: AlertmanagerServer, tmp_path: Path, unique: str, made: list[Forwarder],
        receivers: Callable[[str], HttpReceiver]) -> None:
    fraud, risk, canary = f"fraud{unique}", f"risk{unique}", f"canary{unique}"
    seed_log(env, [lifecycle_facts(fraud, "1.0.0", "PRODUCTION"), lifecycle_facts(fraud, "2.0.0", "PRODUCTION"),
                   lifecycle_facts(risk, "1.0.0", "PRODUCTION"), lifecycle_facts(canary, "1.0.0", "PRODUCTION"),
                   lifecycle_facts(canary, "2.0.0", "STAGING")])
    steady = receivers("ok")
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[
        {"name": "am", "type": "alertmanager", "url": alertmanager.url}, _hook("steady", steady)])
    made.append(fwd)
    fwd.start()
    policy = fast_policy()
    with running(env, policy):
        send_event(env, "rollbacks", rollback_trigger(policy, fraud, "2.0.0", "1.0.0"))  # restores 1.0.0
        send_event(env, "rollbacks", rollback_trigger(policy, risk, "1.0.0", None))  # no target: P0
        send_event(env, "gates", gate_ready(policy, canary, "1.0.0", "2.0.0", "STAGING"))  # GID-08 has not approved
        wait_until(lambda: {n["labels"]["alertname"] for n in _notices(steady)} >= {  # type: ignore[index]
            "ShadowgateRollbackCompleted", "ShadowgateModelRollbackFailed", "ShadowgateApprovalWaiting"},
            timeout_s=30, what="both outcomes and the approval waiting")
        wait_until(lambda: len(read_log(env.bootstrap, env.topics["alerts"])) == 2, what="the consumer's 2 alerts")
        # The consumer writes its alerts in transactions, whose commit markers take offsets: the position past
        # its last alert is that alert's offset + 1, not the count of alerts.
        after_last = read_log(env.bootstrap, env.topics["alerts"])[-1].offset + 1
        wait_until(lambda: fwd.committed("steady", env.topics["alerts"]) == after_last,
                   what="its alerts read and passed")
    notices = _notices(steady)
    names = Counter(str(n["labels"]["alertname"]) for n in notices)  # type: ignore[index]
    assert names["ShadowgateRollbackCompleted"] == 1 and names["ShadowgateModelRollbackFailed"] == 1
    assert names["ShadowgatePageOnCall"] == 0 and names["ShadowgateRollbackProcedure"] == 0  # superseded
    assert fwd.metric("shadowgate_alerts_superseded_total") == 2
    triggered = [n for n in notices if n["labels"]["alertname"] == "ShadowgateRollbackTriggered"]  # type: ignore[index]
    assert {str(n["model"]) for n in triggered} == {fraud, risk}
    for model in (fraud, risk):  # each trigger ends resolved: the consumer handled it
        assert [n["status"] for n in triggered if n["model"] == model][-1] == "resolved"
    wait_until(lambda: bool(alertmanager.alerts(model=risk, alertname="ShadowgateModelRollbackFailed")),
               what="the P0 in Alertmanager")
    (p0,) = alertmanager.alerts(model=risk, alertname="ShadowgateModelRollbackFailed")
    assert p0["labels"]["severity"] == "critical" and p0["labels"]["from_version"] == "1.0.0"
    assert p0["annotations"]["summary"].startswith(f"P0 MODEL_ROLLBACK_FAILED: {risk} 1.0.0 -> none")
    (done,) = alertmanager.alerts(model=fraud, alertname="ShadowgateRollbackCompleted")
    assert (done["labels"]["from_version"], done["labels"]["to_version"]) == ("2.0.0", "1.0.0")
    assert alertmanager.alerts(model=fraud, alertname="ShadowgateRollbackTriggered") == []
    (waiting,) = [n for n in notices if n["labels"]["alertname"] == "ShadowgateApprovalWaiting"]  # type: ignore[index]
    assert (waiting["model"], waiting["labels"]["version"], waiting["labels"]["stage"]) == (  # type: ignore[index]
        canary, "2.0.0", "STAGING")
    assert "ALEX (GID-08) production approval required" in str(waiting["annotations"]["description"])  # type: ignore[index]
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="approval_waiting", model=canary) == 1
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="rollback_failed", model=risk) == 1
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="rollback_triggered", model=fraud) == 0


def test_open_conditions_are_re_posted_to_alertmanager_and_rebuilt_after_a_restart(
        env: Env, dlq: str, alertmanager: AlertmanagerServer, tmp_path: Path, unique: str,
        made: list[Forwarder]) -> None:
    model = f"gate-{unique}"
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[
        {"name": "am", "type": "alertmanager", "url": alertmanager.url, "resend_s": 1}])
    made.append(fwd)
    fwd.start()
    send_event(env, "gates", blocked(model, "2.0.0", ts=now_utc()))

    def ends_at() -> str:
        found = alertmanager.alerts(model=model, alertname="ShadowgateGateBlocked")
        return str(found[0]["endsAt"]) if found else ""

    wait_until(lambda: ends_at() != "", what="the gate in Alertmanager")
    first = ends_at()
    wait_until(lambda: ends_at() > first, what="a re-post extending endsAt (resend_s 1, endsAt = now + 4 s)")
    assert fwd.stop() == 0
    stopped = ends_at()
    fwd.start()  # nothing new to deliver: the open condition comes from the start-up replay
    wait_until(lambda: ends_at() > stopped, what="the restarted forwarder re-posting the condition it rebuilt")
    assert fwd.metric("shadowgate_alerts_conditions_open", kind="gate_blocked", model=model) == 1
    assert fwd.metric("shadowgate_alerts_received_total", model=model, kind="gate_blocked", severity="warning") == 0
    assert fwd.metric("shadowgate_alerts_delivered_total", receiver="am") == 0  # the replay delivers nothing again



def test_a_restart_after_transactional_writes_to_the_audit_log_becomes_ready(
        env: Env, dlq: str, tmp_path: Path, unique: str, made: list[Forwarder],
        receivers: Callable[[str], HttpReceiver]) -> None:
    """The governance consumer writes the audit log in transactions, so the log ends with a commit marker that is
    never a record: a forwarder (re)started after such a write once stayed unready for good, its start-up replay
    waiting for an offset no record has."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": env.bootstrap, "transactional.id": f"t-{unique}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(env.topics["lifecycle"], b"not an audit entry", b"k")
    producer.commit_transaction(30)
    fwd = Forwarder(env, tmp_path, f"t{unique}", dlq, receivers=[_hook("hook", receivers("ok"))])
    made.append(fwd)
    fwd.start()  # waits for /readyz 200
    assert fwd.get("/readyz")[0] == 200
