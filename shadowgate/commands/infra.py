"""``shadowgate up [--secure] | down | topics``: local servers and topics.

``up --secure`` starts the local servers secured, as docs/security.md describes (the pieces are
:mod:`shadowgate.commands.secured`, the same the tests' secured servers are made of). Everything lives under
``<state>/secure`` (``SHADOWGATE_STATE_DIR``, default ``<repo>/.local``): the self-made CA and server certificate
(``pki/``), the users' passwords (``secrets/``, directory 0700, files 0600, generated once and kept), the broker's
and Redis's data, and one env file per role (``env/<role>.env``: the ``SHADOWGATE_KAFKA*`` / ``SHADOWGATE_REDIS*``
settings of a process of that role, naming the password files, never holding a password). The PID files are the
plain servers' (``<state>/run``), so ``down`` stops either; ``run/secure`` marks the secured mode.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from governance.contract.connections import kafka_connection
from governance.contract.settings import load_settings
from governance.contract.topics import ensure_topics, topic_specs
from governance.errors import ConfigError

if TYPE_CHECKING:
    from governance.contract.connections import KafkaConnection
    from governance.contract.settings import Settings
    from shadowgate.commands.secured import Pki

__all__ = ["down", "topics", "up"]


def _script() -> Path:
    script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "servers.sh"
    if not script.exists():
        raise ConfigError(
            f"{script} not found: `shadowgate up` runs from a source checkout; "
            "with Docker use `docker compose up -d kafka redis`"
        )
    return script


@click.command()
@click.option("--secure", is_flag=True, help="Kafka with a SASL_SSL listener (SCRAM users, a self-made CA, ACLs "
              "per role) and Redis with TLS and ACL users; writes each role's settings to "
              "<state>/secure/env/<role>.env (docs/security.md)")
def up(secure: bool) -> None:
    """Start the local Kafka broker and Redis server (deploy/local; idempotent)."""
    if not secure:
        raise SystemExit(subprocess.call(["bash", str(_script()), "up"]))  # noqa: S603,S607
    if subprocess.call(["bash", str(_script()), "install"]) != 0:  # noqa: S603,S607 - redis-server, the jars
        raise SystemExit(1)
    _up_secure()



def _say(line: str) -> None:
    click.echo(f"shadowgate-local: {line}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def _passwords(folder: Path, kind: str, users: tuple[str, ...]) -> dict[str, str]:
    """Each user's password, generated on the first start and kept in ``folder`` (mode 0600)."""
    import secrets as token

    from shadowgate.commands.secured import write_secret

    passwords: dict[str, str] = {}
    for user in users:
        path = folder / f"{kind}-{user}.password"
        if not path.exists():
            write_secret(path, token.token_urlsafe(18) + "\n")
        passwords[user] = path.read_text().strip()
    return passwords


