"""A secured Kafka (SASL_SSL, SCRAM users, the standard ACL authorizer) and a secured Redis (ACL users, TLS only),
private to a test, for the least-privilege tests (tests/test_secure_servers.py, docs/security.md).

* :func:`make_pki`: a self-made CA and one server certificate for 127.0.0.1 / localhost (Python
  ``cryptography``), PEM files in a directory.
* :class:`SecureKafka`: a single-node KRaft broker (the jars of ``deploy/local``, like
  :class:`tests.fault_servers.KafkaBroker`) whose one client listener is SASL_SSL. Its SCRAM users are
  created at format time (``StorageTool format --add-scram``): ``admin`` (a super user), and one user per role
  of :data:`ROLES`; ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``, so a principal can do
  only what an ACL allows. :meth:`SecureKafka.grant` adds the ACLs of docs/security.md for a role's topics.
  The controller listener is PLAINTEXT on 127.0.0.1 only (its principal, ANONYMOUS, is a super user: only the
  broker's own controller speaks there).
* :class:`SecureRedis`: ``redis-server`` with TLS only (``port 0``, ``tls-port``), the default user off and one
  ACL user per role, each limited to keys of its prefix.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fault_servers import KafkaBroker, RedisServer, _cluster_id

__all__ = ["ROLES", "Pki", "SecureKafka", "SecureRedis", "Secured", "make_pki"]

#: Roles with a SCRAM user of their own (password: :attr:`SecureKafka.passwords`); ``intruder`` gets no ACL.
ROLES = ("worker", "governance", "operator", "publisher", "forwarder", "intruder")


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    keystore: Path  # key + certificate in one PEM file: Kafka's PEM keystore


def make_pki(root: Path) -> Pki:
    """A CA and a server certificate (SAN 127.0.0.1, localhost) signed by it, as PEM files in ``root``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shadowgate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pki = Pki(root / "ca.pem", root / "server.pem", root / "server.key", root / "keystore.pem")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem))
    pki.key.write_bytes(key_pem)
    pki.keystore.write_bytes(key_pem + cert.public_bytes(pem))
    for path in (pki.key, pki.keystore):
        path.chmod(0o600)
    return pki


