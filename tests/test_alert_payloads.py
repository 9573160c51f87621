"""What each receiver is sent (pure): Alertmanager's postableAlert, the signed webhook, Slack, PagerDuty."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import timedelta

import orjson
import pytest

from governance.service.alerting.notices import Notice
from governance.service.alerting.payloads import (
    alertmanager_alert,
    pagerduty_body,
    pagerduty_dedup_key,
    slack_body,
    webhook_body,
    webhook_signature,
)
from governance.service.alerting.tracker import Tracker
from tests.alerting_samples import alert, at, blocked, ready, verified

URL = "https://runbooks.example.com/{runbook}.md"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _gate_notices() -> tuple[Notice, Notice]:
    t = Tracker()
    (fired,) = t.apply(verified(blocked(ts=at(0)), "gates", 0)).notices
    (resolved,) = t.apply(verified(ready(ts=at(120)), "gates", 1)).notices
    return fired, resolved


def _one_off(summary: str = "KL 2.04 > 0.25: manual review") -> Notice:
    (notice,) = Tracker(hold_s=600).apply(verified(alert(summary=summary, ts=at(0)))).notices
    return notice


def test_alertmanager_labels_route_and_the_times_say_firing_or_resolved() -> None:
    fired, resolved = _gate_notices()
    now, horizon = at(30), timedelta(minutes=4)
    firing = alertmanager_alert(fired, now, horizon, URL)
    assert all(LABEL_NAME.match(k) and isinstance(v, str) and v for k, v in firing["labels"].items())
    assert {k: firing["labels"][k] for k in ("alertname", "model", "severity", "kind", "verdict")} == {
        "alertname": "ShadowgateGateBlocked", "model": "fraud", "severity": "warning", "kind": "gate_blocked",
        "verdict": "BLOCKED"}
    assert (firing["startsAt"], firing["endsAt"]) == ("2026-11-02T12:00:00Z", "2026-11-02T12:04:30Z")  # now + horizon
    assert firing["annotations"]["runbook_url"] == "https://runbooks.example.com/gate-blocked.md"
    assert firing["generatorURL"] == firing["annotations"]["runbook_url"]
    assert firing["annotations"]["notice_id"] == fired.notice_id
    done = alertmanager_alert(resolved, at(500), horizon, None)
    assert done["labels"] == firing["labels"]  # the same alert, by identity
    assert done["endsAt"] == "2026-11-02T12:02:00Z" and "generatorURL" not in done
    early = alertmanager_alert(resolved, at(60), horizon, None)  # a resolve dated after now is clamped to now
    assert early["endsAt"] == "2026-11-02T12:01:00Z"


def test_a_one_off_notice_ends_after_its_hold() -> None:
    body = alertmanager_alert(_one_off(), at(5), timedelta(minutes=4), "docs/runbooks/{runbook}.md")
    assert body["endsAt"] == "2026-11-02T12:10:00Z"
    assert body["annotations"]["runbook_url"] == "docs/runbooks/review-score-shift.md" and "generatorURL" not in body


def test_the_webhook_body_carries_the_signed_record_and_an_hmac_over_timestamp_and_body() -> None:
    notice = _one_off()
    body = webhook_body(notice, "ops", URL)
    doc = orjson.loads(body)
    assert (doc["version"], doc["receiver"], doc["status"]) == ("shadowgate.notice/v1", "ops", "firing")
    assert doc["groupKey"] == notice.dedup_key and doc["notice_id"] == notice.notice_id
    assert doc["record"] == dict(notice.record)
    assert doc["notice"]["runbook_url"] == "https://runbooks.example.com/review-score-shift.md"
    signature = webhook_signature(b"s3cret", 1_700_000_000, body)
    oracle = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"v1={oracle}"
    assert webhook_signature(b"s3cret", 1_700_000_000, body.replace(b"fraud", b"fraue")) != signature
    assert webhook_signature(b"s3cret", 1_700_000_001, body) != signature


def test_slack_gets_text_and_blocks_with_every_event_string_escaped() -> None:
    notice = _one_off(summary="score <shift> & <!channel> ping")
    doc = orjson.loads(slack_body(notice, URL))
    assert "<!channel>" not in orjson.dumps(doc).decode()
    assert "score &lt;shift&gt; &amp; &lt;!channel&gt; ping" in doc["text"]
    assert doc["text"].startswith(":warning: [WARNING] ShadowgateReviewScoreShift fraud")
    assert doc["blocks"][0]["type"] == "section" and doc["blocks"][-1]["type"] == "context"
    assert "<https://runbooks.example.com/review-score-shift.md|review-score-shift>" in (
        doc["blocks"][-1]["elements"][0]["text"])
    assert all(len(orjson.dumps(block)) < 3500 for block in doc["blocks"])
    _, resolved = _gate_notices()
    assert orjson.loads(slack_body(resolved, None))["text"].startswith(":white_check_mark: [RESOLVED]")


def test_pagerduty_triggers_and_resolves_one_incident_per_dedup_key() -> None:
    fired, resolved = _gate_notices()
    trigger = orjson.loads(pagerduty_body(fired, "R0UTING", URL))
    assert (trigger["routing_key"], trigger["event_action"], trigger["dedup_key"]) == (
        "R0UTING", "trigger", fired.dedup_key)
    payload = trigger["payload"]
    assert (payload["severity"], payload["source"], payload["component"], payload["class"]) == (
        "warning", "shadowgate/fraud", "fraud", "ShadowgateGateBlocked")
    assert payload["summary"] == fired.summary and len(payload["summary"]) <= 1024
    assert trigger["links"] == [{"href": "https://runbooks.example.com/gate-blocked.md",
                                 "text": "runbook gate-blocked"}]
    assert orjson.loads(pagerduty_body(resolved, "R0UTING", URL)) == {
        "routing_key": "R0UTING", "event_action": "resolve", "dedup_key": fired.dedup_key}


@pytest.mark.parametrize("length", [255, 256, 600])
def test_pagerduty_dedup_keys_fit_its_255_character_limit(length: int) -> None:
    notice = _one_off()
    long = Notice(**{**notice.__dict__, "dedup_key": "k" * length})
    key = pagerduty_dedup_key(long)
    assert len(key) <= 255 and (key == "k" * length) is (length <= 255)
