"""Delivering one notice to one receiver over HTTP, and what the answer means.

Every attempt ends in one :class:`Attempt` whose ``result`` decides what happens next (the rule):

===============  =========================================================  ===================================
result           answer                                                     then
===============  =========================================================  ===================================
``ok``           HTTP 2xx                                                   delivered
``http_5xx``     HTTP 5xx                                                   retried, backoff
``http_408_429`` HTTP 408 or 429 (``Retry-After`` seconds honoured)         retried, backoff
``timeout``      no answer within ``timeout_s`` (per socket operation)      retried, backoff
``connection``   refused, reset, closed before answering, name not found    retried, backoff
``garbage``      an answer that is not HTTP                                 retried; after ``max_garbage`` in a
                                                                            row, dead-lettered (a receiver that
                                                                            never speaks HTTP is misconfigured)
``http_4xx``     any other HTTP 4xx                                         refused: dead-lettered at once
``http_other``   HTTP 1xx or 3xx (a POST is never redirected)               refused: dead-lettered at once
===============  =========================================================  ===================================

Backoff (:func:`backoff_s`) doubles from ``initial_backoff_s`` up to ``max_backoff_s`` with equal jitter
(half the step fixed, half random), never below a ``Retry-After`` (itself capped by ``max_backoff_s``).
Transient failures are retried without a limit: a receiver that is down holds back only its own lane
(see :mod:`governance.service.alerting.forwarder`), and nothing is skipped.

Channels (one per configured receiver) build the request of a notice (:mod:`~.payloads`) and post it.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol
from urllib.parse import urlsplit

from governance.service.alerting.config import (
    AlertmanagerReceiver,
    ForwarderConfig,
    Match,
    PagerDutyReceiver,
    RetryConfig,
    SlackReceiver,
    WebhookReceiver,
)
from governance.service.alerting.notices import Notice
from governance.service.alerting.payloads import (
    alertmanager_alert,
    alertmanager_body,
    pagerduty_body,
    slack_body,
    webhook_body,
    webhook_signature,
)

__all__ = [
    "RESULTS",
    "AlertmanagerChannel",
    "Attempt",
    "Channel",
    "HttpChannel",
    "PagerDutyChannel",
    "Result",
    "SlackChannel",
    "WebhookChannel",
    "backoff_s",
    "channels_for",
    "post",
]

Result = Literal["ok", "http_5xx", "http_408_429", "timeout", "connection", "garbage", "http_4xx", "http_other"]
RESULTS: tuple[Result, ...] = ("ok", "http_5xx", "http_408_429", "timeout", "connection", "garbage", "http_4xx",
                               "http_other")
_REFUSED: frozenset[Result] = frozenset({"http_4xx", "http_other"})
_MAX_BODY = 65_536
_USER_AGENT = "shadowgate-alert-forwarder/1"


@dataclass(frozen=True)
class Attempt:
    """The outcome of one request; ``detail`` is one line for logs and dead letters."""

    result: Result
    detail: str
    status: int | None = None
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.result == "ok"

    @property
    def refused(self) -> bool:
        return self.result in _REFUSED


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        return None  # an HTTP date: the backoff decides


def _classify(status: int, body: bytes, retry_after: str | None) -> Attempt:
    excerpt = " ".join(body[:300].decode("utf-8", "replace").split())
    detail = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if 200 <= status < 300:
        return Attempt("ok", detail, status)
    if status >= 500:
        return Attempt("http_5xx", detail, status, _retry_after(retry_after))
    if status in (408, 429):
        return Attempt("http_408_429", detail, status, _retry_after(retry_after))
    if 400 <= status < 500:
        return Attempt("http_4xx", detail, status)
    return Attempt("http_other", detail, status)


def post(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Attempt:
    """POST ``body`` to ``url`` once; never raises (see the module table for the classification)."""
    parts = urlsplit(url)
    connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = connection_type(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        connection.request("POST", path, body=body, headers={
            "Content-Type": "application/json", "User-Agent": _USER_AGENT, **headers})
        response = connection.getresponse()
        data = response.read(_MAX_BODY)
        return _classify(response.status, data, response.getheader("Retry-After"))
    except TimeoutError:
        return Attempt("timeout", f"no answer within {timeout_s:g} s")
    except http.client.RemoteDisconnected:
        return Attempt("connection", "the receiver closed the connection without answering")
    except http.client.HTTPException as exc:
        return Attempt("garbage", f"not an HTTP answer ({type(exc).__name__}: {str(exc)[:200]})")
    except OSError as exc:
        return Attempt("connection", f"cannot reach {parts.hostname}:{parts.port or ''} ({exc})")
    finally:
        connection.close()


def backoff_s(attempt: int, retry: RetryConfig, jitter: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based); ``jitter`` in [0, 1)."""
    step = min(retry.max_backoff_s, retry.initial_backoff_s * 2.0 ** max(0, attempt - 1))
    delay = step / 2 + jitter * step / 2
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, retry.max_backoff_s))
    return delay


