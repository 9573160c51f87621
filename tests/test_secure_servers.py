"""Least privilege against a real secured Kafka (SASL_SSL, SCRAM, standard ACL authorizer) and Redis (ACL
users, TLS only): the roles of docs/security.md, each with only its ACLs, and the refusals.

The servers are private to this module (fixture ``secured``, tests/secure_servers.py); each test has its own
topics, consumer group and Redis prefix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from governance.contract.connections import KafkaConnection, RedisConnection, redis_client
from governance.contract.kafkaio import SyncProducer
from governance.contract.settings import KafkaSecurity, RedisOptions, Settings, Topics
from governance.contract.topics import ensure_topics, topic_specs
from governance.errors import DeliveryError
from shadowgate.commands.secured import grant as secured_grant
from shadowgate.commands.secured import role_grants
from shadowgate.sdk import ScorePublisher
from tests.secure_servers import Secured
from tests.worker_kit import probe, traffic

REPO = Path(__file__).resolve().parent.parent


def _conn(secured: Secured, role: str, **security: Any) -> KafkaConnection:
    k = secured.kafka
    values: dict[str, Any] = {"security_protocol": "SASL_SSL", "sasl_mechanism": k.mechanism, "sasl_username": role,
                              "sasl_password_file": str(k.password_file(role)), "ssl_ca_file": str(secured.pki.ca)}
    values.update(security)
    return KafkaConnection(k.bootstrap, KafkaSecurity(**values))


class Deployment:
    """One test's topics, group and prefix on the secured servers, with the ACLs of docs/security.md."""

    def __init__(self, secured: Secured, tmp_path: Path) -> None:
        self.secured, self.tmp_path = secured, tmp_path
        u = uuid.uuid4().hex[:8]
        self.topics = Topics(scores=f"scores.{u}", labels=f"labels.{u}", dlq=f"dlq.{u}", gates=f"gates.{u}",
                             rollbacks=f"rollbacks.{u}", alerts=f"alerts.{u}", approvals=f"approvals.{u}",
                             commands=f"commands.{u}", lifecycle=f"lifecycle.{u}", routing=f"routing.{u}",
                             checkpoints=f"checkpoints.{u}")
        self.group, self.prefix = f"g-{u}", f"{secured.redis.prefix}{u}"
        settings = Settings(topics=self.topics)  # type: ignore[call-arg]
        ensure_topics(_conn(secured, "admin"), {**topic_specs(settings, 2), f"{self.topics.alerts}.dlq": (1, {})})
        self.grant()

    def grant(self) -> None:
        """The ACLs of docs/security.md (``role_grants``, the ones ``shadowgate up --secure`` grants)."""
        for role, allowed in role_grants(self.topics, self.group).items():
            secured_grant(self.secured.kafka.client("admin"), role, allowed)

    def env(self, role: str, *, redis_role: str | None = None) -> dict[str, str]:
        """The environment of a process of ``role``: its SASL user and password file, the CA, Redis as
        ``redis_role`` (default: the same role), this deployment's topics, group and prefix."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWGATE_")}
        env.update(self.secured.kafka.env(role))
        env.update(self.secured.redis.env(redis_role or role))
        env.update({"SHADOWGATE_REDIS_PREFIX": self.prefix, "SHADOWGATE_CONSUMER_GROUP": self.group,
                    "SHADOWGATE_METRICS_PORT": "0", "PYTHONPATH": str(REPO)})
        for name, value in self.topics.model_dump().items():
            env[f"SHADOWGATE_TOPICS__{name.upper()}"] = value
        return env


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "shadowgate", *args], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


@pytest.fixture
def deployment(secured: Secured, tmp_path: Path) -> Deployment:
    return Deployment(secured, tmp_path)


def test_each_role_writes_its_topics_and_only_them(deployment: Deployment, secured: Secured) -> None:
    t = deployment.topics
    with ScorePublisher(_conn(secured, "publisher"), t.scores) as publisher:
        for event in traffic(20, minutes_ago=5):
            if event.pop("kind") == "score":
                publisher.publish(event)
        assert publisher.flush(30) == 0
    assert publisher.stats.failed == 0 and publisher.stats.delivered > 0

    allowed = {"worker": t.gates, "governance": t.lifecycle, "operator": t.commands, "publisher": t.labels}
    for role, topic in allowed.items():
        producer = SyncProducer(_conn(secured, role), timeout_s=30)
        try:
            assert producer.send(topic, b"{}", b"k")[1] >= 0
        finally:
            producer.close()
    # Only the governance consumer writes the audit log; nobody without an ACL writes anything.
    for role, topic in [("worker", t.lifecycle), ("publisher", t.lifecycle), ("operator", t.lifecycle),
                        ("publisher", t.gates), ("intruder", t.scores)]:
        producer = SyncProducer(_conn(secured, role), timeout_s=30)
        try:
            with pytest.raises(DeliveryError) as refused:
                producer.send(topic, b"{}", b"k")
        finally:
            producer.close()
        assert str(refused.value) == (
            f"Kafka refused a write to topic {topic} to User:{role} (SHADOWGATE_KAFKA__SASL_USERNAME): no ACL on "
            "the topic allows it; grant the role's ACLs (docs/security.md)")


def _one_line_refusal(done: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert done.returncode != 0
    err = done.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    return err


@pytest.mark.parametrize(
    ("change", "names"),
    [({"SHADOWGATE_KAFKA__SASL_PASSWORD_FILE": "wrong"}, "refused the SASL login of user 'operator' (SCRAM-SHA-512): "
      "check SHADOWGATE_KAFKA__SASL_USERNAME and SHADOWGATE_KAFKA__SASL_PASSWORD_FILE"),
     ({"SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SHADOWGATE_KAFKA__SSL_CA_FILE": None},
      "does not answer with SHADOWGATE_KAFKA__SECURITY_PROTOCOL=SASL_PLAINTEXT: is it up? If its listener expects "
      "TLS or SASL"),
     ({"SHADOWGATE_KAFKA__SSL_CA_FILE": None}, "the broker's TLS certificate could not be verified: set "
      "SHADOWGATE_KAFKA__SSL_CA_FILE"),
     ({"SHADOWGATE_KAFKA__SASL_MECHANISM": "PLAIN"}, "does not offer SASL mechanism PLAIN (it offers "
      "SCRAM-SHA-512,SCRAM-SHA-256): set SHADOWGATE_KAFKA__SASL_MECHANISM")],
)
def test_a_refused_connection_is_one_line_naming_the_setting(
    deployment: Deployment, secured: Secured, tmp_path: Path, change: dict[str, str | None], names: str
) -> None:
    env = deployment.env("operator")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = str(wrong) if value == "wrong" else value
    err = _one_line_refusal(_cli(env, "topics", "create"), secured.kafka.passwords["operator"], "not-the-password")
    assert names in err
    assert err.startswith(f"shadowgate: error: Kafka at {secured.kafka.bootstrap}")


def test_a_principal_without_the_acl_is_refused_naming_it(deployment: Deployment, secured: Secured) -> None:
    env = deployment.env("intruder")
    err = _one_line_refusal(_cli(env, "topics", "create"), secured.kafka.passwords["intruder"])
    assert f"Kafka refused creating topic {deployment.topics.scores} to User:intruder " in err
    assert "(SHADOWGATE_KAFKA__SASL_USERNAME): no ACL on the topic allows it" in err


def test_redis_refuses_a_wrong_password_plaintext_and_foreign_keys(deployment: Deployment, secured: Secured,
                                                                   tmp_path: Path) -> None:
    import redis

    r = secured.redis
    good = RedisOptions(username="worker", password_file=str(r.password_file("worker")),  # type: ignore[call-arg]
                        ssl_ca_file=str(secured.pki.ca), retries=0)
    client = redis_client(RedisConnection(r.url, good))
    assert client.set(f"{deployment.prefix}:probe", b"1") and client.get(f"{deployment.prefix}:probe") == b"1"
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("elsewhere", b"1")
    client.close()
    wrong = tmp_path / "w"
    wrong.write_text("nope")
    for url, options in [(r.url, good.model_copy(update={"password_file": str(wrong)})),
                         (r.url.replace("rediss://", "redis://"), good.model_copy(update={"ssl_ca_file": None}))]:
        bad = redis_client(RedisConnection(url, options))
        with pytest.raises(redis.exceptions.RedisError):
            bad.ping()
        bad.close()


@pytest.mark.parametrize(
    ("change", "names"),
    [({"SHADOWGATE_REDIS__PASSWORD_FILE": "wrong"}, "refused the login of user 'worker': check "
      "SHADOWGATE_REDIS__USERNAME and SHADOWGATE_REDIS__PASSWORD_FILE"),
     ({"SHADOWGATE_REDIS_URL": "plain", "SHADOWGATE_REDIS__SSL_CA_FILE": None},
      "if it expects TLS, use rediss:// in SHADOWGATE_REDIS_URL"),
     ({"SHADOWGATE_REDIS__USERNAME": "intruder", "SHADOWGATE_REDIS__PASSWORD_FILE": "intruder-file"},
      "the ACL of user 'intruder' does not allow keys")],
)
def test_a_worker_refused_by_redis_stops_in_one_line_naming_the_setting(
    deployment: Deployment, secured: Secured, tmp_path: Path, change: dict[str, str | None], names: str
) -> None:
    from datetime import UTC, datetime

    from governance.crypto import Keyring

    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    env = {**deployment.env("worker"), "SHADOWGATE_KEYS_DIR": str(keys)}
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    replacements = {"wrong": str(wrong), "plain": secured.redis.url.replace("rediss://", "redis://"),
                    "intruder": "intruder", "intruder-file": str(secured.redis.password_file("intruder"))}
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = replacements[value]
    done = _cli(env, "worker", "--loglevel", "warning", timeout=120)
    err = _one_line_refusal(done, secured.redis.passwords["worker"], secured.redis.passwords["intruder"])
    assert err.startswith("shadowgate: error: Redis at rediss://127.0.0.1:") or "redis://127.0.0.1" in err
    assert names in err


def _wait(predicate: Any, timeout_s: float, what: str, log: Path | None = None,
          procs: tuple[subprocess.Popen[bytes], ...] = ()) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{what} not within {timeout_s:.0f} s\n{tail}")


def _status(port: int, path: str = "/readyz") -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "shadowgate", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(30)


def test_the_whole_stack_runs_with_its_least_privileges(deployment: Deployment, secured: Secured,
                                                        tmp_path: Path) -> None:
    """Worker, governance consumer, alert forwarder, SDK and CLI, each with its own user and ACLs, over SASL_SSL
    and rediss://."""
    from datetime import UTC, datetime

    from governance.crypto import Keyring
    from streams.state.redis_store import RedisWindowStore
    from streams.worker.reading import read_windows
    from tests.fault_servers import free_port
    from tests.worker_kit import counts

    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    events = traffic(150, minutes_ago=10, span_s=300)
    scores = sum(1 for e in events if e["kind"] == "score")
    worker_port, governance_port = free_port(), free_port()
    worker_env = {**deployment.env("worker"), "SHADOWGATE_KEYS_DIR": str(keys),
                  "SHADOWGATE_METRICS_PORT": str(worker_port), "SHADOWGATE_LOG_FORMAT": "json"}
    governance_env = {**deployment.env("governance"), "SHADOWGATE_KEYS_DIR": str(keys),
                      "SHADOWGATE_METRICS_PORT": str(governance_port), "SHADOWGATE_REJECTION_SUMMARY_S": "0.5"}
    worker = _start(worker_env, tmp_path / "worker.log", "worker", "--loglevel", "info")
    governance = _start(governance_env, tmp_path / "governance.log", "governance", "--log-format", "json")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _wait(lambda: probe(worker_port)[0] == 200, 120, "worker ready", tmp_path / "worker.log", (worker,))
        _wait(lambda: probe(governance_port)[0] == 200, 120, "governance consumer ready",
              tmp_path / "governance.log", (governance,))
        with ScorePublisher(_conn(secured, "publisher"), deployment.topics.scores) as publisher:
            for event in events:
                if event.pop("kind") == "score":
                    publisher.publish(event)
        assert publisher.stats.failed == 0

        admin_redis = secured.redis.client("admin")
        store = RedisWindowStore(admin_redis, deployment.prefix)

        def folded() -> bool:
            return counts(read_windows(store, model="fraud-risk", windows=["24h"]))[0] * 2 == scores

        _wait(folded, 120, "the worker folded every pair into the TLS + ACL Redis", tmp_path / "worker.log",
              (worker,))
        # The worker (gates topic) may write what the governance consumer rejects: junk, summarised in the log.
        gates = SyncProducer(_conn(secured, "worker"), timeout_s=30)
        gates.send(deployment.topics.gates, b"not an event", b"k")
        gates.close()
        operator = {**deployment.env("operator"), "SHADOWGATE_KEYS_DIR": str(keys)}

        def verified() -> str | None:
            done = _cli(operator, "audit", "verify")
            ok = done.returncode == 0 and "audit log OK: " in done.stdout and "OK: 0 entries" not in done.stdout
            return done.stdout if ok else None

        _wait(verified, 90, "an audit entry the operator verifies", tmp_path / "governance.log", (governance,))

        # The alert forwarder reads its four sources and keeps its positions with its own user.
        forwarder_port, alerts_config = free_port(), tmp_path / "alerts.yaml"
        alerts_config.write_text(yaml.safe_dump({
            "group": f"shadowgate-alerts-{deployment.group}", "dead_letter_topic": f"{deployment.topics.alerts}.dlq",
            "sources": ["alerts", "gates", "rollbacks", "audit"],
            "receivers": [{"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/hook",
                           "secret_file": str(secured.kafka.password_file("forwarder"))}]}))
        forwarder = _start({**deployment.env("forwarder"), "SHADOWGATE_KEYS_DIR": str(keys)},
                           tmp_path / "forwarder.log", "alerts", "forward", "--config", str(alerts_config),
                           "--port", str(forwarder_port))
        procs.append(forwarder)
        _wait(lambda: _status(forwarder_port) == 200, 90, "the alert forwarder ready", tmp_path / "forwarder.log",
              (forwarder,))
        assert _stop(forwarder) == 0

    finally:
        for proc in procs:  # started later in the test: stopped whatever happened
            _stop(proc)
        worker_rc, governance_rc = _stop(worker), _stop(governance)
    assert governance_rc == 0, (tmp_path / "governance.log").read_text()[-3000:]
    lines = (tmp_path / "governance.log").read_text().splitlines()
    assert any('"logger":"shadowgate.governance"' in line and "SIGTERM" in line for line in lines)
    for secret in (secured.kafka.passwords["governance"], secured.redis.passwords["governance"]):
        assert secret not in "".join(lines)
    assert worker_rc in (0, -signal.SIGTERM), (tmp_path / "worker.log").read_text()[-3000:]
    worker_log = (tmp_path / "worker.log").read_text()
    json_lines = [orjson.loads(line) for line in worker_log.splitlines() if line.startswith('{"ts"')]
    assert len(json_lines) > 3 and {"ts", "level", "logger", "msg"} <= set(json_lines[0])
    for secret in (secured.kafka.passwords["worker"], secured.redis.passwords["worker"]):
        assert secret not in worker_log


