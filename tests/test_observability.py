"""The Prometheus rules, scrape config and Grafana dashboard shipped in deploy/ match the code.

Every series an alert or panel queries must be one the worker or the governance consumer exposes, with
label names it has and label values it can take; otherwise the rule is silently empty and never fires.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, get_args

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from governance.contract.settings import Settings
from governance.lifecycle.audit import RejectReason, RollbackStatus
from governance.service.alerting import delivery, intake, notices
from governance.service.alerting.metrics import DEAD_LETTER_REASONS, SCRAPED, ForwarderMetrics
from governance.service.consumer import Metrics
from streams.worker.telemetry import WorkerMetrics

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
SELECTOR = re.compile(r"(shadowgate_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
LABEL_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("shadowgate_governance_rollbacks", "status"): get_args(RollbackStatus),
    ("shadowgate_governance_rejected", "reason"): get_args(RejectReason),
    ("shadowgate_alerts_received", "kind"): notices.KINDS,
    ("shadowgate_alerts_received", "severity"): notices.SEVERITIES,
    ("shadowgate_alerts_conditions_open", "kind"): notices.CONDITION_KINDS,
    ("shadowgate_alerts_condition_age_seconds", "kind"): notices.CONDITION_KINDS,
    ("shadowgate_alerts_rejected", "reason"): intake.REJECT_REASONS,
    ("shadowgate_alerts_rejected", "source"): intake.SOURCES,
    ("shadowgate_alerts_delivery_attempts", "result"): delivery.RESULTS,
    ("shadowgate_alerts_dead_lettered", "reason"): DEAD_LETTER_REASONS,
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _exposed() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Series name -> (metric name, label names) of every metric the worker, the consumer and the alert
    forwarder register (the forwarder's gauges are computed at scrape time: SCRAPED lists them)."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {name: (name, labels) for name, (_, labels) in SCRAPED.items()}
    for holder in (WorkerMetrics(CollectorRegistry()), Metrics(CollectorRegistry()),
                   ForwarderMetrics(CollectorRegistry(), ["alertmanager"])):
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                name, kind, labels = metric._name, metric._type, tuple(metric._labelnames)  # noqa: SLF001
                for suffix in SUFFIXES[kind]:
                    out[name + suffix] = (name, labels)
    return out


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert rule and dashboard panel target."""
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    out = [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "shadowgate.json").read_text())
    out += [(f"panel {p['title']!r}", t["expr"]) for p in dashboard["panels"] for t in p["targets"]]
    return out


@pytest.mark.parametrize(("where", "expr"), _queries())
def test_every_queried_series_label_and_value_exists(where: str, expr: str) -> None:
    promql_parser.parse(expr)  # raises ValueError naming the syntax error
    exposed = _exposed()
    series = SELECTOR.findall(expr)
    for name, matchers in series:
        assert name in exposed, f"{where}: {name} is not exposed (known: {sorted(exposed)})"
        metric, labels = exposed[name]
        for label, op, value in MATCHER.findall(matchers):
            assert label in labels, f"{where}: {metric} has no label {label!r} (has {labels})"
            allowed = LABEL_VALUES.get((metric, label))
            if allowed is not None:
                values = value.split("|") if op == "=~" else [value]
                assert set(values) <= set(allowed), f"{where}: {label} takes {allowed}, not {values}"
    grouped = re.findall(r"by \(([^)]*)\)", expr)
    names = {exposed[n][0] for n, _ in series}
    for group in grouped:
        for label in (x.strip() for x in group.split(",")):
            assert label == "le" or any(label in exposed[n][1] for n, _ in series), (
                f"{where}: grouped by {label!r}, which none of {sorted(names)} has"
            )


def test_alert_rules_are_complete() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in alerts}) == len(alerts)
    for rule in alerts:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0s"))), rule["alert"]


