"""The status service: a read-only web page and JSON API over the worker's windows and the governance state.

``create_app(service)`` builds the aiohttp application; ``shadowgate serve`` runs it. Routes:

==========================================  =====================================================================
route                                       serves
==========================================  =====================================================================
``GET /``                                   the status page (static HTML, JS and the vendored uPlot)
``GET /report/{model}/{version}``           the evidence report of a version's ProofPack (one self-contained file)
``GET /api/models``                         every version's status row (``model status --json``) and routing
``GET /api/models/{model}/history``         ``model history --json``
``GET /api/comparisons``                    ``shadowgate windows --json`` (``?model=``), each with its ``id``
``GET /api/series``                         a comparison's metrics over time (``?id=&span=6h&step=5m``) with
                                            the thresholds that apply to it
``GET /api/thresholds``                     every policy limit the charts draw
``GET /api/alerts``                         the alert feed so far (verified and rejected) and its counts
``GET /api/alerts/stream``                  the same, pushed as Server-Sent Events (``event: alert``)
``GET /api/audit``                          verified audit entries (``?model=&limit=``) and the chain's status
``GET /api/proofpacks``                     the ProofPacks; ``/api/proofpacks/{model}/{version}``: one, verified
``GET /api/verdict/{model}/{version}``      the verdict (always HTTP 200; Argo Rollouts' web metric provider)
``GET|POST /api/gate/{model}/{version}``    the same verdict as a status code: 200 pass, 412 otherwise, 404 unknown
                                            (Flagger webhooks)
``GET /healthz``, ``/readyz``, ``/metrics``  liveness, readiness (Redis answers, feeds assigned), Prometheus
==========================================  =====================================================================

Guarantees: nothing here writes to Kafka or Redis; blocking reads run in the default executor, never on the
event loop; every response carries ``Content-Security-Policy`` (the page: scripts from this origin only; the
report: no script at all), so even a string that escaped escaping could not run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from governance.contract.stages import Stage
from governance.errors import ConfigError, CryptoError, ShadowgateError
from shadowgate.web.feeds import AlertFeed, AuditFeed
from shadowgate.web.sources import SERIES_SPANS, SERIES_STEPS, Sources, parse_duration
from shadowgate.web.views import CHARTS, thresholds

__all__ = ["STATIC", "Service", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
_T = TypeVar("_T")
SERVICE: web.AppKey[Service] = web.AppKey("service", None)
_PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"
_HEARTBEAT_S = 15.0
_SERIES_TTL_S = 10.0


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Service:
    """What the handlers share: the readers, the two feeds, the metrics registry and the clock."""

    sources: Sources
    alerts: AlertFeed
    audit: AuditFeed
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    clock: Callable[[], datetime] = _now
    _series_cache: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verdicts = Counter("shadowgate_status_verdicts", "Verdicts served, by decision", ["decision"],
                                registry=self.registry)
        for decision in ("pass", "fail", "wait"):
            self.verdicts.labels(decision)
        self.registry.register(_FeedCollector(self))

    def start(self) -> None:
        self.alerts.start()
        self.audit.start()

    def stop(self) -> None:
        self.alerts.stop()
        self.audit.stop()
        self.sources.close()


class _FeedCollector(Collector):
    """Computed at scrape time from the feeds (never counted twice)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterable[GaugeMetricFamily]:
        alerts = GaugeMetricFamily("shadowgate_status_alerts", "Alert messages read since start, by verification",
                                   labels=["status"])
        for status in ("verified", "rejected"):
            alerts.add_metric([status], self.service.alerts.counts.get(status, 0))
        yield alerts
        chain = self.service.audit.chain()
        yield GaugeMetricFamily("shadowgate_status_audit_entries", "Audit entries verified", value=chain["entries"])
        yield GaugeMetricFamily("shadowgate_status_audit_chain_ok", "1 while the audit chain read so far verifies",
                                value=1 if chain["ok"] else 0)
        yield GaugeMetricFamily("shadowgate_status_stream_clients", "Open alert streams",
                                value=self.service.alerts.subscribers)


