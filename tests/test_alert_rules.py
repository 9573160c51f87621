"""The Prometheus alert rules: every labelled counter starts at 0; promtool checks them and unit-tests every rule
(``make rules`` runs the same); amtool checks the Alertmanager config.

``increase()`` needs two samples of a series: a counter whose series is born at 1 (its first increment) has
no earlier sample, so a rule on it never sees the first event. The consumer and the worker create every
known label value at 0; ``deploy/prometheus/tests/`` proves with ``promtool test rules`` that the first
failed rollback fires ``ShadowgateRollbackFailed`` only that way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import get_args

import pytest
import yaml
from prometheus_client import CollectorRegistry

from governance.contract.events import EventType
from governance.contract.stages import Stage
from governance.lifecycle.audit import RejectReason, RollbackStatus
from governance.service.consumer import Metrics
from streams.worker.telemetry import WorkerMetrics
from tests.infra import require_infra

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
TESTS = REPO / "deploy" / "prometheus" / "tests"


def test_the_consumers_labelled_counters_start_at_zero_for_every_known_value() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    for status in get_args(RollbackStatus):
        assert registry.get_sample_value("shadowgate_governance_rollbacks_total", {"status": status}) == 0.0, status
    for reason in get_args(RejectReason):
        assert registry.get_sample_value("shadowgate_governance_rejected_total", {"reason": reason}) == 0.0, reason
    for stage in Stage:
        assert registry.get_sample_value("shadowgate_governance_transitions_total", {"to_stage": stage.value}) == 0.0


def test_the_workers_event_counter_starts_at_zero_for_every_event_type() -> None:
    registry = CollectorRegistry()
    WorkerMetrics(registry)
    for event_type in get_args(EventType):
        assert registry.get_sample_value("shadowgate_governance_events_total", {"type": event_type}) == 0.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} not found: apt-get install prometheus prometheus-alertmanager (Debian)"
        if require_infra():
            pytest.fail(message + " [SHADOWGATE_REQUIRE_INFRA=1]")
        pytest.skip(message)
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules_and_the_config() -> None:
    promtool = _tool("promtool")
    for args in (("check", "rules", "deploy/prometheus/alerts.yml"),
                 ("check", "config", "deploy/prometheus/prometheus.yml")):
        result = _run(promtool, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    result = _run(_tool("promtool"), "test", "rules", *map(str, sorted(TESTS.glob("*.yml"))))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(list(TESTS.glob("*.yml")))


def test_amtool_checks_the_alertmanager_config() -> None:
    result = _run(_tool("amtool"), "check-config", "deploy/alertmanager/alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test_that_fires_it() -> None:
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS.glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert rules <= fired, f"rules no promtool case fires: {sorted(rules - fired)}"
    assert rules <= quiet, f"rules no promtool case shows quiet: {sorted(rules - quiet)}"