def test_compose_mounts_the_config_prometheus_reads_and_scrapes_the_metrics_port() -> None:
    compose: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1)[::-1] for v in compose["services"]["prometheus"]["volumes"])
    config_dir = Path(next(c for c in compose["services"]["prometheus"]["command"] if c.startswith("--config.file="))
                      .split("=", 1)[1]).parent
    for path in prometheus["rule_files"]:  # relative to the config file, as Prometheus and promtool read it
        mounted = str(config_dir / path)
        assert mounted in mounts and (REPO / mounts[mounted]).is_file(), f"rule file {path} is not mounted"
        assert (DEPLOY / "prometheus" / path).is_file(), f"promtool check config cannot find {path}"
    port = Settings().metrics_port
    targets = [c["port"] for job in prometheus["scrape_configs"] for c in job.get("dns_sd_configs", [])]
    targets += [int(t.rsplit(":", 1)[1]) for job in prometheus["scrape_configs"]
                for c in job.get("static_configs", []) for t in c["targets"]]
    assert targets and set(targets) == {port}
    services = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert services["shadowgate-worker"]["dns_sd_configs"][0]["names"] == ["worker"]
    assert {"worker", "governance", "alert-forwarder", "alertmanager"} <= set(compose["services"])
    assert services["shadowgate-alert-forwarder"]["static_configs"][0]["targets"] == [f"alert-forwarder:{port}"]
    (manager,) = [t for a in prometheus["alerting"]["alertmanagers"] for c in a["static_configs"] for t in c["targets"]]
    assert manager == "alertmanager:9093" and "9093:9093" in compose["services"]["alertmanager"]["ports"]


def _compose_cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    return None


def test_compose_is_valid_and_every_shadowgate_service_starts_from_the_image_healthy() -> None:
    """docker-compose.yml as `docker compose config` reads it: one image, restart policies, health checks on paths
    the process serves on the port it listens on, start order by health, only known SHADOWGATE_* settings."""
    from governance.contract.settings import known_variables
    from tests.test_helm_chart import PATHS, _command, _help

    tool = _compose_cli()
    if tool is None:
        message = "neither docker-compose nor `docker compose` found: apt-get install docker-compose"
        if os.environ.get("CI") or os.environ.get("SHADOWGATE_REQUIRE_INFRA"):
            pytest.fail(message + " [CI: a missing tool is a failure]")
        pytest.skip(message)
    out = subprocess.run([*tool, "-f", str(REPO / "docker-compose.yml"), "config"], capture_output=True, text=True,
                         timeout=60, cwd=REPO, env={**os.environ, "KEYS_UID": "1000", "KEYS_GID": "1000"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    services: dict[str, Any] = yaml.safe_load(out.stdout)["services"]
    for name in ("kafka", "redis", "alertmanager"):
        assert services[name]["healthcheck"]["test"], name
    ours = {n: s for n, s in services.items() if s.get("image") == "shadowgate:local"}
    assert set(ours) == {"worker", "governance", "status", "alert-forwarder"}
    assert all(s["build"]["dockerfile"] == "deploy/docker/Dockerfile" for s in ours.values())
    for name, service in {**ours, "kafka": services["kafka"], "redis": services["redis"]}.items():
        assert service["restart"] == "unless-stopped", name
    for name, service in ours.items():
        args = [str(a) for a in service["command"]]
        words, command = _command(args)
        options = {opt for p in command.params for opt in p.opts}
        assert {a for a in args[len(words) :] if a.startswith("--")} <= options, name
        env = {k: str(v) for k, v in service["environment"].items()}
        assert {k for k in env if k.startswith("SHADOWGATE_")} <= set(known_variables()), name
        check = service["healthcheck"]["test"]
        assert check[:3] == ["CMD", "python", "-c"] and "urllib.request.urlopen" in check[3], name
        (url,) = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", check[3])
        port = next((int(args[args.index(f) + 1]) for f in ("--metrics-port", "--port") if f in args),
                    int(env.get("SHADOWGATE_METRICS_PORT", Settings().metrics_port)))  # fmt: skip
        served = set(PATHS.findall(_help(words)))
        assert int(url[0]) == port, f"{name} listens on {port}, its health check asks {url[0]}"
        # /metrics is served on every metrics port; /healthz wherever the process serves it
        assert url[1] == ("/healthz" if "/healthz" in served else "/metrics"), f"{name}: {url[1]}, serves {served}"
        assert services[name]["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert services["alert-forwarder"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"
    assert all(s["depends_on"]["redis"]["condition"] == "service_healthy" for n, s in ours.items()
               if n != "alert-forwarder")  # fmt: skip


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "shadowgate.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
