"""Strict configuration: unknown SHADOWGATE_* variables are refused with the nearest valid name; the effective
configuration is printed with secrets masked; packaged defaults are found from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from governance.contract.settings import (
    PROCESS_VARIABLES,
    KafkaSecurity,
    RedisOptions,
    Settings,
    Topics,
    check_environment,
    describe,
    known_variables,
    load_settings,
    mask_url,
)
from governance.errors import ConfigError
from governance.policy.catalog import load_catalog
from governance.policy.document import load_policy

REPO = Path(__file__).resolve().parents[1]


def _env_without_shadowgate() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("SHADOWGATE_")}


@pytest.mark.parametrize(
    ("variable", "nearest"),
    [("SHADOWGATE_REDIS_UR", "SHADOWGATE_REDIS_URL"), ("SHADOWGATE_KAFKA_BOOTSTRAPS", "SHADOWGATE_KAFKA_BOOTSTRAP"),
     ("SHADOWGATE_TOPICS__SCORE", "SHADOWGATE_TOPICS__SCORES"), ("shadowgate_metrics_prt", "SHADOWGATE_METRICS_PORT")],
)
def test_an_unknown_variable_is_refused_with_the_nearest_valid_name(variable: str, nearest: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{variable} is not a shadowgate setting; did you mean {nearest}\?"):
        check_environment({**_env_without_shadowgate(), variable: "x"})


def test_a_variable_nothing_resembles_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"^SHADOWGATE_XYZZY is not a shadowgate setting; unset it"):
        check_environment({"SHADOWGATE_XYZZY": "1"})


def test_every_setting_and_process_variable_is_accepted() -> None:
    env = {name: "1" for name in known_variables()}
    check_environment(env)  # no error
    assert set(PROCESS_VARIABLES) <= set(env)
    groups = {"topics": Topics, "kafka": KafkaSecurity, "redis": RedisOptions}
    assert {f"SHADOWGATE_{n.upper()}" for n in Settings.model_fields if n not in groups} <= set(env)
    for group, model in groups.items():
        assert {f"SHADOWGATE_{group.upper()}__{n.upper()}" for n in model.model_fields} <= set(env)


def test_load_settings_checks_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHADOWGATE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ConfigError, match="SHADOWGATE_KAFKA_SECURITY_PROTOCOL is not a shadowgate setting; "
                                          "did you mean SHADOWGATE_KAFKA__SECURITY_PROTOCOL"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "shown"),
    [("redis://:s3cret@10.0.0.5:6380/2", "redis://****@10.0.0.5:6380/2"),
     ("rediss://worker:s3cret@redis.internal:6379/0", "rediss://worker:****@redis.internal:6379/0"),
     ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0")],
)
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "s3cret" not in str(describe(Settings(redis_url=url)))  # type: ignore[arg-type]


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_config_show_prints_effective_values_sources_and_masks_secrets(tmp_path: Path) -> None:
    env = {**_env_without_shadowgate(), "SHADOWGATE_REDIS_URL": "redis://:hunter2@10.1.2.3:6379/0",
           "SHADOWGATE_JOIN_WINDOW_S": "90", "SHADOWGATE_STATE_DIR": str(tmp_path),
           "SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "SHADOWGATE_KAFKA__SASL_USERNAME": "worker",
           "SHADOWGATE_KAFKA__SASL_PASSWORD": "kafka-hunter3", "SHADOWGATE_REDIS__PASSWORD": "redis-hunter4"}
    done = _cli("config", "show", "--json", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for secret in ("hunter2", "kafka-hunter3", "redis-hunter4"):
        assert secret not in done.stdout + done.stderr
    rows = orjson.loads(done.stdout)
    assert rows["SHADOWGATE_REDIS_URL"] == {"value": "redis://****@10.1.2.3:6379/0", "source": "env",
                                            "meaning": "Redis URL (rediss:// for TLS)"}
    assert rows["SHADOWGATE_KAFKA__SASL_PASSWORD"]["value"] == "****"
    assert rows["SHADOWGATE_REDIS__PASSWORD"]["value"] == "****"
    assert rows["SHADOWGATE_KAFKA__SECURITY_PROTOCOL"] == {
        "value": "SASL_SSL", "source": "env", "meaning": KafkaSecurity.model_fields["security_protocol"].description}
    assert rows["SHADOWGATE_JOIN_WINDOW_S"]["value"] == 90.0 and rows["SHADOWGATE_JOIN_WINDOW_S"]["source"] == "env"
    assert rows["SHADOWGATE_KAFKA_BOOTSTRAP"] == {"value": "127.0.0.1:9092", "source": "default",
                                                  "meaning": Settings.model_fields["kafka_bootstrap"].description}
    assert rows["SHADOWGATE_STATE_DIR"]["value"] == str(tmp_path)
    assert set(rows) >= {f"SHADOWGATE_{n.upper()}" for n in Settings.model_fields
                         if n not in ("topics", "kafka", "redis")}
    assert set(rows) >= {f"SHADOWGATE_KAFKA__{n.upper()}" for n in KafkaSecurity.model_fields}
    text = _cli("config", "show", env=env, cwd=tmp_path)
    assert text.returncode == 0 and "redis://****@10.1.2.3:6379/0" in text.stdout
    for secret in ("hunter2", "kafka-hunter3", "redis-hunter4"):
        assert secret not in text.stdout
    helped = _cli("worker", "--help", env=env, cwd=tmp_path)
    assert "kafka-hunter3" not in helped.stdout + helped.stderr


def test_a_process_refuses_to_start_on_an_unknown_variable(tmp_path: Path) -> None:
    env = {**_env_without_shadowgate(), "SHADOWGATE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    done = _cli("config", "show", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("shadowgate: error: SHADOWGATE_KAFKA_SECURITY_PROTOCOL is not a shadowgate setting")
    assert "Traceback" not in done.stderr


def test_packaged_defaults_are_found_from_any_directory(tmp_path: Path) -> None:
    code = ("from governance.policy.catalog import load_catalog; from governance.policy.document import load_policy;"
            "print(len(load_catalog().features), load_policy().hash())")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                          timeout=60, env=_env_without_shadowgate())
    assert done.stdout.split() == [str(len(load_catalog().features)), load_policy().hash()]
    assert len(load_catalog().features) > 0


def test_a_missing_catalog_names_the_resolved_path_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_catalog("conf/catalog.yaml")
    message = str(caught.value)
    assert message.startswith(f"feature catalog {tmp_path / 'conf' / 'catalog.yaml'}: cannot read it")
    assert "SHADOWGATE_CATALOG_PATH" in message


def test_every_environment_variable_a_command_reads_is_a_known_one() -> None:
    # A click option with envvar=SHADOWGATE_* that known_variables() did not list was refused at start
    # (SHADOWGATE_ALERTS_CONFIG of `alerts forward`).
    import click

    from shadowgate.cli import cli

    def walk(command: click.Command, ctx: click.Context) -> list[str]:
        names = [e for p in command.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])]
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is not None:
                    names += walk(sub, click.Context(sub, parent=ctx, info_name=name))
        return names

    read = {name for name in walk(cli, click.Context(cli, info_name="shadowgate")) if name.startswith("SHADOWGATE_")}
    assert "SHADOWGATE_ALERTS_CONFIG" in read
    assert read <= set(known_variables()), sorted(read - set(known_variables()))