def _json(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def _problem(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


async def _blocking(func: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, partial(func, *args))


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


def _stage(request: web.Request) -> Stage | None:
    text = request.query.get("stage")
    if text is None:
        return None
    try:
        return Stage(text.upper())
    except ValueError:
        raise ConfigError(f"stage {text!r}: use one of {', '.join(s.value for s in Stage)}") from None


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ConfigError as exc:
        response = _problem(400, str(exc))
    except CryptoError as exc:
        response = _problem(502, f"does not verify: {exc}")
    except ShadowgateError as exc:
        response = _problem(503, str(exc))
    if not response.prepared:
        csp = _REPORT_CSP if request.path.startswith("/report/") else _PAGE_CSP
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path.startswith("/api/"):
            response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    service = _service(request)
    problems = []
    if not await _blocking(service.sources.ping):
        problems.append("Redis does not answer")
    for feed in (service.alerts, service.audit):
        if not feed.assigned.is_set():
            problems.append(f"{feed.topic}: not following yet" + (f" ({feed.error})" if feed.error else ""))
    return _json({"ready": not problems, "problems": problems}, 503 if problems else 200)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(_service(request).registry)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def _models(request: web.Request) -> web.Response:
    service = _service(request)
    return _json(await _blocking(service.sources.board, service.clock(), request.query.get("model")))


async def _history(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    doc = await _blocking(_service(request).sources.history, model, request.query.get("version"))
    return _problem(404, f"model {model!r} is not registered") if doc is None else _json(doc)


async def _comparisons(request: web.Request) -> web.Response:
    return _json(await _blocking(_service(request).sources.comparisons, request.query.get("model")))


async def _series(request: web.Request) -> web.Response:
    service = _service(request)
    cid = request.query.get("id", "")
    span, step = request.query.get("span", "6h"), request.query.get("step", "5m")
    span_s = parse_duration(span, SERIES_SPANS, "span")
    step_s = parse_duration(step, SERIES_STEPS, "step")
    key, now = (cid, span, step), time.monotonic()
    cached = service._series_cache.get(key)
    if cached is not None and now - cached[0] < _SERIES_TTL_S:
        return _json(cached[1])
    doc = await _blocking(service.sources.series, cid, span_s, step_s)
    doc["charts"] = CHARTS
    service._series_cache[key] = (now, doc)
    return _json(doc)


async def _thresholds(request: web.Request) -> web.Response:
    return _json([t.model_dump(mode="json") for t in thresholds(_service(request).sources.policy)])


async def _alerts(request: web.Request) -> web.Response:
    feed = _service(request).alerts
    return _json({"topic": feed.topic, "alerts": feed.snapshot(), "counts": dict(feed.counts), "error": feed.error})


async def _alert_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: every item so far, then each new one as it is read; a comment every 15 s."""
    feed = _service(request).alerts
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no", "Content-Security-Policy": _PAGE_CSP})
    await response.prepare(request)
    backlog, queue = feed.subscribe(asyncio.get_running_loop())
    try:
        for item in backlog:
            await response.write(_sse(item))
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), _HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            await response.write(_sse(item))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feed.unsubscribe(queue)
    return response


def _sse(item: dict[str, Any]) -> bytes:
    return b"event: alert\nid: " + str(item.get("id", "")).encode() + b"\ndata: " + orjson.dumps(item) + b"\n\n"


async def _audit(request: web.Request) -> web.Response:
    feed = _service(request).audit
    model = request.query.get("model")
    try:
        limit = max(1, min(2000, int(request.query.get("limit", "200"))))
    except ValueError:
        raise ConfigError(f"limit {request.query.get('limit')!r}: an integer") from None
    entries = [e for e in feed.snapshot()
               if model is None or any(m.split("@", 1)[0] == model for m in e.get("models", []))]
    return _json({"topic": feed.topic, "chain": feed.chain(), "entries": entries[-limit:][::-1], "error": feed.error})


async def _proofpacks(request: web.Request) -> web.Response:
    return _json({"proofpacks": await _blocking(_service(request).sources.proofpacks)})


async def _proofpack(request: web.Request) -> web.Response:
    service = _service(request)
    model, version = request.match_info["model"], request.match_info["version"]
    found = await _blocking(service.sources.proofpack, model, version, service.clock())
    if found is None:
        return _problem(404, f"{model}@{version} has no ProofPack (generated on promotion to PRODUCTION)")
    pack, signed = found
    return _json({"verified": True, "key_id": signed.get("signature", {}).get("key_id"),
                  "proofpack": pack.model_dump(mode="json")})


async def _report(request: web.Request) -> web.Response:
    from shadowgate.report import render_report

    service = _service(request)
    model, version = request.match_info["model"], request.match_info["version"]
    found = await _blocking(service.sources.proofpack, model, version, service.clock())
    if found is None:
        return web.Response(status=404, text=f"{model}@{version} has no ProofPack yet\n")
    audit = service.audit.snapshot()
    html = await _blocking(render_report, found[1], service.sources.trust, service.sources.store, service.clock(),
                           audit)
    return web.Response(text=html, content_type="text/html")


async def _verdict(request: web.Request) -> web.Response:
    service = _service(request)
    model, version = request.match_info["model"], request.match_info["version"]
    result = await _blocking(service.sources.verdict, model, version, service.clock(), _stage(request))
    service.verdicts.labels(result.decision).inc()
    return _json(result.model_dump(mode="json"))


async def _gate(request: web.Request) -> web.Response:
    service = _service(request)
    model, version = request.match_info["model"], request.match_info["version"]
    result = await _blocking(service.sources.verdict, model, version, service.clock(), _stage(request))
    service.verdicts.labels(result.decision).inc()
    status = 200 if result.passed else 404 if not result.registered else 412
    return _json(result.model_dump(mode="json"), status)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    service.start()
    yield
    await asyncio.get_running_loop().run_in_executor(None, service.stop)


def create_app(service: Service, *, manage: bool = True) -> web.Application:
    """The application; with ``manage`` it starts the feeds on startup and stops them (and Redis) on cleanup."""
    app = web.Application(middlewares=[_errors])
    app[SERVICE] = service
    if manage:
        app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_streams)
    r = app.router
    r.add_get("/", _index)
    r.add_static("/static/", STATIC, follow_symlinks=False)
    r.add_get("/healthz", _healthz)
    r.add_get("/readyz", _readyz)
    r.add_get("/metrics", _metrics)
    r.add_get("/report/{model}/{version}", _report)
    r.add_get("/api/models", _models)
    r.add_get("/api/models/{model}/history", _history)
    r.add_get("/api/comparisons", _comparisons)
    r.add_get("/api/series", _series)
    r.add_get("/api/thresholds", _thresholds)
    r.add_get("/api/alerts", _alerts)
    r.add_get("/api/alerts/stream", _alert_stream)
    r.add_get("/api/audit", _audit)
    r.add_get("/api/proofpacks", _proofpacks)
    r.add_get("/api/proofpacks/{model}/{version}", _proofpack)
    r.add_get("/api/verdict/{model}/{version}", _verdict)
    r.add_get("/api/gate/{model}/{version}", _gate)
    r.add_post("/api/gate/{model}/{version}", _gate)
    return app


async def _close_streams(app: web.Application) -> None:
    """On shutdown every open event stream ends, so the server never waits on a browser."""
    app[SERVICE].alerts.end_streams()
