"""``shadowgate up --secure``: the local servers secured (docs/security.md), started the way a user starts them, on
free ports with a private state dir, and used with the env files it writes, one per role.

The module's servers are started once (fixture ``secure_up``) and stopped with ``shadowgate down`` at the end,
which the fixture checks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.fault_servers import _kafka_jars, free_port

REPO = Path(__file__).resolve().parent.parent
ROLES = ("admin", "worker", "governance", "operator", "publisher", "forwarder", "status")


@dataclass(frozen=True)
class SecureUp:
    state: Path
    env: dict[str, str]  # the environment `up --secure` and `down` ran with (no role)
    started: subprocess.CompletedProcess[str]

    @property
    def home(self) -> Path:
        return self.state / "secure"

    def secrets(self) -> list[str]:
        return [p.read_text().strip() for p in (self.home / "secrets").iterdir()]

    def role_env(self, role: str) -> dict[str, str]:
        """The environment of a process of ``role``: the variables of its env file, nothing else of ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWGATE_")}
        env["PYTHONPATH"] = str(REPO)
        for line in (self.home / "env" / f"{role}.env").read_text().splitlines():
            if line and not line.startswith("#"):
                name, value = line.split("=", 1)
                env[name] = value
        return env


def _cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def _kafka_port() -> int:
    """A free port whose next port (the KRaft controller's) is free too."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port
    raise RuntimeError("no free pair of ports")


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def secure_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureUp]:
    state = tmp_path_factory.mktemp("secure-up")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWGATE_")}
    env.update({"PYTHONPATH": str(REPO), "SHADOWGATE_STATE_DIR": str(state),
                "SHADOWGATE_KAFKA_PORT": str(_kafka_port()), "SHADOWGATE_REDIS_PORT": str(free_port()),
                "SHADOWGATE_KAFKA_JARS": str(_kafka_jars())})
    started = _cli(env, "up", "--secure")
    run = state / "run"
    try:
        yield SecureUp(state, env, started)
    finally:
        stopped = _cli(env, "down")
        assert stopped.returncode == 0, stopped.stderr
        assert not _alive(run / "kafka.pid") and not _alive(run / "redis.pid")
        assert not (run / "secure").exists()


def test_up_secure_starts_the_servers_and_writes_each_roles_settings(secure_up: SecureUp) -> None:
    done = secure_up.started
    assert done.returncode == 0, done.stdout + done.stderr
    port = secure_up.env["SHADOWGATE_KAFKA_PORT"]
    assert f"Kafka listens on 127.0.0.1:{port} (SASL_SSL, SCRAM-SHA-512" in done.stdout
    secrets = secure_up.secrets()
    assert len(secrets) == 2 * len(ROLES) and len(set(secrets)) == len(secrets)
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    home = secure_up.home
    assert stat.S_IMODE((home / "secrets").stat().st_mode) == 0o700
    for path in [*(home / "secrets").iterdir(), home / "pki" / "server.key", home / "users.acl"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for role in ROLES:
        text = (home / "env" / f"{role}.env").read_text()
        assert f"SHADOWGATE_KAFKA__SASL_USERNAME={role}\n" in text and f"SHADOWGATE_REDIS__USERNAME={role}\n" in text
        assert not any(secret in text for secret in secrets)

    # Again: nothing restarted, nothing regenerated; the plain servers are refused while these run.
    again = _cli(secure_up.env, "up", "--secure")
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stdout and sorted(secure_up.secrets()) == sorted(secrets)
    plain = _cli(secure_up.env, "up")
    assert plain.returncode != 0 and "shadowgate down" in plain.stderr


def test_config_show_with_a_roles_env_file(secure_up: SecureUp) -> None:
    done = _cli(secure_up.role_env("operator"), "config", "show")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.startswith("SHADOWGATE_")}
    assert rows["SHADOWGATE_KAFKA__SECURITY_PROTOCOL"] == "SASL_SSL"
    assert rows["SHADOWGATE_KAFKA__SASL_USERNAME"] == "operator"
    assert rows["SHADOWGATE_REDIS_URL"].startswith("rediss://127.0.0.1:")
    for secret in secure_up.secrets():
        assert secret not in done.stdout


def test_publish_and_consume_as_their_roles(secure_up: SecureUp) -> None:
    published = _cli(secure_up.role_env("publisher"), "publish", "--pairs", "25", "--no-labels")
    assert published.returncode == 0, published.stderr
    assert "published 50 score events" in published.stdout and "(failed: 0)" in published.stdout
    consumed = _cli(secure_up.role_env("operator"), "consume", "scores", "--from-beginning", "--idle-timeout", "5")
    assert consumed.returncode == 0, consumed.stderr
    events = [event for line in consumed.stdout.splitlines() for event in orjson.loads(line)["value"]["events"]]
    assert Counter(e["role"] for e in events) == {"production": 25, "shadow": 25}
    assert len({e["request_id"] for e in events}) == 25


@pytest.mark.parametrize(
    ("role", "args", "line"),
    [("worker", ("publish", "--pairs", "2", "--no-labels"),
      "event(s) not delivered: Kafka refused a write to topic scores to User:worker"),
     ("worker", ("consume", "scores", "--from-beginning", "--idle-timeout", "10"),
      "Kafka refused the consumer group shadowgate-consume-"),
     ("operator", ("consume", "shadow.gates", "--from-beginning", "--idle-timeout", "10"),
      "Kafka refused reading topic shadow.gates to User:operator")],
)
def test_a_wrong_role_is_refused_in_one_line(secure_up: SecureUp, role: str, args: tuple[str, ...],
                                             line: str) -> None:
    done = _cli(secure_up.role_env(role), *args)
    assert done.returncode != 0
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert line in err and "(SHADOWGATE_KAFKA__SASL_USERNAME): no ACL on the" in err, err
    for secret in secure_up.secrets():
        assert secret not in done.stdout + done.stderr


def test_redis_users_have_the_keys_of_their_role(secure_up: SecureUp) -> None:
    import redis

    def client(role: str) -> redis.Redis[bytes]:
        home = secure_up.home
        return redis.Redis(host="127.0.0.1", port=int(secure_up.env["SHADOWGATE_REDIS_PORT"]), ssl=True,
                           ssl_ca_certs=str(home / "pki" / "ca.pem"), username=role,
                           password=(home / "secrets" / f"redis-{role}.password").read_text().strip())

    worker, publisher = client("worker"), client("publisher")
    try:
        assert worker.set("sg:probe", b"1") and worker.get("sg:probe") == b"1"
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.set("elsewhere", b"1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            publisher.get("sg:probe")
    finally:
        worker.close()
        publisher.close()
    plain = redis.Redis(host="127.0.0.1", port=int(secure_up.env["SHADOWGATE_REDIS_PORT"]), socket_timeout=3)
    with pytest.raises(redis.exceptions.ConnectionError):  # TLS only
        plain.ping()
    plain.close()
