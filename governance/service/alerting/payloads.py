"""What each receiver is sent for a notice: pure functions from a :class:`Notice` to request bodies.

=============  ==================================================================================================
receiver       body
=============  ==================================================================================================
alertmanager   ``POST /api/v2/alerts`` with ``[postableAlert]`` (``api/v2/openapi.yaml``): the notice's labels,
               annotations (summary, description, runbook, runbook_url, source, signed_by, notice_id,
               dedup_key), ``startsAt``; ``endsAt`` is the resolve time (resolved), ``ts + hold`` (one-off
               event), or ``now + horizon`` for an open condition, which the forwarder re-posts before it
               passes, as Prometheus does (a forwarder that stops lets its conditions expire)
webhook        ``{"version": "shadowgate.notice/v1", "receiver", "status", "groupKey": dedup_key, "notice_id",
               "notice": {...}, "record": <the ML-DSA-signed record the notice came from>}``, signed with an
               HMAC-SHA256 (:func:`webhook_signature`); ``Idempotency-Key: <notice_id>``
slack          an incoming-webhook message ``{"text": <fallback line>, "blocks": [...]}`` (mrkdwn escaped)
pagerduty      Events API v2: ``{"routing_key", "event_action": "trigger" | "resolve", "dedup_key",
               "payload": {"summary", "source", "severity", "timestamp", "component", "group", "class",
               "custom_details"}, "links"}``; a resolve carries only the key
=============  ==================================================================================================

The webhook signature: ``X-Shadowgate-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` with
``X-Shadowgate-Timestamp: <unix seconds>``, so a receiver can refuse a replayed body; the body also carries
the original signed record, which anyone with the trust store can verify (``record`` is verbatim).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

import orjson

from governance.service.alerting.notices import Notice

__all__ = [
    "WEBHOOK_VERSION",
    "alertmanager_alert",
    "alertmanager_body",
    "pagerduty_body",
    "pagerduty_dedup_key",
    "runbook_url",
    "slack_body",
    "webhook_body",
    "webhook_signature",
]

WEBHOOK_VERSION = "shadowgate.notice/v1"
_PD_SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
_EMOJI = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def runbook_url(template: str | None, slug: str) -> str | None:
    """``template`` with ``{runbook}`` replaced by ``slug`` (None: no URL configured)."""
    return None if template is None else template.replace("{runbook}", slug)


def alertmanager_alert(notice: Notice, now: datetime, horizon: timedelta, url_template: str | None) -> dict[str, Any]:
    """One ``postableAlert``; see the module table for ``endsAt``."""
    if notice.status == "resolved":
        ends_at = min(notice.ends_at or now, now)
    elif notice.ends_at is not None:
        ends_at = notice.ends_at
    else:
        ends_at = now + horizon
    annotations = {**notice.annotations, "notice_id": notice.notice_id, "dedup_key": notice.dedup_key}
    url = runbook_url(url_template, notice.runbook)
    alert: dict[str, Any] = {
        "labels": dict(notice.labels),
        "annotations": annotations,
        "startsAt": _iso(min(notice.starts_at, ends_at)),
        "endsAt": _iso(ends_at),
    }
    if url is not None:
        annotations["runbook_url"] = url
        if url.startswith(("http://", "https://")):
            alert["generatorURL"] = url
    return alert


def alertmanager_body(alerts: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(alerts)


def webhook_body(notice: Notice, receiver: str, url_template: str | None) -> bytes:
    """The generic webhook's JSON body (see the module table)."""
    doc = notice.to_json(with_record=False)
    url = runbook_url(url_template, notice.runbook)
    if url is not None:
        doc["runbook_url"] = url
    return orjson.dumps({
        "version": WEBHOOK_VERSION,
        "receiver": receiver,
        "status": notice.status,
        "groupKey": notice.dedup_key,
        "notice_id": notice.notice_id,
        "notice": doc,
        "record": dict(notice.record),
    })


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"v1={mac}"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _versions_line(labels: dict[str, str]) -> str:
    parts = []
    for key, name in (("production_version", "production"), ("candidate_version", "candidate"),
                      ("from_version", "from"), ("to_version", "to"), ("version", "version")):
        if key in labels:
            parts.append(f"{name} {labels[key]}")
    if "role" in labels:
        parts.append(f"({labels['role']})")
    return " ".join(parts) or "-"


def slack_body(notice: Notice, url_template: str | None) -> bytes:
    """A Slack incoming-webhook message: a fallback ``text`` and ``blocks`` (every event string escaped)."""
    resolved = notice.status == "resolved"
    emoji = ":white_check_mark:" if resolved else _EMOJI[notice.severity]
    state = "RESOLVED" if resolved else notice.severity.upper()
    summary = _slack_escape(notice.summary)
    labels = dict(notice.labels)
    fields = [
        f"*Model*\n{_slack_escape(notice.model)}",
        f"*Versions*\n{_slack_escape(_versions_line(labels))}",
        f"*Alert*\n{_slack_escape(notice.alertname)} ({notice.kind})",
        f"*Since*\n{_iso(notice.starts_at)}" + (f"\n*Resolved* {_iso(notice.ends_at)}"
                                                  if resolved and notice.ends_at else ""),
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{emoji} *{state}*: {summary}"[:3000]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": text[:2000]} for text in fields]},
    ]
    description = notice.annotations.get("description", "")
    if description and description != notice.summary:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(description)[:3000]}})
    url = runbook_url(url_template, notice.runbook)
    runbook = f"<{url}|{notice.runbook}>" if url else notice.runbook
    context = (f"runbook {runbook} · signed by {_slack_escape(notice.key_id)} · "
               f"{_slack_escape(notice.origin.position)} · notice {notice.notice_id}")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    text = f"{emoji} [{state}] {notice.alertname} {notice.model}: {summary}"
    return orjson.dumps({"text": text[:3000], "blocks": blocks})


def pagerduty_dedup_key(notice: Notice) -> str:
    """The notice's ``dedup_key``, hashed when longer than PagerDuty's 255 characters."""
    key = notice.dedup_key
    return key if len(key) <= 255 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def pagerduty_body(notice: Notice, routing_key: str, url_template: str | None) -> bytes:
    """A PagerDuty Events API v2 event: trigger for a firing notice, resolve for a resolved one."""
    key = pagerduty_dedup_key(notice)
    if notice.status == "resolved":
        return orjson.dumps({"routing_key": routing_key, "event_action": "resolve", "dedup_key": key})
    details = {
        "labels": dict(notice.labels),
        "annotations": dict(notice.annotations),
        "notice_id": notice.notice_id,
        "dedup_key": notice.dedup_key,
    }
    event: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": key,
        "client": "shadowgate",
        "payload": {
            "summary": notice.summary[:1024],
            "source": f"shadowgate/{notice.model}",
            "severity": _PD_SEVERITY[notice.severity],
            "timestamp": _iso(notice.starts_at),
            "component": notice.model,
            "group": notice.kind,
            "class": notice.alertname,
            "custom_details": details,
        },
    }
    url = runbook_url(url_template, notice.runbook)
    if url is not None and url.startswith(("http://", "https://")):
        event["links"] = [{"href": url, "text": f"runbook {notice.runbook}"}]
    return orjson.dumps(event)
