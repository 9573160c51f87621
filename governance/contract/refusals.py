"""Why a secured Kafka refused a client, in one line naming the setting to fix.

librdkafka reports a wrong password, a failed TLS handshake or a plaintext client at a TLS listener as "all
brokers down" on the call, with the cause only in its error callback. :func:`check_kafka` (run by every
long-running process before it starts, and by the CLI before it creates topics) collects the callback's
errors and turns them into an :class:`~governance.errors.InfrastructureError` such as::

    Kafka at 10.0.0.5:9093 refused the SASL login of user 'worker' (SCRAM-SHA-512): check
    SHADOWGATE_KAFKA__SASL_USERNAME and SHADOWGATE_KAFKA__SASL_PASSWORD_FILE / _PASSWORD

:func:`denied` words an authorization failure (no ACL for the principal) the same way; :func:`read_denied` does it
for a consumer, whose refusal of its group comes without a topic (librdkafka: "FindCoordinator response error:
Group authorization failed" on a message of topic None). No message holds a
secret: only hosts, the user name, the mechanism and the setting names.
"""

from __future__ import annotations

import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from governance.contract.connections import (
    KafkaConnection,
    KafkaTarget,
    RedisConnection,
    RedisTarget,
    kafka_config,
    redis_client,
)
from governance.errors import InfrastructureError

__all__ = ["check_kafka", "check_redis", "denied", "read_denied", "refusal"]

_P = "SHADOWGATE_KAFKA__"
# Errors that will not pass by waiting: the call fails at once with them.
_FINAL = frozenset({KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL})
_DENIED = {KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic", KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
           KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
           KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional id"}


def _conn(target: KafkaTarget) -> KafkaConnection:
    return target if isinstance(target, KafkaConnection) else KafkaConnection(target)


def refusal(target: KafkaTarget, errors: list[KafkaError]) -> str:
    """The one-line reason a connection to ``target`` failed, from the errors librdkafka reported."""
    conn = _conn(target)
    sec = conn.security
    where = f"Kafka at {','.join(conn.hosts)}"
    for error in errors:
        text = error.str()
        if error.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            if "Unsupported SASL mechanism" in text:
                offered = text.split("supported mechanisms:", 1)[-1].split("(", 1)[0].strip()
                return (f"{where} does not offer SASL mechanism {sec.sasl_mechanism} (it offers {offered}): "
                        f"set {_P}SASL_MECHANISM")
            return (f"{where} refused the SASL login of user {sec.sasl_username!r} ({sec.sasl_mechanism}): check "
                    f"{_P}SASL_USERNAME and {_P}SASL_PASSWORD_FILE / {_P}SASL_PASSWORD")
        if error.code() == KafkaError._SSL:
            if "certificate verify failed" in text or "could not be verified" in text:
                return (f"{where}: the broker's TLS certificate could not be verified: set {_P}SSL_CA_FILE to the "
                        f"CA that signed it (or check {_P}SSL_CHECK_HOSTNAME)")
            return f"{where}: TLS handshake failed ({text.split(': ', 1)[-1]}): check {_P}SSL_* and the listener"
    if sec.tls:
        return (f"{where} does not answer with {_P}SECURITY_PROTOCOL={sec.security_protocol}: is it up, and is "
                "the listener TLS?")
    return (f"{where} does not answer with {_P}SECURITY_PROTOCOL={sec.security_protocol}: is it up? If its listener "
            "expects TLS or SASL (e.g. SASL_SSL), set that protocol")


def denied(target: KafkaTarget, error: KafkaError, what: str) -> str | None:
    """``what`` was refused for want of an ACL: a line naming the principal and the setting; None when
    ``error`` is not an authorization failure."""
    kind = _DENIED.get(error.code())
    if kind is None:
        return None
    sec = _conn(target).security
    principal = f"User:{sec.sasl_username}" if sec.sasl else f"the {sec.security_protocol} principal"
    return (f"Kafka refused {what} to {principal} ({_P}SASL_USERNAME): no ACL on the {kind} allows it; "
            "grant the role's ACLs (docs/security.md)")


def read_denied(target: KafkaTarget, error: KafkaError, *, group: str, topics: list[str]) -> str | None:
    """A consumer of ``group`` reading ``topics`` was refused for want of an ACL: :func:`denied`'s line naming the
    group or the topics; None when ``error`` is not an authorization failure."""
    kind = _DENIED.get(error.code())
    if kind == "group":
        return denied(target, error, f"the consumer group {group}")
    return denied(target, error, f"reading topic {', '.join(topics) or '(none)'}")


def check_kafka(target: KafkaTarget, timeout_s: float = 15.0) -> None:
    """Return once a broker of ``target`` answers a metadata request; else InfrastructureError with
    :func:`refusal`'s reason: at once for a refused login or TLS handshake, after ``timeout_s`` otherwise."""
    errors: list[KafkaError] = []
    config: dict[str, Any] = {**kafka_config(target), "error_cb": errors.append, "log_level": 0}
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if admin.list_topics(timeout=1.0).brokers:
                return
        except KafkaException:
            pass
        admin.poll(0.1)  # serves the error callback: what went wrong is only said there
        if any(e.code() in _FINAL for e in errors) or time.monotonic() > deadline:
            raise InfrastructureError(refusal(target, errors))


def check_redis(target: RedisTarget, prefix: str) -> None:
    """Return once Redis answers ``EXISTS <prefix>:probe`` as the configured user; else InfrastructureError in one
    line naming the setting: a refused login, a TLS server reached without TLS (or the reverse), keys of
    ``prefix`` outside the user's ACL."""
    import redis

    conn = target if isinstance(target, RedisConnection) else RedisConnection(target)
    options = conn.options.model_copy(update={"retries": 0})  # a refusal does not pass by retrying
    client = redis_client(RedisConnection(conn.url, options))
    where = f"Redis at {conn}"
    try:
        client.exists(f"{prefix}:probe")
    except redis.AuthenticationError:
        raise InfrastructureError(f"{where} refused the login of user {conn.options.username or 'default'!r}: check "
                                  "SHADOWGATE_REDIS__USERNAME and SHADOWGATE_REDIS__PASSWORD_FILE / "
                                  "SHADOWGATE_REDIS__PASSWORD") from None
    except redis.exceptions.NoPermissionError:
        raise InfrastructureError(f"{where}: the ACL of user {conn.options.username or 'default'!r} does not allow "
                                  f"keys {prefix}:* (SHADOWGATE_REDIS_PREFIX, SHADOWGATE_REDIS__USERNAME): grant "
                                  "~<prefix>* (docs/security.md)") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc):
            raise InfrastructureError(f"{where} requires a login: set SHADOWGATE_REDIS__USERNAME and "
                                      "SHADOWGATE_REDIS__PASSWORD_FILE") from None
        raise InfrastructureError(f"{where} answered: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        hint = ("does it speak TLS? check SHADOWGATE_REDIS__SSL_CA_FILE" if conn.url.startswith("rediss://")
                else "if it expects TLS, use rediss:// in SHADOWGATE_REDIS_URL")
        raise InfrastructureError(f"{where} does not answer ({str(exc).splitlines()[0][:160]}): is it up? "
                                  f"{hint}") from None
    finally:
        client.close()
