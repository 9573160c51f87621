"""The forwarder's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (alive), ``/readyz`` (ready).

``/healthz`` answers 503 when the reader stopped looping or a lane thread died (restart the process);
``/readyz`` answers 503 until the start-up replay is done, and while Kafka does not answer. A receiver
that is down does not make the forwarder unready: its lane retries, which the metrics show.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from governance.errors import ConfigError

__all__ = ["HealthServer"]


class HealthServer:
    """Serves the three endpoints on ``host:port`` from a daemon thread."""

    def __init__(self, port: int, registry: CollectorRegistry, health: Callable[[], tuple[bool, str]],
                 ready: Callable[[], bool], host: str = "0.0.0.0") -> None:  # noqa: S104 - a container's port
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    alive, why = health()
                    self._send(200 if alive else 503, why.encode() + b"\n")
                elif path == "/readyz":
                    ok = ready()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready: replaying or Kafka silent\n")
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                return

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"the alert forwarder cannot listen on port {port} ({exc.strerror}); pick another with "
                              "--port or SHADOWGATE_METRICS_PORT") from None
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, name="alerts-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
