"""The Helm chart (deploy/helm/shadowgate), rendered by the real `helm template` and checked against the code.

What a cluster would only tell at run time is checked here: every flag the chart passes is an option of the
command it runs, every SHADOWGATE_* variable it sets is a setting (`known_variables()`, the list unknown names
are refused against) with a value the settings model accepts, probes ask for paths the process serves on the
port it listens on, the keys reach the process from a read-only Secret through the copy step, in a layout the
keyring accepts, and the governance consumer stays single-active. In CI a missing helm fails the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from governance.contract.settings import PROCESS_VARIABLES, check_environment, known_variables, load_settings
from governance.crypto.keyring import Keyring
from governance.errors import ConfigError
from shadowgate.cli import cli

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "shadowgate"
ALL_ON = ["-f", str(CHART / "ci" / "all-on-values.yaml"),
          "--set-file", f"policy={REPO / 'governance/policy/default_policy.yaml'}",
          "--set-file", f"catalog={REPO / 'governance/policy/feature_catalog.yaml'}"]  # fmt: skip
PATHS = re.compile(r"/(?:healthz|readyz|metrics)\b")


def _helm() -> str:
    found = shutil.which("helm") or next(
        (str(p) for p in (Path.home() / "go" / "bin" / "helm",) if p.is_file() and os.access(p, os.X_OK)), None
    )
    if found is None:
        message = "helm not found: go install helm.sh/helm/v4/cmd/helm@v4.3.2 (.ci/run does)"
        if os.environ.get("CI") or os.environ.get("SHADOWGATE_REQUIRE_INFRA"):
            pytest.fail(message + " [CI: a missing helm is a failure]")
        pytest.skip(message)
    return found


def render(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run([_helm(), "template", "sg", str(CHART), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=["default", "all-on"])
def manifests(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render() if request.param == "default" else render(*ALL_ON)


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in docs if d["kind"] == "Deployment"}


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for component, dep in _deployments(docs).items():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            yield component, container, dep["spec"]["template"]["spec"]


def _command(args: list[str]) -> tuple[list[str], click.Command]:
    """The click command a container's args run (``alerts forward`` is two words)."""
    ctx = click.Context(cli)
    command = cli.get_command(ctx, args[0])
    assert command is not None, f"no command {args[0]}"
    words = [args[0]]
    if isinstance(command, click.Group):
        sub = command.get_command(ctx, args[1])
        assert sub is not None, f"no command {args[:2]}"
        command, words = sub, args[:2]
    return words, command


