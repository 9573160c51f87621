"""How every process connects to Kafka and Redis: one place that turns settings into client configuration.

* :class:`KafkaConnection`: the bootstrap hosts (all of them) and the :class:`KafkaSecurity` group.
  :func:`kafka_config` gives librdkafka's (confluent-kafka) configuration, what every consumer, producer and
  admin client of every process starts from; :func:`faust_broker` gives Faust/aiokafka's (the broker list
  and ``broker_credentials``). Both read a password file when called, so a rotated secret is taken at the
  next connect.
* :class:`RedisConnection`: the URL and the :class:`RedisOptions` group. :func:`redis_client` is the one
  factory of Redis clients: ACL user and password, TLS files for ``rediss://``, a Sentinel-managed primary,
  socket and connect timeouts, and redis-py's own ``Retry`` with exponential backoff on connection errors
  and timeouts, so a failover or a dropped connection is ridden out.

Secrets never reach a string: ``str()`` of a connection is its hosts (the Redis URL with its password
masked), which is what error messages and logs print; a password lives only in the dict handed to the
client. Functions taking a connection also take a plain bootstrap string or URL (PLAINTEXT, no options),
what tests and local tools pass.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from governance.contract.settings import KafkaSecurity, RedisOptions, Settings, mask_url
from governance.errors import ConfigError

if TYPE_CHECKING:
    import redis

__all__ = ["FaustBroker", "KafkaConnection", "KafkaTarget", "RedisConnection", "RedisTarget", "faust_broker",
           "kafka_config", "kafka_connection", "redis_client", "redis_connection"]


@dataclass(frozen=True)
class KafkaConnection:
    """Where Kafka is (``bootstrap``: ``host:port,host:port``) and how to authenticate; ``str()`` is safe."""

    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.bootstrap

    @property
    def hosts(self) -> list[str]:
        return [h.strip() for h in self.bootstrap.split(",") if h.strip()]


@dataclass(frozen=True)
class RedisConnection:
    """Which Redis (``url``) and how to connect; ``str()`` is the URL with its password masked."""

    url: str
    options: RedisOptions = field(default_factory=RedisOptions)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.options.sentinels:
            return f"Sentinel {self.options.sentinels} service {self.options.sentinel_service}"
        return mask_url(self.url)

    def __repr__(self) -> str:
        return f"RedisConnection({str(self)!r})"


KafkaTarget = KafkaConnection | str
RedisTarget = RedisConnection | str


def kafka_connection(settings: Settings) -> KafkaConnection:
    """The Kafka connection every process of ``settings`` uses."""
    return KafkaConnection(settings.kafka_bootstrap, settings.kafka)


def redis_connection(settings: Settings) -> RedisConnection:
    """The Redis connection every process of ``settings`` uses."""
    return RedisConnection(settings.redis_url_value(), settings.redis)


def _kafka(target: KafkaTarget) -> KafkaConnection:
    return target if isinstance(target, KafkaConnection) else KafkaConnection(target)


def _read_secret(path: str, setting: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{setting}: {path} is empty")
    return value


def _readable(path: str | None, setting: str) -> str | None:
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"{setting}: no such file {Path(path).resolve()}")
    return path


def _sasl_password(security: KafkaSecurity) -> str:
    if security.sasl_password_file is not None:
        return _read_secret(security.sasl_password_file, "SHADOWGATE_KAFKA__SASL_PASSWORD_FILE")
    assert security.sasl_password is not None  # noqa: S101 - KafkaSecurity's validator requires one of the two
    return security.sasl_password.get_secret_value()


def kafka_config(target: KafkaTarget) -> dict[str, Any]:
    """librdkafka's connection settings (``bootstrap.servers``, ``security.protocol``, SASL, TLS) for
    ``target``: every confluent-kafka client starts from this dict and adds its own settings."""
    conn = _kafka(target)
    sec = conn.security
    config: dict[str, Any] = {"bootstrap.servers": ",".join(conn.hosts), "security.protocol": sec.security_protocol}
    if sec.tls:
        p = "SHADOWGATE_KAFKA__"
        ca = _readable(sec.ssl_ca_file, f"{p}SSL_CA_FILE")
        if ca is not None:
            config["ssl.ca.location"] = ca
        cert = _readable(sec.ssl_cert_file, f"{p}SSL_CERT_FILE")
        key = _readable(sec.ssl_key_file, f"{p}SSL_KEY_FILE")
        if cert is not None and key is not None:
            config["ssl.certificate.location"], config["ssl.key.location"] = cert, key
        config["ssl.endpoint.identification.algorithm"] = "https" if sec.ssl_check_hostname else "none"
        config["enable.ssl.certificate.verification"] = True
    if sec.sasl:
        config["sasl.mechanism"] = sec.sasl_mechanism
        config["sasl.username"] = sec.sasl_username
        config["sasl.password"] = _sasl_password(sec)
    return config


def _ssl_context(ca: str | None, cert: str | None, key: str | None, check_hostname: bool,
                 prefix: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_readable(ca, f"{prefix}SSL_CA_FILE"))
    if cert is not None and key is not None:
        try:
            context.load_cert_chain(_readable(cert, f"{prefix}SSL_CERT_FILE") or cert,
                                    _readable(key, f"{prefix}SSL_KEY_FILE"))
        except ssl.SSLError as exc:
            raise ConfigError(f"{prefix}SSL_CERT_FILE / {prefix}SSL_KEY_FILE: not a certificate and its key: "
                              f"{exc.reason or exc}") from None
    context.check_hostname = check_hostname
    return context


@dataclass(frozen=True)
class FaustBroker:
    """What ``faust.App`` takes: ``broker`` (every host, ``kafka://`` URLs) and ``broker_credentials``."""

    urls: list[str]
    credentials: Any


def faust_broker(target: KafkaTarget) -> FaustBroker:
    """Faust/aiokafka's configuration for ``target``: the broker list (every bootstrap host: Faust splits
    a list of ``kafka://`` URLs into aiokafka's ``bootstrap_servers``) and ``faust.SASLCredentials`` /
    ``faust.SSLCredentials`` (None for PLAINTEXT)."""
    import faust  # only the worker builds a Faust app: the SDK never imports Faust

    conn = _kafka(target)
    sec = conn.security
    urls = [f"kafka://{host}" for host in conn.hosts]
    context = (_ssl_context(sec.ssl_ca_file, sec.ssl_cert_file, sec.ssl_key_file, sec.ssl_check_hostname,
                            "SHADOWGATE_KAFKA__") if sec.tls else None)  # fmt: skip
    credentials: Any = None
    if sec.sasl:
        credentials = faust.SASLCredentials(username=sec.sasl_username, password=_sasl_password(sec),
                                            ssl_context=context, mechanism=sec.sasl_mechanism)
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return FaustBroker(urls, credentials)


def _redis_kwargs(options: RedisOptions) -> dict[str, Any]:
    from redis.backoff import EqualJitterBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    kwargs: dict[str, Any] = {
        "socket_timeout": options.socket_timeout_s,
        "socket_connect_timeout": options.connect_timeout_s,
        "retry": Retry(EqualJitterBackoff(cap=options.retry_backoff_max_s, base=options.retry_backoff_s),
                       options.retries, supported_errors=(RedisConnectionError, RedisTimeoutError)),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if options.username is not None:
        kwargs["username"] = options.username
    if options.password_file is not None:
        kwargs["password"] = _read_secret(options.password_file, "SHADOWGATE_REDIS__PASSWORD_FILE")
    elif options.password is not None:
        kwargs["password"] = options.password.get_secret_value()
    return kwargs


def _redis_tls(options: RedisOptions) -> dict[str, Any]:
    p = "SHADOWGATE_REDIS__"
    tls: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": options.ssl_check_hostname}
    if options.ssl_ca_file is not None:
        tls["ssl_ca_certs"] = _readable(options.ssl_ca_file, f"{p}SSL_CA_FILE")
    if options.ssl_cert_file is not None:
        tls["ssl_certfile"] = _readable(options.ssl_cert_file, f"{p}SSL_CERT_FILE")
        tls["ssl_keyfile"] = _readable(options.ssl_key_file, f"{p}SSL_KEY_FILE")
    return tls


def redis_client(target: RedisTarget) -> redis.Redis[bytes]:
    """The one factory of Redis clients (module doc). Nothing connects before the first command."""
    import redis as redis_lib

    conn = target if isinstance(target, RedisConnection) else RedisConnection(target)
    options = conn.options
    kwargs = _redis_kwargs(options)
    tls = conn.url.startswith("rediss://")
    if not tls and (options.ssl_ca_file or options.ssl_cert_file):
        raise ConfigError("SHADOWGATE_REDIS__SSL_* is set but SHADOWGATE_REDIS_URL is not rediss://; "
                          "use rediss:// for TLS")
    if tls:
        kwargs.update(_redis_tls(options))
    if options.sentinels:
        from redis.sentinel import Sentinel

        hosts = []
        for item in options.sentinels.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"SHADOWGATE_REDIS__SENTINELS: {item.strip()!r} is not host:port")
            hosts.append((host, int(port)))
        path = conn.url.split("://", 1)[-1].partition("/")[2].split("?")[0]
        db = int(path) if path.isdigit() else 0
        sentinel_kwargs = {k: v for k, v in kwargs.items() if k not in ("retry", "retry_on_error")}
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, ssl=tls, db=db, **kwargs)
        client: redis_lib.Redis[bytes] = sentinel.master_for(options.sentinel_service, redis_class=redis_lib.Redis)
        return client
    try:
        return redis_lib.Redis.from_url(conn.url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"SHADOWGATE_REDIS_URL: {exc} ({mask_url(conn.url)})") from None