class SecureKafka(KafkaBroker):
    """A private SASL_SSL broker with the standard authorizer (module doc)."""

    name = "kafka-secure"

    def __init__(self, workdir: Path, pki: Pki) -> None:
        super().__init__(workdir)
        self.pki = pki
        self.passwords = {role: secrets.token_urlsafe(12) for role in ("admin", *ROLES)}
        self.mechanism = "SCRAM-SHA-512"

    def client(self, role: str, **overrides: Any) -> dict[str, Any]:
        """librdkafka settings of ``role`` (``admin`` or one of :data:`ROLES`) for this broker."""
        return {"bootstrap.servers": self.bootstrap, "security.protocol": "SASL_SSL",
                "sasl.mechanism": self.mechanism, "sasl.username": role, "sasl.password": self.passwords[role],
                "ssl.ca.location": str(self.pki.ca), **overrides}  # fmt: skip

    def password_file(self, role: str) -> Path:
        path = self.workdir / f"{role}.password"
        path.write_text(self.passwords[role] + "\n")
        path.chmod(0o600)
        return path

    def env(self, role: str) -> dict[str, str]:
        """The ``SHADOWGATE_KAFKA*`` variables a process of ``role`` runs with."""
        return {"SHADOWGATE_KAFKA_BOOTSTRAP": self.bootstrap, "SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
                "SHADOWGATE_KAFKA__SASL_MECHANISM": self.mechanism, "SHADOWGATE_KAFKA__SASL_USERNAME": role,
                "SHADOWGATE_KAFKA__SASL_PASSWORD_FILE": str(self.password_file(role)),
                "SHADOWGATE_KAFKA__SSL_CA_FILE": str(self.pki.ca)}  # fmt: skip

    def _prepare(self) -> None:
        if self.properties.exists():
            return
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
                f'password="{self.passwords["admin"]}";')  # fmt: skip
        self.properties.write_text(
            "process.roles=broker,controller\nnode.id=1\n"
            f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}\n"
            f"listeners=SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}\n"
            f"advertised.listeners=SASL_SSL://127.0.0.1:{self.port}\n"
            "controller.listener.names=CONTROLLER\n"
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL\n"
            "inter.broker.listener.name=SASL_SSL\n"
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256\n"
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n"
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}\n"
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}\n"
            f"ssl.keystore.type=PEM\nssl.keystore.location={self.pki.keystore}\n"
            f"ssl.truststore.type=PEM\nssl.truststore.location={self.pki.ca}\n"
            "ssl.client.auth=none\n"
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
            "super.users=User:admin;User:ANONYMOUS\nallow.everyone.if.no.acl.found=false\n"
            f"log.dirs={self.log_dir}\nnum.partitions=4\n"
            "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n"
            "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
            "share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n"
            "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=false\n"
        )
        scram = []
        for role, password in self.passwords.items():
            scram += ["--add-scram", f"SCRAM-SHA-512=[name={role},password={password}]",
                      "--add-scram", f"SCRAM-SHA-256=[name={role},password={password}]"]  # fmt: skip
        out = subprocess.run(  # noqa: S603 - java of this machine, the jars of deploy/local
            [*self._java(), "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(),
             "-c", str(self.properties), *scram],
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
        from confluent_kafka.admin import (
            AclBinding,
            AclOperation,
            AclPermissionType,
            AdminClient,
            ResourcePatternType,
            ResourceType,
        )

        principal, allow, lit = f"User:{role}", AclPermissionType.ALLOW, ResourcePatternType.LITERAL
        bindings = []
        for topic in read:
            bindings += [AclBinding(ResourceType.TOPIC, topic, lit, principal, "*", op, allow)
                         for op in (AclOperation.READ, AclOperation.DESCRIBE)]
        for topic in write:
            bindings += [AclBinding(ResourceType.TOPIC, topic, lit, principal, "*", op, allow)
                         for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
        for group in groups:
            bindings.append(AclBinding(ResourceType.GROUP, group, lit, principal, "*", AclOperation.READ, allow))
        for group in group_prefixes:
            bindings.append(AclBinding(ResourceType.GROUP, group, ResourcePatternType.PREFIXED, principal, "*",
                                       AclOperation.READ, allow))
        for txn in transactional_ids:
            bindings += [AclBinding(ResourceType.TRANSACTIONAL_ID, txn, lit, principal, "*", op, allow)
                         for op in (AclOperation.WRITE, AclOperation.DESCRIBE)]
        unique = list({(b.restype, b.name, b.resource_pattern_type, b.operation): b for b in bindings}.values())
        admin = AdminClient({**self.client("admin"), "log_level": 0})
        for future in admin.create_acls(unique, request_timeout=30).values():
            future.result(timeout=30)


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
        path = self.workdir / f"redis-{role}.password"
        path.write_text(self.passwords[role] + "\n")
        path.chmod(0o600)
        return path

    def env(self, role: str) -> dict[str, str]:
        return {"SHADOWGATE_REDIS_URL": self.url, "SHADOWGATE_REDIS__USERNAME": role,
                "SHADOWGATE_REDIS__PASSWORD_FILE": str(self.password_file(role)),
                "SHADOWGATE_REDIS__SSL_CA_FILE": str(self.pki.ca), "SHADOWGATE_REDIS_PREFIX": self.prefix}

    def client(self, role: str = "admin", **kwargs: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url, username=role, password=self.passwords[role],
                                    ssl_ca_certs=str(self.pki.ca), socket_timeout=5.0, **kwargs)

    def _command(self) -> list[str]:
        acl = self.workdir / "users.acl"
        lines = ["user default off", f"user admin on >{self.passwords['admin']} ~* &* +@all"]
        # Every role but the intruder may use the keys of its deployment's prefix (Lua scripts included),
        # nothing of the server's administration.
        for role in ROLES:
            keys = "" if role == "intruder" else f"~{self.prefix}*"
            if role == "governance":  # its single-active lease, scoped to the audit log, not to a prefix
                keys += " ~shadowgate:audit-lease:*"
            lines.append(f"user {role} on >{self.passwords[role]} {keys} +@all -@admin -@dangerous")
        acl.write_text("\n".join(lines) + "\n")
        acl.chmod(0o600)
        return ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.pki.cert), "--tls-key-file", str(self.pki.key),
                "--tls-ca-cert-file", str(self.pki.ca), "--tls-auth-clients", "no", "--aclfile", str(acl),
                "--dir", str(self.workdir), "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip

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