def _signed_assignment(keys: Path, model: str, production: str) -> bytes:
    """A routing assignment signed with the governance key of ``keys`` (what the consumer publishes)."""
    from datetime import UTC, datetime

    from governance.crypto import Keyring
    from governance.lifecycle.routing import Assignment, encode_assignment

    now = datetime.now(UTC)
    return encode_assignment(Assignment(model=model, production=production, seq=1, issued_at=now),
                             Keyring(keys).signer(now), now)


def test_routing_client_reads_the_routing_topic_as_the_publisher(deployment: Deployment, secured: Secured,
                                                                  tmp_path: Path) -> None:
    """A scoring service's RoutingClient, logged in as the publisher, reads what the governance consumer's user
    wrote to the routing topic; a principal with Read on the topic but no ACL on a group is refused in one line
    naming the group and the setting (not librdkafka's "reading None[0]: ... Group authorization failed")."""
    from datetime import UTC, datetime

    from governance.crypto import Keyring
    from governance.errors import InfrastructureError
    from shadowgate.routing_client import RoutingClient

    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    trust = Keyring(keys).trust_store()
    governance = SyncProducer(_conn(secured, "governance"), timeout_s=30)
    try:
        governance.send(deployment.topics.routing, _signed_assignment(keys, "fraud", "3.1.0"), b"fraud")
    finally:
        governance.close()
    client = RoutingClient(_conn(secured, "publisher"), deployment.topics.routing, trust)
    try:
        client.refresh(timeout_s=30)
        assignment = client.assignment("fraud")
        assert assignment is not None and assignment.production == "3.1.0" and client.rejected == 0
        assert client.route("fraud", "r-1") == ("3.1.0", "production")
    finally:
        client.close()

    secured.kafka.grant("intruder", read=(deployment.topics.routing,))  # the topic, no group
    with pytest.raises(InfrastructureError) as refused:
        stranger = RoutingClient(_conn(secured, "intruder"), deployment.topics.routing, trust)
        try:
            stranger.refresh(timeout_s=30)
        finally:
            stranger.close()
    line = str(refused.value)
    assert line.startswith("Kafka refused the consumer group shadowgate-routing-client-"), line
    assert line.endswith(" to User:intruder (SHADOWGATE_KAFKA__SASL_USERNAME): no ACL on the group allows it; "
                         "grant the role's ACLs (docs/security.md)"), line


