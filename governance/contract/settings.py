"""Settings: one pydantic-settings model, read from ``SHADOWGATE_*`` environment variables.

Nothing reads the environment at import time: call :func:`load_settings` (or build
:class:`Settings` directly in tests). Secrets (Redis password in the URL) are masked in ``repr``.
Nested fields use ``__``: ``SHADOWGATE_TOPICS__SCORES=my.scores``.

Unknown configuration fails closed: :func:`load_settings` refuses any ``SHADOWGATE_*`` variable that is neither
a setting nor one of the few :data:`PROCESS_VARIABLES` read elsewhere, naming the nearest valid name, so a
misspelt or unsupported variable (``SHADOWGATE_KAFKA_SECURITY_PROTOCOL``) never leaves a user believing it
took effect. :func:`describe` gives the effective configuration with every secret masked
(``shadowgate config show``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from governance.errors import ConfigError

__all__ = [
    "PROCESS_VARIABLES",
    "KafkaSecurity",
    "RedisOptions",
    "Settings",
    "Topics",
    "check_environment",
    "describe",
    "known_variables",
    "load_settings",
    "mask_url",
]


class Topics(BaseModel):
    """Kafka topic names; every one is configurable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scores: str = "scores"
    labels: str = "labels"
    dlq: str = "scores.dlq"
    gates: str = "shadow.gates"
    rollbacks: str = "shadow.rollbacks"
    alerts: str = "shadow.alerts"
    approvals: str = "governance.approvals"
    commands: str = "governance.commands"
    lifecycle: str = "governance.lifecycle"
    routing: str = "model.routing"
    # Signed checkpoints of the audit log's head (seq + hash), compacted: the anchor `audit verify` checks.
    checkpoints: str = "governance.checkpoints"