def _help(words: list[str]) -> str:
    result = CliRunner().invoke(cli, [*words, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _listen_port(args: list[str], env: dict[str, str]) -> int:
    for flag in ("--metrics-port", "--port"):
        if flag in args:
            return int(args[args.index(flag) + 1])
    return int(env.get("SHADOWGATE_METRICS_PORT", load_settings().metrics_port))


def test_every_flag_is_an_option_of_the_command_it_runs(manifests: list[dict[str, Any]]) -> None:
    seen = set()
    for component, container, _ in _containers(manifests):
        words, command = _command(container["args"])
        options = {opt for p in command.params for opt in p.opts}
        for arg in container["args"][len(words) :]:
            if arg.startswith("--"):
                assert arg in options, f"{component}: `shadowgate {' '.join(words)}` has no option {arg}"
        seen.add(" ".join(words))
    assert {"worker", "governance", "serve"} <= seen


def test_every_shadowgate_variable_is_a_setting_with_a_valid_value(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_variables = set(known_variables()) - set(PROCESS_VARIABLES)
    for component, container, _ in _containers(manifests):
        names = [e["name"] for e in container.get("env", [])]
        assert len(names) == len(set(names)), f"{component}: a variable set twice: {names}"
        ours = {n for n in names if n.startswith("SHADOWGATE_")}
        assert ours <= set(known_variables()), f"{component}: not settings: {ours - set(known_variables())}"
        assert {"SHADOWGATE_KAFKA_BOOTSTRAP", "SHADOWGATE_REDIS_URL", "SHADOWGATE_KEYS_DIR"} <= ours
        env = _env(container)
        check_environment(env)  # the check every process runs at start
        for name in list(os.environ):
            if name.startswith("SHADOWGATE_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            if name in settings_variables:
                monkeypatch.setenv(name, value)
        load_settings()  # the values parse (a port is a port, a duration a number)


def test_probes_ask_for_paths_the_process_serves_on_the_port_it_listens_on(
    manifests: list[dict[str, Any]],
) -> None:
    probed = set()
    for component, container, _ in _containers(manifests):
        words, _ = _command(container["args"])
        served = set(PATHS.findall(_help(words)))
        port = _listen_port(container["args"], _env(container))
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert port in ports.values(), f"{component} listens on {port}, declares {ports}"
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            get = probe["httpGet"]
            assert get["path"] in served, f"{component}: {kind} {get['path']}; `{' '.join(words)}` serves {served}"
            assert ports[get["port"]] == port, f"{component}: {kind} on {get['port']}, the process listens on {port}"
            probed.add(component)
        if "livenessProbe" in container:
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "status" in probed


def test_a_process_that_serves_health_endpoints_is_probed_by_default() -> None:
    """A tripwire: when a process starts serving /healthz and /readyz, the chart's default must probe them."""
    for component, container, _ in _containers(render()):
        words, _ = _command(container["args"])
        if {"/healthz", "/readyz"} <= set(PATHS.findall(_help(words))):
            assert "livenessProbe" in container and "readinessProbe" in container, (
                f"`shadowgate {' '.join(words)}` serves /healthz and /readyz: turn on {component}.probes.enabled "
                "in deploy/helm/shadowgate/values.yaml"
            )


def test_the_governance_consumer_is_single_active(manifests: list[dict[str, Any]]) -> None:
    gov = _deployments(manifests)["governance"]
    assert gov["spec"]["replicas"] == 1 and gov["spec"]["strategy"] == {"type": "Recreate"}
    pdbs = [d for d in manifests if d["kind"] == "PodDisruptionBudget"]
    assert all(p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] != "governance" for p in pdbs)
    assert _deployments(render("--set", "worker.replicas=6"))["governance"]["spec"]["replicas"] == 1


def test_keys_come_from_a_read_only_secret_and_private_keys_only_to_signers(manifests: list[dict[str, Any]]) -> None:
    for component, container, pod in _containers(manifests):
        volumes = {v["name"]: v for v in pod["volumes"]}
        secret = volumes["keys-secret"]["secret"]
        assert secret["defaultMode"] & 0o222 == 0, f"{component}: Secret files are writable"
        (init,) = pod["initContainers"]
        mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert mounts["keys-secret"]["readOnly"] is True
        keys_dir = _env(container)["SHADOWGATE_KEYS_DIR"]
        (mount,) = [m for m in container["volumeMounts"] if keys_dir.startswith(m["mountPath"] + "/")]
        assert mount["name"] == "keyring" and mount["readOnly"] is True
        assert volumes["keyring"]["emptyDir"]["medium"] == "Memory"  # the copy never touches a disk
        assert "keys-secret" not in {m["name"] for m in container["volumeMounts"]}
        paths = [i["path"] for i in secret.get("items", [])]
        if component in ("status", "alert-forwarder"):  # verify only: the trust store, never a private key
            assert paths == ["trust-store.json"], f"{component} gets {paths}"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def _as_kubelet_mounts_it(keyring: Path, items: list[dict[str, str]], secret_dir: Path, mode: int) -> None:
    """A Secret volume as the kubelet lays it out: a world-writable tmpfs root, a timestamped directory (0755
    subdirectories) that ``..data`` points to, a symlink per top-level name, files of ``mode`` plus the group read
    the pod's fsGroup adds."""
    secret_dir.mkdir(mode=0o777)
    secret_dir.chmod(0o1777)
    stamp = secret_dir / "..2026_01_01_00_00_00.000000001"
    for item in items:
        target = stamp / item["path"]
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        key_file = keyring / "private" / item["key"] if item["key"].endswith(".key") else keyring / item["key"]
        target.write_bytes(key_file.read_bytes())
        target.chmod(mode | 0o040)
    for sub in stamp.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    stamp.chmod(0o755)
    (secret_dir / "..data").symlink_to(stamp.name)
    for top in {item["path"].split("/")[0] for item in items}:
        (secret_dir / top).symlink_to(f"..data/{top}")


def test_the_copy_step_turns_the_secret_into_a_keyring_the_code_accepts(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    made = tmp_path / "made"
    info = Keyring(made).generate(now)
    items = [{"key": "trust-store.json", "path": "trust-store.json"},
             {"key": f"{info.key_id}.key", "path": f"private/{info.key_id}.key"}]  # fmt: skip
    docs = render("--set-json", f"keys.items={json.dumps(items)}")
    pod = _deployments(docs)["worker"]["spec"]["template"]["spec"]
    secret = next(v for v in pod["volumes"] if v["name"] == "keys-secret")["secret"]
    assert secret["items"] == items
    secret_dir, keys_volume = tmp_path / "secret", tmp_path / "keys"
    _as_kubelet_mounts_it(made, items, secret_dir, secret["defaultMode"])
    # Straight from the Secret volume, the keyring refuses it: that is why the chart copies it.
    with pytest.raises(ConfigError, match="writable|mode"):
        Keyring(secret_dir).signer(now)

    keys_volume.mkdir()
    keys_volume.chmod(0o777)  # an emptyDir's root
    (init,) = pod["initContainers"]
    script = init["args"][0].replace("/secrets/keys", str(secret_dir)).replace("/keys/", f"{keys_volume}/")
    assert init["command"][:2] == ["/bin/sh", "-ec"]
    done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "keyring: 2 file(s)" in done.stdout

    worker = pod["containers"][0]
    keys_dir = Path(_env(worker)["SHADOWGATE_KEYS_DIR"].replace("/keys/", f"{keys_volume}/"))
    signer = Keyring(keys_dir).signer(now)  # what the worker does at start
    assert signer.key_id == info.key_id
    assert stat.S_IMODE((keys_dir / "private" / f"{info.key_id}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700


def test_the_optional_parts(manifests: list[dict[str, Any]]) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    all_on = ("ServiceMonitor", "sg-shadowgate") in kinds
    if not all_on:
        assert not any(k == "ConfigMap" for k, _ in kinds) and "alert-forwarder" not in _deployments(manifests)
        return
    configs = {d["metadata"]["name"]: d for d in manifests if d["kind"] == "ConfigMap"}
    policy = configs["sg-shadowgate-policy"]["data"]
    assert policy["policy.yaml"] == (REPO / "governance/policy/default_policy.yaml").read_text()
    assert policy["feature_catalog.yaml"] == (REPO / "governance/policy/feature_catalog.yaml").read_text()
    forwarder = yaml.safe_load(configs["sg-shadowgate-alert-forwarder"]["data"]["forwarder.yml"])
    assert forwarder["receivers"][0]["type"] == "alertmanager"
    for _, container, _ in _containers(manifests):
        env = _env(container)
        assert env["SHADOWGATE_POLICY_PATH"].startswith("/etc/shadowgate/policy/")
        redis = next(e for e in container["env"] if e["name"] == "SHADOWGATE_REDIS_URL")
        assert redis["valueFrom"]["secretKeyRef"] == {"name": "shadowgate-redis", "key": "url"}
    monitor = next(d for d in manifests if d["kind"] == "ServiceMonitor")
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    services = [d for d in manifests if d["kind"] == "Service"]
    assert all({p["name"] for p in s["spec"]["ports"]} & scraped for s in services)
