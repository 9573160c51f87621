"""The forwarder's receivers file: validated strictly, refused in one line naming the key, secrets never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from governance.errors import ConfigError
from governance.service.alerting.config import load_config, parse_config

AM = {"name": "am", "type": "alertmanager", "url": "http://127.0.0.1:9093"}


def _parse(data: Any, environ: dict[str, str] | None = None, base: Path = Path(".")) -> Any:
    return parse_config(data, "alerts.yaml", base, environ or {})


def test_the_documented_example_loads_with_its_secrets_from_a_file_beside_it_and_the_environment(
        tmp_path: Path) -> None:
    (tmp_path / "hook.secret").write_text("  hmac-key\n")
    (tmp_path / "slack.url").write_text("https://hooks.slack.com/services/T/B/X\n")
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({
        "runbook_url": "https://git.example.com/docs/runbooks/{runbook}.md",
        "retry": {"timeout_s": 5, "max_backoff_s": 10},
        "receivers": [AM,
                      {"name": "ops", "type": "webhook", "url": "https://hooks.example.com/x",
                       "secret_file": "hook.secret"},
                      {"name": "slack", "type": "slack", "url_file": "slack.url",
                       "match": {"severities": ["critical", "warning"]}},
                      {"name": "pd", "type": "pagerduty", "routing_key_env": "PD_KEY",
                       "match": {"severities": ["critical"], "kinds": ["rollback_failed"], "models": ["fraud"]}}]}))
    config = load_config(path, {"PD_KEY": "R0UTING"})
    assert [r.name for r in config.receivers] == ["am", "ops", "slack", "pd"]
    assert (config.secret("ops"), config.secret("pd")) == ("hmac-key", "R0UTING")
    assert config.secret("slack") == "https://hooks.slack.com/services/T/B/X"
    assert config.retry.timeout_s == 5.0 and config.hold_s == 3600.0 and config.group_of("am") == "shadowgate-alerts.am"
    assert "hmac-key" not in repr(config) and "R0UTING" not in repr(config)
    assert config.sources == ("alerts", "gates", "rollbacks", "audit")


@pytest.mark.parametrize(("data", "message"), [
    ({"receivers": [AM], "holds": 1},
     "alerts.yaml: holds: unknown key; known: dead_letter_topic, group, hold_s, max_pending, receivers, retry, "
     "runbook_url, sources"),
    ({"receivers": [{**AM, "resend": 3}]},
     "alerts.yaml: receivers[0].resend: unknown key; known: match, name, resend_s, type, url"),
    ({"receivers": [{"name": "h", "type": "webhook", "url": "http://x", "secret_fil": "s"}]},
     "alerts.yaml: receivers[0].secret_fil: unknown key; known: match, name, secret_env, secret_file, type, url"),
    ({"receivers": [{**AM, "match": {"severity": ["critical"]}}]},
     "alerts.yaml: receivers[0].match.severity: unknown key; known: kinds, models, severities"),
    ({"receivers": [AM], "retry": {"max_garbag": 1}},
     "alerts.yaml: retry.max_garbag: unknown key; known: initial_backoff_s, max_backoff_s, max_garbage, timeout_s"),
    ({"receivers": [{"name": "h", "type": "webhook", "url": "http://x"}]},
     "alerts.yaml: receivers[0]: give exactly one of secret_file, secret_env (got none)"),
    ({"receivers": [{"name": "s", "type": "slack", "url": "http://x", "url_env": "A"}]},
     "alerts.yaml: receivers[0]: give exactly one of url, url_file, url_env (got both url and url_env)"),
    ({"receivers": [{"name": "x", "type": "teams", "url": "http://x"}]},
     "alerts.yaml: receivers[0].type: must be one of alertmanager, webhook, slack, pagerduty"),
    ({"receivers": [{"name": "x", "url": "http://x"}]},
     "alerts.yaml: receivers[0]: a receiver needs a type (alertmanager, webhook, slack, pagerduty)"),
    ({"receivers": [AM, AM]}, "alerts.yaml: receivers[1].name: 'am' is used twice; names must be unique"),
    ({"receivers": [{**AM, "name": "dead-letter"}]},
     "alerts.yaml: receivers[0].name: 'dead-letter' is reserved for the dead-letter lane"),
    ({"receivers": [{**AM, "url": "ftp://x"}]}, "alerts.yaml: receivers[0].url: 'ftp://x' must be an http:// or "
                                                "https:// URL"),
    ({"receivers": [AM], "hold_s": "1h"}, "alerts.yaml: hold_s: Input should be a valid number (got '1h')"),
    ({"receivers": [AM], "retry": {"initial_backoff_s": 100}},
     "alerts.yaml: retry: initial_backoff_s 100.0 is above max_backoff_s 30.0"),
    ({"receivers": [AM], "sources": ["alerts", "alerts"]},
     "alerts.yaml: sources ['alerts', 'alerts'] must be a non-empty list without repeats"),
    ({"receivers": [AM], "runbook_url": "https://x/"},
     "alerts.yaml: runbook_url 'https://x/' has no {runbook} placeholder"),
    ({"receivers": [{**AM, "match": {"severities": ["urgent"]}}]},
     "alerts.yaml: receivers[0].match.severities[0]: Input should be 'info', 'warning' or 'critical' (got 'urgent')"),
    ({"receivers": []}, "alerts.yaml: receivers: List should have at least 1 item after validation, not 0 (got [])"),
    ({"receivers": [{"name": "h", "type": "webhook", "url": "http://x", "secret_env": "NOPE"}]},
     "alerts.yaml: receivers[0].secret_env: environment variable NOPE is unset or empty; export it"),
    ({"receivers": [{"name": "h", "type": "webhook", "url": "http://x", "secret_file": "missing.txt"}]},
     "alerts.yaml: receivers[0].secret_file: cannot read missing.txt (No such file or directory)"),
    (["a list"], "alerts.yaml: the file must be a mapping with a receivers list"),
])
def test_a_bad_file_is_refused_in_one_line_naming_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(data)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_an_empty_secret_file_and_a_slack_url_that_is_not_one_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"receivers\[0\].secret_file: .*empty is empty"):
        _parse({"receivers": [{"name": "h", "type": "webhook", "url": "http://x", "secret_file": "empty"}]},
               base=tmp_path)
    with pytest.raises(ConfigError, match=r"receivers\[0\].url: the Slack webhook URL read is not an http\(s\) URL"):
        _parse({"receivers": [{"name": "s", "type": "slack", "url_env": "SLACK"}]}, {"SLACK": "hooks.slack.com/x"})


def test_duplicate_keys_and_bad_yaml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "alerts.yaml"
    path.write_text("hold_s: 1\nhold_s: 2\nreceivers: []\n")
    with pytest.raises(ConfigError, match=r"alerts.yaml: duplicate key 'hold_s' at line 2"):
        load_config(path, {})
    path.write_text("receivers: [\n")
    with pytest.raises(ConfigError, match=r"alerts.yaml: not valid YAML"):
        load_config(path, {})
    with pytest.raises(ConfigError, match=r"alerts config .*nothing.yaml: cannot read it"):
        load_config(tmp_path / "nothing.yaml", {})