class KafkaSecurity(BaseModel):
    """How every Kafka client of every process authenticates and encrypts (``SHADOWGATE_KAFKA__*``).

    One group for the worker, the governance consumer, the alert forwarder, the CLI, the SDK and
    ``RoutingClient``: :mod:`governance.contract.connections` turns it into librdkafka's configuration and into
    Faust/aiokafka's. A setting that the chosen protocol would ignore is refused (a CA file with PLAINTEXT
    would leave the user believing TLS is on).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security.protocol: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (with SASL_*): PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
    )
    sasl_username: str | None = Field(None, description="SASL user name (with SASL_*)")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret; prefer the _FILE form)")
    sasl_password_file: str | None = Field(None, description="file holding the SASL password (read at connect)")
    ssl_ca_file: str | None = Field(None, description="PEM CA bundle the broker certificates are checked "
                                    "against (with SSL / SASL_SSL); None = the system's")
    ssl_cert_file: str | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_file: str | None = Field(None, description="PEM private key of the client certificate")
    ssl_check_hostname: bool = Field(True, description="check that the broker's certificate names its host")

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @model_validator(mode="after")
    def _coherent(self) -> KafkaSecurity:
        p = "SHADOWGATE_KAFKA__"
        if not self.tls:
            for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{p}{name.upper()} is set but SHADOWGATE_KAFKA__SECURITY_PROTOCOL="
                                     f"{self.security_protocol} does not use TLS; set it to SSL or SASL_SSL")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError(f"{p}SSL_CERT_FILE and {p}SSL_KEY_FILE go together; set both or neither")
        if self.sasl:
            if not self.sasl_username:
                raise ValueError(f"{p}SASL_USERNAME is needed with SHADOWGATE_KAFKA__SECURITY_PROTOCOL="
                                 f"{self.security_protocol}")
            if (self.sasl_password is None) == (self.sasl_password_file is None):
                raise ValueError(f"set exactly one of {p}SASL_PASSWORD and {p}SASL_PASSWORD_FILE with "
                                 f"SHADOWGATE_KAFKA__SECURITY_PROTOCOL={self.security_protocol}")
        elif self.sasl_username or self.sasl_password is not None or self.sasl_password_file is not None:
            raise ValueError(f"{p}SASL_* is set but SHADOWGATE_KAFKA__SECURITY_PROTOCOL="
                             f"{self.security_protocol} does not use SASL; set it to SASL_SSL or SASL_PLAINTEXT")
        return self


class RedisOptions(BaseModel):
    """How every Redis client connects (``SHADOWGATE_REDIS__*``), beside ``SHADOWGATE_REDIS_URL``.

    The URL names the server and database (``rediss://`` for TLS); these add an ACL user and password kept out
    of the URL (a file or the environment), the TLS files, a Sentinel-managed primary, and timeouts and
    retries with exponential backoff (redis-py's own ``Retry``): one factory,
    :func:`governance.contract.connections.redis_client`, builds every client from them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = Field(None, description="Redis ACL user (a user in the URL wins)")
    password: SecretStr | None = Field(None, description="Redis password (secret; prefer the _FILE form)")
    password_file: str | None = Field(None, description="file holding the Redis password (read at connect)")
    ssl_ca_file: str | None = Field(None, description="PEM CA bundle for a rediss:// server; None = the system's")
    ssl_cert_file: str | None = Field(None, description="PEM client certificate for a rediss:// server")
    ssl_key_file: str | None = Field(None, description="PEM private key of the client certificate")
    ssl_check_hostname: bool = Field(True, description="check that the Redis certificate names its host")
    sentinels: str | None = Field(None, description="Sentinel hosts host:port,host:port: the primary is asked "
                                  "of them (the URL's host is then ignored, its database and scheme kept)")
    sentinel_service: str = Field("mymaster", description="the Sentinel service (primary) name")
    socket_timeout_s: float = Field(10.0, gt=0, description="a Redis command not answered this long fails")
    connect_timeout_s: float = Field(5.0, gt=0, description="a connection not made this long fails")
    retries: int = Field(3, ge=0, description="times a command is retried on a connection error or timeout")
    retry_backoff_s: float = Field(0.1, gt=0, description="first retry delay; doubles per retry (with jitter)")
    retry_backoff_max_s: float = Field(2.0, gt=0, description="longest retry delay")

    @model_validator(mode="after")
    def _coherent(self) -> RedisOptions:
        p = "SHADOWGATE_REDIS__"
        if self.password is not None and self.password_file is not None:
            raise ValueError(f"set at most one of {p}PASSWORD and {p}PASSWORD_FILE")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError(f"{p}SSL_CERT_FILE and {p}SSL_KEY_FILE go together; set both or neither")
        return self


class Settings(BaseSettings):
    """Every runtime setting of shadowgate, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="SHADOWGATE_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated "
                                 "(every one is used: clients try the next when one is away)")
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)  # type: ignore[arg-type]
    redis_url: SecretStr = Field(SecretStr("redis://127.0.0.1:6379/0"), description="Redis URL "
                                 "(rediss:// for TLS)")
    redis: RedisOptions = Field(default_factory=RedisOptions)  # type: ignore[arg-type]
    redis_prefix: str = Field("sg", description="prefix of every Redis key shadowgate writes")
    topics: Topics = Field(default_factory=Topics)
    consumer_group: str = "shadowgate-worker"
    join_window_s: float = Field(60.0, gt=0, description="event-time window to pair the two sides")
    max_pending_pairs: int = Field(200_000, gt=0, description="bound of the half-pair buffer per worker")
    label_horizon_s: float = Field(3 * 86400.0, gt=0, description="how long a pair waits for its label")
    max_message_bytes: int = Field(1_048_576, gt=0, description="larger messages go to the DLQ")
    gc_young_threshold: int = Field(
        50_000, ge=0, description="allocations between young garbage collections in the worker and replay "
        "(the interpreter's 700 costs the worker about 30 % of its time); 0 = leave the interpreter's default"
    )
    evaluate_interval_s: float = Field(1.0, gt=0, description="evaluator timer period")
    reevaluate_idle_s: float = Field(
        60.0, ge=0, description="re-evaluate a comparison whose newest event time stands still this often "
        "(wall-clock s), so late labels reach its gates; 0 = only when event time advances"
    )
    gate_republish_s: float = Field(
        900.0, ge=0, description="the worker publishes a gate decision that is not READY again, with its current "
        "figures, once the last one is this old (event time s), so `shadowgate model status` never shows figures "
        "older than this; 0 = only when the verdict changes"
    )
    minute_close_s: float | None = Field(
        None, ge=0, description="a minute of event time is judged by the rollback triggers once the comparison's "
        "newest event is this far past its end (None: the join window, so its orphans are counted first); shorter "
        "fires an unsustained trigger (P99 latency) sooner, judging each minute before its late orphans"
    )
    policy_path: str | None = Field(None, description="policy YAML; None = the shipped default")
    keys_dir: str | None = Field(None, description="signing keys directory")
    catalog_path: str | None = Field(None, description="governed feature catalog YAML; None = the shipped one")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics port, 0 = off")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines of the long-running processes: text, or json (one object per line)"
    )
    shutdown_timeout_s: float = Field(
        10.0, gt=0, description="after SIGTERM, the governance consumer finishes the input in hand, writes its "
        "pending summaries and releases its lease within this; past it, it exits without them (nothing is lost: "
        "what it did not commit is read again)"
    )
    rejection_summary_s: float = Field(
        5.0, gt=0, description="the governance consumer writes rejected inputs as one summary audit entry per "
        "input partition per this many seconds (counted per reason, with samples), never one entry each"
    )
    command_skew_s: float = Field(
        300.0, ge=0, description="how far a command's issued_at may lie ahead of the governance consumer's clock"
    )
    keys_check_s: float = Field(
        2.0, gt=0, description="how often running processes look for changed key and trust-store files (stat only)"
    )
    keys_reload_s: float = Field(
        300.0, gt=0, description="how often running processes reload keys and trust stores even when no file changed"
    )
    # -- the worker under faults (docs/reliability.md, "The worker") ------------------------------------
    instance_id: str | None = Field(
        None, min_length=1, max_length=249, description="static membership of this worker in its consumer group "
        "(Kafka group.instance.id): restarted within the session timeout it takes its partitions back without "
        "a rebalance; one per process (two processes with one id fence each other until one stops); "
        "None = dynamic membership (every start and stop rebalances the group)"
    )
    session_timeout_s: float = Field(
        10.0, ge=6.0, le=1800.0, description="a worker silent this long is taken out of its group and its "
        "partitions move to the others (Kafka session.timeout.ms; the broker's minimum is 6 s)"
    )
    heartbeat_interval_s: float = Field(
        2.0, gt=0, description="how often a worker tells the group coordinator it lives (under a third of "
        "the session timeout)"
    )
    batch_max_records: int = Field(
        20_000, gt=0, description="most records in one batch of the worker (a backlog is taken in consume() "
        "calls of 2,000 up to this or 32 MiB); each batch costs one Redis apply and one synchronous commit"
    )
    fold_threads: int = Field(
        default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=64, description="partitions of one "
        "batch the worker folds at once (decoding, pairing and the label join run in the native core without "
        "the GIL); default: the cores, at most 4"
    )
    retry_backoff_s: float = Field(
        0.25, gt=0, description="first delay before a failed batch is tried again; it doubles per attempt"
    )
    retry_backoff_max_s: float = Field(5.0, gt=0, description="longest delay between two tries of a failed batch")
    unready_after_s: float = Field(
        30.0, gt=0, description="a batch not done after this long (failing or blocked) makes the worker "
        "unready (/readyz answers 503) until it is done"
    )
    dlq_timeout_s: float = Field(
        10.0, gt=0, description="how long the dead-letter producer tries to deliver a batch's dead letters "
        "before the batch is tried again"
    )
    max_event_lead_s: float = Field(
        30.0, ge=0, description="events (and labels) dated more than this ahead of the worker's clock are "
        "dead letters; must stay under the join window, or one early event would close it for the rest"
    )
    max_event_lag_s: float = Field(
        15 * 86400.0, gt=0, description="events (and labels) dated more than this before the worker's clock "
        "are dead letters (15 days: longer than the longest window, 14 d, and than Kafka keeps labels)"
    )

    def redis_url_value(self) -> str:
        return self.redis_url.get_secret_value()


#: ``SHADOWGATE_*`` variables read outside :class:`Settings`: by the local servers, the CLI and the tests.
PROCESS_VARIABLES: Mapping[str, str] = {
    "SHADOWGATE_STATE_DIR": "where `make up` / `shadowgate up` keep server data, logs and PID files (.local)",
    "SHADOWGATE_KAFKA_PORT": "port of the local Kafka broker of `make up` (9092)",
    "SHADOWGATE_REDIS_PORT": "port of the local Redis server of `make up` (6379)",
    "SHADOWGATE_KAFKA_JARS": "cache of the Kafka broker jars `make up` assembles ($SHADOWGATE_STATE_DIR/kafka-jars)",
    "SHADOWGATE_START_TIMEOUT_S": "how long `make up` waits for a server to answer (120)",
    "SHADOWGATE_PQC_PHASE": "the PQC migration phase the CLI enforces (--phase; default: today's by the schedule)",
    "SHADOWGATE_IDENTITY": "the approver identity `shadowgate model` commands sign as (--identity)",
    "SHADOWGATE_ALERTS_CONFIG": "the alert forwarder's config file (`shadowgate alerts forward --config`)",
    "SHADOWGATE_REQUIRE_INFRA": "tests only: a missing Kafka or Redis server fails the run instead of skipping (CI)",
}


def known_variables() -> dict[str, str]:
    """Every ``SHADOWGATE_*`` variable shadowgate reads, with what it sets."""
    known: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                known[f"SHADOWGATE_{name.upper()}__{sub.upper()}"] = subfield.description or f"{name}.{sub}"
        else:
            known[f"SHADOWGATE_{name.upper()}"] = field.description or name
    known.update(PROCESS_VARIABLES)
    return known


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """ConfigError naming the first unknown ``SHADOWGATE_*`` variable and the nearest valid one."""
    env = os.environ if environ is None else environ
    known = known_variables()
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith("SHADOWGATE_") or upper in known:
            continue
        # Compare what follows the common prefix, so the prefix alone never makes two names look alike.
        suffixes = {name.removeprefix("SHADOWGATE_"): name for name in known}
        close = difflib.get_close_matches(upper.removeprefix("SHADOWGATE_"), list(suffixes), n=1, cutoff=0.6)
        hint = f"did you mean {suffixes[close[0]]}? " if close else ""
        raise ConfigError(
            f"{name} is not a shadowgate setting; {hint}unset it (`shadowgate config show` lists every setting)"
        )


def mask_url(url: str) -> str:
    """``url`` with its password (and a user name beside it) replaced by ``****``: safe to print."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:****" if parts.username and parts.password is not None else "****"
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


def describe(settings: Settings) -> dict[str, Any]:
    """The effective configuration as JSON types, every secret masked (``****``)."""
    doc = settings.model_dump(mode="json")
    doc["redis_url"] = mask_url(settings.redis_url_value())
    for group, key in (("kafka", "sasl_password"), ("redis", "password")):
        if doc[group][key] is not None:
            doc[group][key] = "****"
    return doc


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; a bad value, or an unknown ``SHADOWGATE_*`` variable, raises
    ConfigError naming the variable."""
    check_environment()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if msg.startswith("SHADOWGATE_") or msg.startswith("set "):  # a group's own check names its settings
            raise ConfigError(msg) from None
        loc = "__".join(str(p) for p in err["loc"]).upper()
        raise ConfigError(f"SHADOWGATE_{loc}: {msg}") from None
