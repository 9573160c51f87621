"""HTTP delivery: each kind of answer of a real local server is classified by the documented rule, backoff is
bounded, and Alertmanager accepts (and refuses) what the forwarder posts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from governance.service.alerting.config import AlertmanagerReceiver, RetryConfig
from governance.service.alerting.delivery import AlertmanagerChannel, backoff_s, post
from governance.service.alerting.tracker import Tracker
from tests.alerting_kit import AlertmanagerServer, HttpReceiver, free_port
from tests.alerting_samples import alert, blocked, ready, verified
from tests.governance_kit import wait_until


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


@pytest.mark.parametrize(("mode", "result", "status", "refused"), [
    ("ok", "ok", 200, False),
    ("500", "http_5xx", 500, False),
    ("429", "http_408_429", 429, False),
    ("400", "http_4xx", 400, True),
    ("302", "http_other", 302, True),
    ("garbage", "garbage", None, False),
])
def test_each_answer_is_classified(receiver: HttpReceiver, mode: str, result: str, status: int | None,
                                   refused: bool) -> None:
    receiver.set_mode(mode)
    attempt = post(f"{receiver.url}/hook?x=1", b'{"a": 1}', {"X-Test": "1"}, timeout_s=5)
    assert (attempt.result, attempt.status, attempt.refused) == (result, status, refused), attempt.detail
    assert attempt.delivered is (mode == "ok")
    (request,) = receiver.seen()
    assert (request.path, request.body, request.headers["X-Test"]) == ("/hook?x=1", b'{"a": 1}', "1")
    assert request.headers["Content-Type"] == "application/json"
    if mode == "429":
        assert attempt.retry_after_s == 0.0
    if mode == "400":
        assert attempt.detail == 'HTTP 400: {"error":"400"}'


def test_a_receiver_that_never_answers_times_out(receiver: HttpReceiver) -> None:
    receiver.set_mode("timeout")
    attempt = post(receiver.url, b"{}", {}, timeout_s=0.3)
    assert (attempt.result, attempt.detail) == ("timeout", "no answer within 0.3 s")
    receiver.set_mode("ok")


def test_nothing_listening_is_a_connection_failure() -> None:
    attempt = post(f"http://127.0.0.1:{free_port()}/", b"{}", {}, timeout_s=2)
    assert attempt.result == "connection" and not attempt.refused


def test_backoff_doubles_with_jitter_up_to_the_cap_and_respects_retry_after() -> None:
    retry = RetryConfig(initial_backoff_s=0.5, max_backoff_s=4.0)
    lows = [backoff_s(n, retry, 0.0) for n in range(1, 8)]
    highs = [backoff_s(n, retry, 0.999999) for n in range(1, 8)]
    assert lows == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert highs == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0], rel=1e-5)
    assert backoff_s(1, retry, 0.0, retry_after_s=3.0) == 3.0
    assert backoff_s(1, retry, 0.0, retry_after_s=600.0) == 4.0  # a Retry-After never exceeds the cap


def test_alertmanager_accepts_the_alert_resolves_it_and_refuses_a_bad_one(alertmanager: AlertmanagerServer) -> None:
    model = f"delivery-{datetime.now(UTC).strftime('%H%M%S%f')}"
    t = Tracker()
    now = datetime.now(UTC)
    (fired,) = t.apply(verified(blocked(model, ts=now), "gates", 0)).notices
    (resolved,) = t.apply(verified(ready(model, ts=now + timedelta(seconds=1)), "gates", 1)).notices
    (one_off,) = t.apply(verified(alert(model, ts=now))).notices
    channel = AlertmanagerChannel(AlertmanagerReceiver(name="am", type="alertmanager", url=alertmanager.url),
                                  timeout_s=5, runbook_url="https://runbooks.example.com/{runbook}.md")
    assert channel.deliver(fired, datetime.now(UTC)).delivered
    assert channel.deliver(one_off, datetime.now(UTC)).delivered
    (shown,) = alertmanager.alerts(model=model, alertname="ShadowgateGateBlocked")
    assert shown["labels"] == dict(fired.labels)
    assert shown["annotations"]["runbook_url"] == "https://runbooks.example.com/gate-blocked.md"
    assert alertmanager.alerts(model=model, alertname="ShadowgateReviewScoreShift")
    assert channel.refresh([fired], datetime.now(UTC)).delivered
    assert channel.deliver(resolved, datetime.now(UTC)).delivered  # the resolve is dated 1 s ahead: clamped to now
    assert alertmanager.alerts(model=model, alertname="ShadowgateGateBlocked") == []
    wait_until(lambda: bool(alertmanager.notified("resolved", model=model, alertname="ShadowgateGateBlocked")),
               what="Alertmanager's resolved notification")
    bad = post(channel.url, orjson.dumps([{"labels": {}}]), {}, 5)
    assert bad.refused and bad.status == 400
