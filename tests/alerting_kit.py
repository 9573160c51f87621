"""Servers for the alert-delivery tests: a real Alertmanager, and local HTTP receivers that fail on demand.

The Alertmanager is Debian's ``prometheus-alertmanager`` (or ``SHADOWGATE_ALERTMANAGER_BIN``), started on a
free port with a temporary storage directory and a minimal configuration whose one receiver is a local
:class:`HttpReceiver`, so a test sees what Alertmanager itself notifies (firing and resolved). With
``SHADOWGATE_REQUIRE_INFRA=1`` (CI) a missing or failing binary fails the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.infra import require_infra

__all__ = ["AlertmanagerServer", "HttpReceiver", "Request", "free_port", "start_alertmanager"]

#: Answers a receiver can give: ``ok`` (200), ``500``, ``400``, ``429``, ``302``, ``garbage`` (not HTTP),
#: ``timeout`` (never answers; closes when told to recover or after a minute).
MODES = ("ok", "500", "400", "429", "302", "garbage", "timeout")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Request:
    """One request a receiver got, and how it answered (``ok`` means a 2xx was sent)."""

    path: str
    headers: dict[str, str]
    body: bytes
    answer: str

    def json(self) -> Any:
        return orjson.loads(self.body)


class HttpReceiver:
    """A local HTTP receiver whose answer is :attr:`mode` (or what :attr:`rule` says for a body)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.rule: Callable[[bytes], str | None] = lambda body: None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = receiver.rule(body) or receiver.mode
                receiver._record(Request(self.path, dict(self.headers.items()), body, answer))
                if answer == "timeout":
                    receiver._release.wait(60)
                    self.close_connection = True
                    return
                if answer == "garbage":
                    self.wfile.write(b"SSH-2.0-OpenSSH_9.2 not an HTTP answer\r\n\r\n")
                    self.close_connection = True
                    return
                status = {"ok": 200, "500": 500, "400": 400, "429": 429, "302": 302}[answer]
                reply = b'{"status":"success"}' if status == 200 else b'{"error":"' + answer.encode() + b'"}'
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0")
                if status == 302:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="test-receiver", daemon=True)
        self._thread.start()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode
        if mode != "timeout":
            self._release.set()  # requests held by a timeout give up (without answering)
            self._release = threading.Event()

    def seen(self, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if path is None or r.path == path]

    def answered(self, answer: str, path: str | None = None) -> list[Request]:
        return [r for r in self.seen(path) if r.answer == answer]

    def delivered(self, path: str | None = None) -> list[Request]:
        """The requests answered 2xx: what the sender counts as delivered."""
        return self.answered("ok", path)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AlertmanagerServer:
    """A running Alertmanager and the receiver its notifications go to."""

    url: str
    notifications: HttpReceiver
    process: subprocess.Popen[bytes]
    log: Path

    def alerts(self, **labels: str) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (active ones) whose labels match ``labels``."""
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as response:  # noqa: S310
            return list(orjson.loads(response.read()))

    def notified(self, status: str, **labels: str) -> list[dict[str, Any]]:
        """Alerts Alertmanager sent to its webhook with ``status`` (firing / resolved) and ``labels``."""
        out = []
        for request in self.notifications.seen():
            for alert in request.json()["alerts"]:
                if alert["status"] == status and all(alert["labels"].get(k) == v for k, v in labels.items()):
                    out.append(alert)
        return out


def _binary() -> str | None:
    return os.environ.get("SHADOWGATE_ALERTMANAGER_BIN") or shutil.which("prometheus-alertmanager") or shutil.which(
        "alertmanager")


def _missing(message: str) -> None:
    if require_infra():
        pytest.fail(message + " [SHADOWGATE_REQUIRE_INFRA=1: a missing server is a failure]")
    pytest.skip(message)


def start_alertmanager(root: Path) -> Iterator[AlertmanagerServer]:
    """Start Alertmanager under ``root``; yields it running, stops it after."""
    binary = _binary()
    if binary is None:
        _missing("no Alertmanager: apt-get install prometheus-alertmanager, or set SHADOWGATE_ALERTMANAGER_BIN")
        return
    notifications = HttpReceiver()
    config = {
        "route": {"receiver": "sink", "group_by": ["alertname", "model"], "group_wait": "0s",
                  "group_interval": "1s", "repeat_interval": "4h"},
        "receivers": [{"name": "sink", "webhook_configs": [{"url": f"{notifications.url}/", "send_resolved": True}]}],
    }
    (root / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = root / "alertmanager.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - the system's Alertmanager
            [binary, f"--config.file={root / 'alertmanager.yml'}", f"--storage.path={root / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    server = AlertmanagerServer(f"http://127.0.0.1:{port}", notifications, process, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(  # noqa: S310
                    f"{server.url}/-/ready", timeout=1) as response:
                if response.status == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                _missing(f"Alertmanager ({binary}) did not start: {log.read_text()[-2000:]}")
                return
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()
        notifications.close()