class Channel(Protocol):
    """One receiver: which notices it takes and how one is delivered."""

    name: str
    type: str

    def wants(self, notice: Notice) -> bool: ...

    def deliver(self, notice: Notice, now: datetime) -> Attempt: ...


class HttpChannel:
    """A receiver reached by one HTTP POST per notice."""

    type = "http"

    def __init__(self, name: str, url: str, match: Match, timeout_s: float, runbook_url: str | None) -> None:
        self.name, self.url, self.match = name, url, match
        self.timeout_s, self.runbook_url = timeout_s, runbook_url

    def wants(self, notice: Notice) -> bool:
        return self.match.wants(notice)

    def request(self, notice: Notice, now: datetime) -> tuple[bytes, dict[str, str]]:
        raise NotImplementedError

    def deliver(self, notice: Notice, now: datetime) -> Attempt:
        body, headers = self.request(notice, now)
        return post(self.url, body, headers, self.timeout_s)


class AlertmanagerChannel(HttpChannel):
    """Alertmanager's API v2; open conditions are re-posted every ``resend_s`` (:meth:`refresh`)."""

    type = "alertmanager"

    def __init__(self, receiver: AlertmanagerReceiver, timeout_s: float, runbook_url: str | None) -> None:
        super().__init__(receiver.name, receiver.url.rstrip("/") + "/api/v2/alerts", receiver.match, timeout_s,
                         runbook_url)
        self.resend_s = receiver.resend_s
        self.horizon = timedelta(seconds=4 * receiver.resend_s)

    def request(self, notice: Notice, now: datetime) -> tuple[bytes, dict[str, str]]:
        return alertmanager_body([alertmanager_alert(notice, now, self.horizon, self.runbook_url)]), {}

    def refresh(self, notices: list[Notice], now: datetime) -> Attempt:
        """Re-post ``notices`` (open conditions) so Alertmanager keeps them firing."""
        alerts = [alertmanager_alert(n, now, self.horizon, self.runbook_url) for n in notices if self.wants(n)]
        if not alerts:
            return Attempt("ok", "nothing open")
        return post(self.url, alertmanager_body(alerts), {}, self.timeout_s)


class WebhookChannel(HttpChannel):
    """The generic JSON webhook, its body signed with HMAC-SHA256 (see :mod:`~.payloads`)."""

    type = "webhook"

    def __init__(self, receiver: WebhookReceiver, secret: str, timeout_s: float, runbook_url: str | None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(receiver.name, receiver.url, receiver.match, timeout_s, runbook_url)
        self._secret = secret.encode()
        self._clock = clock

    def request(self, notice: Notice, now: datetime) -> tuple[bytes, dict[str, str]]:
        body = webhook_body(notice, self.name, self.runbook_url)
        stamp = int(self._clock())
        return body, {
            "X-Shadowgate-Timestamp": str(stamp),
            "X-Shadowgate-Signature": webhook_signature(self._secret, stamp, body),
            "Idempotency-Key": notice.notice_id,
        }


class SlackChannel(HttpChannel):
    type = "slack"

    def __init__(self, receiver: SlackReceiver, url: str, timeout_s: float, runbook_url: str | None) -> None:
        super().__init__(receiver.name, url, receiver.match, timeout_s, runbook_url)

    def request(self, notice: Notice, now: datetime) -> tuple[bytes, dict[str, str]]:
        return slack_body(notice, self.runbook_url), {}


class PagerDutyChannel(HttpChannel):
    type = "pagerduty"

    def __init__(self, receiver: PagerDutyReceiver, routing_key: str, timeout_s: float,
                 runbook_url: str | None) -> None:
        super().__init__(receiver.name, receiver.url, receiver.match, timeout_s, runbook_url)
        self._routing_key = routing_key

    def request(self, notice: Notice, now: datetime) -> tuple[bytes, dict[str, str]]:
        return pagerduty_body(notice, self._routing_key, self.runbook_url), {}


def channels_for(config: ForwarderConfig) -> list[HttpChannel]:
    """One channel per configured receiver, in the file's order."""
    out: list[HttpChannel] = []
    timeout, url = config.retry.timeout_s, config.runbook_url
    for receiver in config.receivers:
        if isinstance(receiver, AlertmanagerReceiver):
            out.append(AlertmanagerChannel(receiver, timeout, url))
        elif isinstance(receiver, WebhookReceiver):
            out.append(WebhookChannel(receiver, config.secret(receiver.name), timeout, url))
        elif isinstance(receiver, SlackReceiver):
            out.append(SlackChannel(receiver, config.secret(receiver.name), timeout, url))
        else:
            out.append(PagerDutyChannel(receiver, config.secret(receiver.name), timeout, url))
    return out
