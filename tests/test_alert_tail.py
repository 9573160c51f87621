"""``shadowgate alerts tail`` on the real Kafka: verified notices shown and filtered; forged, unsigned and
foreign-key alerts shown as REJECTED (counted), never as notices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from governance.contract.publishing import encode_signed_event
from governance.crypto.keyring import Keyring
from shadowgate.cli import cli
from tests.alerting_samples import alert, blocked, ready
from tests.governance_kit import Env, make_env, make_keys, now_utc, send, send_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("tail"))


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys_dir: Path, tmp_path: Path) -> Env:
    env = make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys_dir)
    now = now_utc()
    send_event(env, "alerts", alert("fraud", ts=now, severity="warning", summary="KL 2.04 \x1b[31mred\x1b[0m"))
    send_event(env, "alerts", alert("risk", ts=now, severity="critical", summary="risk page", runbook="page-on-call",
                                    dedup_key="risk|x"))
    send_event(env, "gates", blocked("fraud", "2.0.0", ts=now))
    send_event(env, "gates", ready("fraud", "2.0.0", ts=now))
    genuine = orjson.loads(encode_signed_event(alert("fraud", ts=now), env.signer(), now))
    forged = {**genuine, "payload": {**genuine["payload"], "summary": "FORGED page"}}
    send(env, "alerts", orjson.dumps(forged))
    send(env, "alerts", orjson.dumps(alert("fraud", summary="UNSIGNED page").model_dump(mode="json")))
    foreign = tmp_path / "foreign"
    Keyring(foreign).generate(now)
    send(env, "alerts", encode_signed_event(alert("fraud", summary="FOREIGN page"), Keyring(foreign).signer(now), now))
    return env


def _tail(env: Env, *args: str) -> Result:
    result = CliRunner().invoke(cli, ["alerts", "tail", "--no-follow", *args], env=env.cli_env(),
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_tail_json_shows_verified_notices_and_rejections_never_forgeries_as_notices(env: Env) -> None:
    result = _tail(env, "--json", "--from-beginning")
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    notices = [line for line in lines if line["verified"]]
    rejected = [line["rejected"] for line in lines if not line["verified"]]
    by_topic: dict[str, list[tuple[str, str]]] = {}  # topics interleave; each one is in order
    for n in notices:
        by_topic.setdefault(n["source"]["source"], []).append((n["labels"]["alertname"], n["status"]))
    assert by_topic == {
        "alerts": [("ShadowgateReviewScoreShift", "firing"), ("ShadowgatePageOnCall", "firing")],
        "gates": [("ShadowgateGateBlocked", "firing"), ("ShadowgateGateBlocked", "resolved")]}
    assert sorted(r["reason"] for r in rejected) == ["bad_signature", "unknown_key", "unsigned"]
    assert all(r["claims"]["model"] == "fraud" for r in rejected)
    assert not any(word in result.stdout for word in ("FORGED", "UNSIGNED", "FOREIGN"))
    assert "4 notice(s) read, 3 message(s) rejected" in result.stderr


def test_tail_filters_by_model_and_severity_and_always_shows_rejections(env: Env) -> None:
    only_risk = [orjson.loads(x) for x in _tail(env, "--json", "--model", "risk").stdout.splitlines()]
    assert [n["model"] for n in only_risk if n["verified"]] == ["risk"]
    assert len([n for n in only_risk if not n["verified"]]) == 3
    critical = [orjson.loads(x) for x in _tail(env, "--json", "--severity", "critical").stdout.splitlines()]
    assert [n["severity"] for n in critical if n["verified"]] == ["critical"]
    gates = [orjson.loads(x) for x in _tail(env, "--json", "--source", "gates").stdout.splitlines()]
    assert [n["kind"] for n in gates] == ["gate_blocked", "gate_blocked"] and all(n["verified"] for n in gates)
    last = [orjson.loads(x) for x in _tail(env, "--json", "--last", "1", "--source", "gates").stdout.splitlines()]
    assert [n["status"] for n in last] == ["resolved"]  # the resolve still knows what it resolves


def test_tail_prints_one_readable_line_each_with_escape_sequences_neutralised(env: Env) -> None:
    out = _tail(env).stdout.splitlines()
    assert len(out) == 7
    kl = next(line for line in out if "ShadowgateReviewScoreShift" in line)
    assert "WARNING" in kl and "FIRING" in kl and "fraud" in kl and "runbook review-score-shift" in kl
    assert "\x1b" not in "\n".join(out) and "KL 2.04 ?[31mred?[0m" in kl
    rejected = [line for line in out if "REJECTED" in line]
    assert len(rejected) == 3 and all("not forwarded" in line for line in rejected)
    assert any("bad_signature" in line and "test.alerts." in line for line in rejected)
