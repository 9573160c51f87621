"""Serving Prometheus metrics for the long-running commands (worker, governance consumer)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

from governance.errors import ConfigError

__all__ = ["serve_metrics"]


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, what: str = "shadowgate") -> None:
    """Serve ``registry`` on ``:port/metrics`` (0 = off); a taken port is a one-line ConfigError."""
    if not port:
        return
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"{what}: cannot serve metrics on port {port} ({exc.strerror}); "
            "pick another with --metrics-port or SHADOWGATE_METRICS_PORT, or 0 to turn them off"
        ) from None