def _up_secure() -> None:
    """``up --secure`` (module doc): start, wait, create the topics, grant the ACLs, write the env files."""
    from governance.contract.connections import KafkaConnection, kafka_config
    from governance.contract.settings import KafkaSecurity
    from shadowgate.commands import secured

    repo, settings = _script().parents[2], load_settings()
    state = Path(os.environ.get("SHADOWGATE_STATE_DIR") or repo / ".local").resolve()
    kafka_port = int(os.environ.get("SHADOWGATE_KAFKA_PORT") or 9092)
    redis_port = int(os.environ.get("SHADOWGATE_REDIS_PORT") or 6379)
    jars = Path(os.environ.get("SHADOWGATE_KAFKA_JARS") or state / "kafka-jars")
    timeout_s = float(os.environ.get("SHADOWGATE_START_TIMEOUT_S") or 120)
    home, run, logs = state / "secure", state / "run", state / "logs"
    for folder in (run, logs, home / "secrets"):
        folder.mkdir(parents=True, exist_ok=True)
    (home / "secrets").chmod(0o700)
    kafka_pid, redis_pid, marker = run / "kafka.pid", run / "redis.pid", run / "secure"
    if (_alive(kafka_pid) or _alive(redis_pid)) and not marker.exists():
        raise ConfigError(f"the plain local servers are running (PID files in {run}): stop them with "
                          "`shadowgate down` before `shadowgate up --secure`")
    users = ("admin", *secured.ROLES)
    kafka_pw = _passwords(home / "secrets", "kafka", users)
    redis_pw = _passwords(home / "secrets", "redis", users)
    pki = secured.Pki.at(home / "pki")
    if not pki.exists():
        secured.make_pki(home / "pki", valid_days=365, name="shadowgate local CA")
        _say(f"made a CA and a server certificate for 127.0.0.1 in {home / 'pki'} (valid 365 days)")
    marker.write_text("SASL_SSL + TLS\n")

    if _alive(redis_pid):
        _say(f"Redis already running (pid {redis_pid.read_text().strip()})")
    else:
        if _port_open(redis_port):
            raise ConfigError(f"port {redis_port} is taken by another process; set SHADOWGATE_REDIS_PORT")
        acl = secured.write_secret(home / "users.acl", secured.redis_acl(redis_pw, settings.redis_prefix))
        (home / "redis-data").mkdir(exist_ok=True)
        _say(f"starting Redis (TLS only, ACL users) on 127.0.0.1:{redis_port}")
        subprocess.run(  # noqa: S603 - the system's redis-server
            [  # noqa: S607
             "redis-server", *secured.redis_tls_arguments(redis_port, pki, acl), "--dir", str(home / "redis-data"),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "yes",
             "--pidfile", str(redis_pid), "--logfile", str(logs / "redis.log")], check=True)  # fmt: skip
    if _alive(kafka_pid):
        _say(f"Kafka already running (pid {kafka_pid.read_text().strip()})")
    else:
        for port in (kafka_port, kafka_port + 1):
            if _port_open(port):
                raise ConfigError(f"port {port} (Kafka's, or its controller's at Kafka port + 1) is taken by "
                                  "another process; set SHADOWGATE_KAFKA_PORT")
        _start_kafka(home, jars, logs, kafka_pid, kafka_port, kafka_pw)

    admin = KafkaConnection(f"127.0.0.1:{kafka_port}", KafkaSecurity.model_validate({
        "security_protocol": "SASL_SSL", "sasl_mechanism": secured.MECHANISM, "sasl_username": "admin",
        "sasl_password_file": str(home / "secrets" / "kafka-admin.password"), "ssl_ca_file": str(pki.ca)}))
    _wait_ready(admin, redis_port, pki.ca, redis_pw["admin"], kafka_pid, logs, timeout_s)
    env_files = _grant_and_write(settings, admin, kafka_config(admin), home, pki, redis_port)
    _say(f"Kafka listens on 127.0.0.1:{kafka_port} (SASL_SSL, {secured.MECHANISM}; CA {pki.ca})")
    _say(f"Redis listens on rediss://127.0.0.1:{redis_port}/0 (TLS only, ACL users, default user off)")
    _say(f"users {', '.join(users)}: passwords in {home / 'secrets'} (mode 0600, never printed)")
    _say(f"each role's settings: {home / 'env'}/<role>.env ({', '.join(sorted(env_files))})")
    _say(f"e.g.  set -a; . {shlex.quote(str(env_files['operator']))}; set +a; shadowgate config show")
    _say(f"state, logs and PID files: {state}; stop with `shadowgate down`")


