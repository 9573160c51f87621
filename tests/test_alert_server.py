"""The forwarder's /metrics, /healthz and /readyz answer what the forwarder says about itself."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from governance.errors import ConfigError
from governance.service.alerting.server import HealthServer
from tests.alerting_kit import free_port


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:  # noqa: S310
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_health_readiness_and_metrics_follow_the_forwarders_state() -> None:
    registry = CollectorRegistry()
    Counter("shadowgate_alerts_delivered", "test", ["receiver"], registry=registry).labels(receiver="am").inc()
    state = {"alive": (True, "ok"), "ready": False}
    server = HealthServer(free_port(), registry, lambda: state["alive"], lambda: bool(state["ready"]),  # type: ignore[return-value]
                          host="127.0.0.1")
    server.start()
    try:
        assert _get(server.port, "/readyz")[0] == 503
        assert _get(server.port, "/healthz")[:1] == (200,)
        state["ready"] = True
        assert _get(server.port, "/readyz")[0] == 200
        state["alive"] = (False, "lane pagerduty stopped: RuntimeError()")
        assert _get(server.port, "/healthz")[0::2] == (503, "lane pagerduty stopped: RuntimeError()\n")
        status, content_type, body = _get(server.port, "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert 'shadowgate_alerts_delivered_total{receiver="am"} 1.0' in body
        assert _get(server.port, "/nothing")[0] == 404
    finally:
        server.close()


def test_a_taken_port_is_a_one_line_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match=r"cannot listen on port \d+ .*--port or SHADOWGATE_METRICS_PORT"):
            HealthServer(taken.getsockname()[1], CollectorRegistry(), lambda: (True, "ok"), lambda: True,
                         host="127.0.0.1")
