"""One Kafka and one Redis client configuration for every process (governance/contract/connections.py).

Pure checks of what the settings turn into; tests/test_secure_servers.py runs the processes against a real
SASL_SSL + ACL Kafka and an ACL + TLS Redis.
"""

from __future__ import annotations

from pathlib import Path

import faust
import pytest
import redis
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.utils.urls import urllist
from pydantic import ValidationError

from governance.contract.connections import (
    KafkaConnection,
    RedisConnection,
    faust_broker,
    kafka_config,
    kafka_connection,
    redis_client,
    redis_connection,
)
from governance.contract.settings import KafkaSecurity, RedisOptions, Settings, load_settings
from governance.errors import ConfigError
from streams.worker.clients import consumer_config, dead_letter_config


def _sasl(tmp_path: Path, **extra: object) -> KafkaSecurity:
    secret = tmp_path / "kafka.password"
    secret.write_text("s3cret-kafka\n")
    return KafkaSecurity(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="worker",
                         sasl_password_file=str(secret), **extra)  # type: ignore[arg-type]


def test_plaintext_keeps_every_bootstrap_host() -> None:
    config = kafka_config("127.0.0.1:1, 127.0.0.1:9092")
    assert config == {"bootstrap.servers": "127.0.0.1:1,127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    broker = faust_broker("127.0.0.1:1,127.0.0.1:9092")
    # What Faust hands aiokafka: both hosts, not only the first.
    assert server_list(urllist(broker.urls, default_scheme="kafka"), 9092) == ["127.0.0.1:1", "127.0.0.1:9092"]
    assert broker.credentials is None


def test_sasl_ssl_reaches_librdkafka_and_aiokafka_alike(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("unused")
    conn = KafkaConnection("k1:9093,k2:9093", _sasl(tmp_path, ssl_ca_file=str(ca), ssl_check_hostname=False))
    config = kafka_config(conn)
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.mechanism"] == "SCRAM-SHA-256"
    assert (config["sasl.username"], config["sasl.password"]) == ("worker", "s3cret-kafka")
    assert config["ssl.ca.location"] == str(ca) and config["ssl.endpoint.identification.algorithm"] == "none"
    # Every process's clients start from this dict: the worker's consumer and dead-letter producer too.
    settings = Settings(kafka_bootstrap=conn.bootstrap, kafka=conn.security)
    for derived in (consumer_config(settings), dead_letter_config(settings)):
        assert {k: derived[k] for k in config} == config


def test_faust_gets_sasl_credentials_with_an_ssl_context(tmp_path: Path) -> None:
    conn = KafkaConnection("k1:9093,k2:9093", _sasl(tmp_path, ssl_check_hostname=False))
    broker = faust_broker(conn)
    assert isinstance(broker.credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(broker.credentials)
    assert auth["security_protocol"] == "SASL_SSL" and auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("worker", "s3cret-kafka")
    assert auth["ssl_context"].check_hostname is False
    assert broker.urls == ["kafka://k1:9093", "kafka://k2:9093"]


def test_ssl_alone_gives_faust_ssl_credentials() -> None:
    broker = faust_broker(KafkaConnection("k1:9093", KafkaSecurity(security_protocol="SSL")))  # type: ignore[call-arg]
    assert isinstance(broker.credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(broker.credentials)["security_protocol"] == "SSL"


def test_secrets_are_never_in_a_string(tmp_path: Path) -> None:
    conn = KafkaConnection("k1:9093", KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                                                    sasl_password="hunter2"))  # type: ignore[arg-type]
    assert str(conn) == "k1:9093"
    assert "hunter2" not in repr(conn)
    assert "hunter2" not in repr(Settings(kafka=conn.security))
    rconn = RedisConnection("redis://app:hunter2@r1:6379/0", RedisOptions(password="hunter3"))  # type: ignore[arg-type]
    assert "hunter2" not in str(rconn) + repr(rconn) and "hunter3" not in repr(rconn.options)


@pytest.mark.parametrize(
    ("env", "message"),
    [({"SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
      "SHADOWGATE_KAFKA__SASL_USERNAME is needed with SHADOWGATE_KAFKA__SECURITY_PROTOCOL=SASL_SSL"),
     ({"SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "SHADOWGATE_KAFKA__SASL_USERNAME": "w"},
      "set exactly one of SHADOWGATE_KAFKA__SASL_PASSWORD and SHADOWGATE_KAFKA__SASL_PASSWORD_FILE"),
     ({"SHADOWGATE_KAFKA__SSL_CA_FILE": "/ca.pem"},
      "SHADOWGATE_KAFKA__SSL_CA_FILE is set but SHADOWGATE_KAFKA__SECURITY_PROTOCOL=PLAINTEXT does not use TLS"),
     ({"SHADOWGATE_KAFKA__SASL_USERNAME": "w"},
      "SHADOWGATE_KAFKA__SASL_\\* is set but SHADOWGATE_KAFKA__SECURITY_PROTOCOL=PLAINTEXT does not use SASL"),
     ({"SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL2"}, "^SHADOWGATE_KAFKA__SECURITY_PROTOCOL: Input should be"),
     ({"SHADOWGATE_REDIS__SSL_CERT_FILE": "/c.pem"}, "SHADOWGATE_REDIS__SSL_CERT_FILE and SHADOWGATE_REDIS__SSL_KEY")],
)
def test_incoherent_security_settings_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_a_missing_password_file_names_its_setting(tmp_path: Path) -> None:
    conn = KafkaConnection("k1:9093", KafkaSecurity(security_protocol="SASL_PLAINTEXT", sasl_username="u",
                                                    sasl_password_file=str(tmp_path / "nope")))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^SHADOWGATE_KAFKA__SASL_PASSWORD_FILE: cannot read .*nope"):
        kafka_config(conn)
    with pytest.raises(ConfigError, match=r"^SHADOWGATE_REDIS__PASSWORD_FILE: cannot read"):
        redis_client(RedisConnection("redis://r:6379/0",
                                     RedisOptions(password_file=str(tmp_path / "nope"))))  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"^SHADOWGATE_KAFKA__SSL_CA_FILE: no such file"):
        kafka_config(KafkaConnection("k:1", KafkaSecurity(security_protocol="SSL",
                                                          ssl_ca_file=str(tmp_path / "ca.pem"))))  # type: ignore[call-arg]


def test_redis_client_carries_acl_timeouts_and_retry_with_backoff(tmp_path: Path) -> None:
    secret = tmp_path / "redis.password"
    secret.write_text("s3cret-redis\n")
    options = RedisOptions(username="worker", password_file=str(secret), socket_timeout_s=3.0,  # type: ignore[call-arg]
                           connect_timeout_s=1.5, retries=5, retry_backoff_s=0.05, retry_backoff_max_s=0.8)
    client = redis_client(redis_connection(Settings(redis_url="redis://r1:6390/3", redis=options)))  # type: ignore[arg-type]
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("worker", "s3cret-redis", 3)
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (3.0, 1.5)
    retry = kwargs["retry"]
    assert retry._retries == 5
    # Exponential, capped: redis-py's EqualJitterBackoff gives between half and all of min(cap, base * 2**n).
    delays = [retry._backoff.compute(n) for n in range(8)]
    for n, delay in enumerate(delays):
        full = min(0.8, 0.05 * 2**n)
        assert full / 2 <= delay <= full
    client.close()


def test_rediss_gets_the_tls_files_and_redis_refuses_them_without_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    client = redis_client(RedisConnection("rediss://r1:6390/0", RedisOptions(ssl_ca_file=str(ca))))  # type: ignore[call-arg]
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)
    with pytest.raises(ConfigError, match="SHADOWGATE_REDIS__SSL_\\* is set but SHADOWGATE_REDIS_URL is not rediss://"):
        redis_client(RedisConnection("redis://r1:6390/0", RedisOptions(ssl_ca_file=str(ca))))  # type: ignore[call-arg]


def test_sentinels_give_a_client_of_the_named_primary() -> None:
    options = RedisOptions(sentinels="s1:26379, s2:26380", sentinel_service="shadowgate")  # type: ignore[call-arg]
    client = redis_client(RedisConnection("redis://ignored:1/2", options))
    pool = client.connection_pool
    assert pool.service_name == "shadowgate"  # type: ignore[attr-defined]
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
            for c in pool.sentinel_manager.sentinels] == [("s1", 26379), ("s2", 26380)]  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    with pytest.raises(ConfigError, match="SHADOWGATE_REDIS__SENTINELS: 's3' is not host:port"):
        redis_client(RedisConnection("redis://x/0", RedisOptions(sentinels="s3")))  # type: ignore[call-arg]


def test_settings_give_the_connections() -> None:
    settings = Settings(kafka_bootstrap="a:1,b:2")  # type: ignore[call-arg]
    assert kafka_connection(settings).hosts == ["a:1", "b:2"]
    assert redis_connection(settings).url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ValidationError):
        KafkaSecurity(security_protocol="SSL", ssl_cert_file="c.pem")  # type: ignore[call-arg]


def test_a_worker_given_a_dead_first_host_uses_the_next(kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    """The worker's Faust shell once connected to ``kafka://{first host}`` only and crashed on ``127.0.0.1:1,...``;
    every client now gets every host."""
    import uuid

    from tests.fault_servers import free_port
    from tests.worker_kit import make_env, probe, publish, settled, traffic, wait_for

    env = make_env(f"127.0.0.1:1,{kafka_bootstrap}", redis_url, uuid.uuid4().hex[:10], tmp_path, partitions=2)
    port = free_port()
    proc = env.start_worker(tmp_path, metrics_port=port)
    try:
        wait_for(lambda: probe(port)[0] == 200, 120, "the worker ready", env)
        events = traffic(60, minutes_ago=5, span_s=120)
        scores = sum(1 for e in events if e["kind"] == "score")
        labels = sum(1 for e in events if e["kind"] == "label")
        publish(env, events)
        settled(env, (scores // 2, labels), "every pair folded")
        assert proc.poll() is None
    finally:
        env.stop_all()