def _start_kafka(home: Path, jars: Path, logs: Path, pid_file: Path, port: int, passwords: dict[str, str]) -> None:
    from shadowgate.commands import secured

    props, data = home / "server.properties", home / "kafka-data"
    here = _script().parent
    java = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={here / 'log4j2.properties'}", "-cp", f"{jars}/*"]  # fmt: skip
    secured.write_secret(props, secured.kafka_properties(port=port, controller_port=port + 1, log_dir=data,
                                                         pki=secured.Pki.at(home / "pki"),
                                                         admin_password=passwords["admin"],
                                                         extra="log.retention.hours=840\n"))
    if not (data / "meta.properties").exists():
        _say(f"formatting KRaft storage in {data} with the SCRAM users")
        done = subprocess.run(  # noqa: S603 - java of this machine, the jars of deploy/local
            [*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", secured.cluster_id(), "-c", str(props),
             *secured.scram_arguments(passwords)], capture_output=True, check=False, timeout=180)  # fmt: skip
        if done.returncode != 0:  # its output names the users, not their passwords
            (logs / "kafka-format.log").write_bytes(done.stdout + done.stderr)
            raise ConfigError(f"formatting KRaft storage failed; see {logs / 'kafka-format.log'}")
    _say(f"starting Kafka (SASL_SSL, StandardAuthorizer) on 127.0.0.1:{port}")
    with (logs / "kafka.log").open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - java of this machine; outlives this command (`down` stops it)
            [*java, "kafka.Kafka", str(props)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # fmt: skip
    pid_file.write_text(f"{proc.pid}\n")


def _wait_ready(admin: KafkaConnection, redis_port: int, ca: Path, redis_admin: str, kafka_pid: Path, logs: Path,
                timeout_s: float) -> None:
    import redis
    from confluent_kafka.admin import AdminClient

    from governance.contract.connections import kafka_config

    deadline = time.monotonic() + timeout_s
    client = redis.Redis(host="127.0.0.1", port=redis_port, ssl=True, ssl_ca_certs=str(ca), username="admin",
                         password=redis_admin, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        while True:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"Redis did not answer on port {redis_port}; see {logs / 'redis.log'}")
            time.sleep(0.2)
    finally:
        client.close()
    probe = AdminClient({**kafka_config(admin), "log_level": 0})
    while True:
        try:
            if probe.list_topics(timeout=2).brokers:
                return
        except Exception:  # noqa: S110 - not up yet: any client error means "not yet"
            pass
        if not _alive(kafka_pid):
            raise ConfigError(f"Kafka exited during start; see {logs / 'kafka.log'}")
        if time.monotonic() > deadline:
            raise ConfigError(f"Kafka did not answer on 127.0.0.1 within {timeout_s:.0f} s; see "
                              f"{logs / 'kafka.log'}")
        time.sleep(1.0)


def _grant_and_write(settings: Settings, admin: KafkaConnection, admin_config: dict[str, Any], home: Path,
                     pki: Pki, redis_port: int) -> dict[str, Path]:
    """Create the topics, grant each role its ACLs (for the topic names and worker group in effect now) and
    write ``env/<role>.env``; returns the env files by role."""
    from shadowgate.commands import secured

    ensure_topics(admin, {**topic_specs(settings), f"{settings.topics.alerts}.dlq": (1, {})})
    for role, allowed in secured.role_grants(settings.topics, settings.consumer_group).items():
        secured.grant(admin_config, role, allowed)
    (home / "env").mkdir(exist_ok=True)
    files: dict[str, Path] = {}
    for role in ("admin", *secured.ROLES):
        env = {**secured.kafka_env(admin.hosts[0], role, home / "secrets" / f"kafka-{role}.password", pki.ca),
               **secured.redis_env(f"rediss://127.0.0.1:{redis_port}/0", role,
                                   home / "secrets" / f"redis-{role}.password", pki.ca, settings.redis_prefix)}
        path = home / "env" / f"{role}.env"
        path.write_text(f"# the settings of a shadowgate process of role {role} (shadowgate up --secure)\n"
                        + "".join(f"{name}={shlex.quote(value)}\n" for name, value in env.items()))
        files[role] = path
    return files


@click.command()
def down() -> None:
    """Stop the local Kafka broker and Redis server."""
    raise SystemExit(subprocess.call(["bash", str(_script()), "down"]))  # noqa: S603,S607


@click.group()
def topics() -> None:
    """Kafka topics shadowgate uses."""


@topics.command("create")
@click.option("--partitions", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="partitions of the scores and labels topics")
def topics_create(partitions: int) -> None:
    """Create every topic that does not exist yet (names from SHADOWGATE_TOPICS__*)."""
    settings = load_settings()
    specs = topic_specs(settings, partitions)
    created = ensure_topics(kafka_connection(settings), specs)
    for name in specs:
        click.echo(f"{'created' if name in created else 'exists '}  {name}")


@topics.command("list")
def topics_list() -> None:
    """Print the topic names in use and what each carries."""
    t = load_settings().topics
    rows = [
        (t.scores, "score events and envelopes from scoring services (key = request_id)"),
        (t.labels, "ground-truth labels (key = request_id)"),
        (t.dlq, "invalid messages: original bytes + reason + topic/partition/offset"),
        (t.gates, "signed GateReady / GateBlocked events"),
        (t.rollbacks, "signed RollbackTrigger events"),
        (t.alerts, "signed Alert events"),
        (t.approvals, "signed approvals and escalations"),
        (t.lifecycle, "signed, hash-chained audit log (infinite retention)"),
        (t.routing, "serving assignment per model (compacted)"),
    ]
    for name, what in rows:
        click.echo(f"{name:<24} {what}")
