"""A secured Kafka (SASL_SSL, SCRAM users, the standard ACL authorizer) and a secured Redis (ACL users, TLS only),
private to a test, for the least-privilege tests (tests/test_secure_servers.py, docs/security.md).

What the servers are made of (the certificates, ``server.properties``, the SCRAM users, the ACLs of each role,
the Redis ACL file) is :mod:`shadowgate.commands.secured`, shared with ``shadowgate up --secure``; here they run
as restartable private servers on free ports (:mod:`tests.fault_servers`):

* :class:`SecureKafka`: a single-node KRaft broker whose SCRAM users are ``admin`` (a super user) and one per
  role of :data:`ROLES` (the roles of docs/security.md and ``intruder``, who gets no ACL).
  :meth:`SecureKafka.grant` adds ACLs for a role.
* :class:`SecureRedis`: ``redis-server`` with TLS only, the default user off and one ACL user per role, each
  limited to keys of its prefix (``intruder``, the publisher and the alert forwarder: no keys).
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowgate.commands import secured
from shadowgate.commands.secured import Pki, cluster_id, make_pki
from tests.fault_servers import KafkaBroker, RedisServer

__all__ = ["ROLES", "Pki", "SecureKafka", "SecureRedis", "Secured", "make_pki"]

#: Roles with a SCRAM user of their own (password: :attr:`SecureKafka.passwords`); ``intruder`` gets no ACL.
ROLES = (*secured.ROLES, "intruder")


class SecureKafka(KafkaBroker):
    """A private SASL_SSL broker with the standard authorizer (module doc)."""

    name = "kafka-secure"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.passwords = {role: secrets.token_urlsafe(12) for role in ("admin", *ROLES)}
        self.mechanism = secured.MECHANISM

    def client(self, role: str, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings of ``role`` (``admin`` or one of :data:`ROLES`) for this broker."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": self.mechanism, "sasl.username": role, "sasl.password": self.passwords[role],
                "ssl.ca.location": str(self.pki.ca), **overrides}  # fmt: skip

    def password_file(self, role: str) -> Path:
        return secured.write_secret(self.workdir / f"{role}.password", self.passwords[role] + "\n")

    def env(self, role: str) -> dict[str, str]:
        """The ``SHADOWGATE_KAFKA*`` variables a process of ``role`` runs with."""
        return secured.kafka_env(self.bootstrap, role, self.password_file(role), self.pki.ca)

    def _prepare(self) -> None:
        if self.properties.exists():
            return
        self.properties.write_text(secured.kafka_properties(
            port=self.port, controller_port=self.controller_port, log_dir=self.log_dir, pki=self.pki,
            admin_password=self.passwords["admin"]))
        out = subprocess.run(  # noqa: S603 - java of this machine, the jars of deploy/local
            [*self._java(), "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id(),
             "-c", str(self.properties), *secured.scram_arguments(self.passwords)],
            capture_output=True, check=False, timeout=180,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"formatting KRaft storage failed: {out.stdout.decode()}{out.stderr.decode()}")

    def _answers(self) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            md = AdminClient({**self.client("admin"), "log_level": 0}).list_topics(timeout=2)
        except Exception:  # not up yet: any client error means "not yet"
            return False
        return bool(md.brokers)

    def grant(self, role: str, *, read: tuple[str, ...] = (), write: tuple[str, ...] = (),
              groups: tuple[str, ...] = (), group_prefixes: tuple[str, ...] = (),
              transactional_ids: tuple[str, ...] = ()) -> None:
        """Allow ``User:role`` to read and write the named topics, join the groups, use the transactional ids."""
        secured.grant(self.client("admin"), role, secured.Grant(read, write, groups, group_prefixes,
                                                                transactional_ids))


class SecureRedis(RedisServer):
    """A private ``redis-server`` that speaks TLS only, with ACL users (module doc)."""

    name = "redis-secure"

    def __init__(self, workdir: Path, pki: Pki, prefix: str) -> None:
        super().__init__(workdir)
        self.pki, self.prefix = pki, prefix
        self.passwords = {role: secrets.token_urlsafe(12) for role in ("admin", *ROLES)}

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def password_file(self, role: str) -> Path:
        return secured.write_secret(self.workdir / f"redis-{role}.password", self.passwords[role] + "\n")

    def env(self, role: str) -> dict[str, str]:
        return secured.redis_env(self.url, role, self.password_file(role), self.pki.ca, self.prefix)

    def client(self, role: str = "admin", **kwargs: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url, username=role, password=self.passwords[role],
                                    ssl_ca_certs=str(self.pki.ca), socket_timeout=5.0, **kwargs)

    def _command(self) -> list[str]:
        keyless = (*secured.WITHOUT_REDIS_KEYS, "intruder")
        acl = secured.write_secret(self.workdir / "users.acl",
                                   secured.redis_acl(self.passwords, self.prefix, keyless=keyless))
        return ["redis-server", *secured.redis_tls_arguments(self.port, self.pki, acl), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip

    def _answers(self) -> bool:
        import redis

        client = self.client(socket_connect_timeout=1.0)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


@dataclass(frozen=True)
class Secured:
    """The secured servers of one test module (fixture ``secured``)."""

    kafka: SecureKafka
    redis: SecureRedis
    pki: Pki