def test_serve_is_ready_with_the_status_role(deployment: Deployment, secured: Secured, tmp_path: Path) -> None:
    """``shadowgate serve`` as the status user (its ACLs of docs/security.md): /readyz 200 once Redis answers
    over TLS and both feeds follow their topics; as a user without them it stays unready, saying why."""
    from datetime import UTC, datetime

    from governance.crypto import Keyring
    from tests.fault_servers import free_port

    keys = tmp_path / "keys"
    Keyring(keys).generate(datetime.now(UTC))
    runs = {}
    for role in ("status", "intruder"):
        port = free_port()
        env = {**deployment.env(role, redis_role="status"), "SHADOWGATE_KEYS_DIR": str(keys)}
        runs[role] = (port, _start(env, tmp_path / f"serve-{role}.log", "serve", "--port", str(port)))
    try:
        port, proc = runs["status"]
        _wait(lambda: _status(port) == 200, 90, "serve ready as the status user", tmp_path / "serve-status.log",
              (proc,))
        port, proc = runs["intruder"]
        _wait(lambda: _status(port) == 503, 60, "serve answering as the intruder", tmp_path / "serve-intruder.log",
              (proc,))
        time.sleep(3)  # the feeds had time to be refused
        import urllib.error
        import urllib.request

        with pytest.raises(urllib.error.HTTPError) as unready:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)  # noqa: S310
        problems = orjson.loads(unready.value.read())["problems"]
        assert problems and all("not following yet" in p for p in problems), problems
    finally:
        for _, proc in runs.values():
            _stop(proc)
    for secret in (secured.kafka.passwords["status"], secured.redis.passwords["status"]):
        assert secret not in (tmp_path / "serve-status.log").read_text()
