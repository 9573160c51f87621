"""Serving Prometheus metrics (and probes) for the long-running commands (worker, governance consumer)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, start_http_server

from governance.errors import ConfigError

__all__ = ["Probe", "serve_metrics"]

#: A probe answers (ok, detail): HTTP 200 or 503 with the detail as a JSON body.
Probe = Callable[[], tuple[bool, dict[str, Any]]]


def serve_metrics(
    port: int, registry: CollectorRegistry = REGISTRY, what: str = "shadowgate",
    probes: Mapping[str, Probe] | None = None,
) -> None:  # fmt: skip
    """Serve ``registry`` on ``:port/metrics`` (0 = off), and each probe on its path (e.g. ``/readyz``);
    a taken port is a one-line ConfigError."""
    if not port:
        return
    try:
        if probes:
            _serve(port, registry, probes)
        else:
            start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot serve metrics on port {port} ({exc.strerror}); "
            "pick another with --metrics-port or SHADOWGATE_METRICS_PORT, or 0 to turn them off"
        ) from None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scrape never holds the process at exit


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Probes come every few seconds: no access log."""


def _serve(port: int, registry: CollectorRegistry, probes: Mapping[str, Probe]) -> None:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        ok, detail = probe()
        body = orjson.dumps({"ok": ok, **detail})
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])  # fmt: skip
        return [body]

    server = make_server("", port, app, _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
