"""What a secured Kafka (SASL_SSL, SCRAM users, the standard ACL authorizer) and a secured Redis (ACL users, TLS
only) are made of: one implementation for ``shadowgate up --secure`` (:mod:`shadowgate.commands.infra`) and the
test fixtures (``tests/secure_servers.py``), so the servers the tests prove are the servers users start.

* :func:`make_pki`: a self-made CA and one server certificate for 127.0.0.1 / localhost (Python
  ``cryptography``), PEM files in a directory (keys mode 0600).
* :func:`kafka_properties` and :func:`scram_arguments`: a single-node KRaft broker whose one client listener is
  SASL_SSL; its SCRAM users (SHA-512 and SHA-256) are created at format time (``StorageTool format
  --add-scram``); ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``, so a principal can do only
  what an ACL allows. The controller listener is PLAINTEXT on 127.0.0.1 only (its principal, ANONYMOUS, is a
  super user: only the broker's own controller speaks there).
* :func:`role_grants` and :func:`grant`: the per-role ACLs of docs/security.md, for a deployment's topic names
  and worker group.
* :func:`redis_acl` and :func:`redis_tls_arguments`: ``redis-server`` with TLS only (``port 0``, ``tls-port``),
  the default user off and one ACL user per role, each limited to keys of its prefix.
* :func:`kafka_env` and :func:`redis_env`: the ``SHADOWGATE_*`` settings a process of a role runs with; the
  passwords stay in files (:func:`write_secret`, mode 0600), never in the settings, never printed.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from governance.contract.settings import Topics
from governance.service.transactions import transactional_id

__all__ = ["MECHANISM", "ROLES", "WITHOUT_REDIS_KEYS", "Grant", "Pki", "cluster_id", "grant", "kafka_env",
           "kafka_properties", "make_pki", "redis_acl", "redis_env", "redis_tls_arguments", "role_grants",
           "scram_arguments", "write_secret"]

#: The roles of docs/security.md, each with a SCRAM user and a Redis ACL user of its own (``admin`` besides).
ROLES = ("worker", "governance", "operator", "publisher", "forwarder", "status")
#: The SASL mechanism clients log in with (the broker offers SCRAM-SHA-512 and SCRAM-SHA-256).
MECHANISM = "SCRAM-SHA-512"
#: Roles that never touch Redis (docs/security.md): their Redis users have no keys.
WITHOUT_REDIS_KEYS = ("publisher", "forwarder")
#: The lease the governance consumer holds in Redis is scoped to the audit log, not to a prefix.
_LEASE_KEYS = "~shadowgate:audit-lease:*"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    keystore: Path  # key + certificate in one PEM file: Kafka's PEM keystore

    @classmethod
    def at(cls, root: Path) -> Pki:
        return cls(root / "ca.pem", root / "server.pem", root / "server.key", root / "keystore.pem")

    def exists(self) -> bool:
        return all(path.exists() for path in (self.ca, self.cert, self.key, self.keystore))


def make_pki(root: Path, *, valid_days: int = 2, name: str = "shadowgate test CA") -> Pki:
    """A CA and a server certificate (SAN 127.0.0.1, localhost) signed by it, as PEM files in ``root``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pki = Pki.at(root)
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.cert.write_bytes(cert.public_bytes(pem))
    write_secret(pki.key, key_pem)
    write_secret(pki.keystore, key_pem + cert.public_bytes(pem))
    return pki


def write_secret(path: Path, content: str | bytes) -> Path:
    """Write ``content`` to ``path`` readable by its owner only (mode 0600 from the start, never wider)."""
    data = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)
    return path


def cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (what ``StorageTool random-uuid`` gives),
    never starting with "-" (Kafka's own Uuid.randomUuid avoids it too: ``-t -x...`` reads as an option; one in
    64 ids failed a CI run that way)."""
    while True:
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster.startswith("-"):
            return cluster


def kafka_properties(*, port: int, controller_port: int, log_dir: Path, pki: Pki, admin_password: str,
                     extra: str = "") -> str:
    """``server.properties`` of a single-node KRaft broker with one SASL_SSL client listener (module doc)."""
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" '
            f'password="{admin_password}";')  # fmt: skip
    return (
        "process.roles=broker,controller\nnode.id=1\n"
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}\n"
        f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n"
        f"advertised.listeners=SASL_SSL://127.0.0.1:{port}\n"
        "controller.listener.names=CONTROLLER\n"
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL\n"
        "inter.broker.listener.name=SASL_SSL\n"
        "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256\n"
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512\n"
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}\n"
        f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={jaas}\n"
        f"ssl.keystore.type=PEM\nssl.keystore.location={pki.keystore}\n"
        f"ssl.truststore.type=PEM\nssl.truststore.location={pki.ca}\n"
        "ssl.client.auth=none\n"
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
        "super.users=User:admin;User:ANONYMOUS\nallow.everyone.if.no.acl.found=false\n"
        f"log.dirs={log_dir}\nnum.partitions=4\n"
        "offsets.topic.replication.factor=1\noffsets.topic.num.partitions=4\n"
        "transaction.state.log.replication.factor=1\ntransaction.state.log.min.isr=1\n"
        "share.coordinator.state.topic.replication.factor=1\nshare.coordinator.state.topic.min.isr=1\n"
        "group.initial.rebalance.delay.ms=0\nauto.create.topics.enable=false\n" + extra
    )


def scram_arguments(passwords: Mapping[str, str]) -> list[str]:
    """``StorageTool format`` arguments creating a SCRAM-SHA-512 and a SCRAM-SHA-256 credential per user."""
    args: list[str] = []
    for user, password in passwords.items():
        args += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]",
                 "--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]"]  # fmt: skip
    return args


def redis_acl(passwords: Mapping[str, str], prefix: str, *, keyless: tuple[str, ...] = WITHOUT_REDIS_KEYS) -> str:
    """An ACL file: the default user off, ``admin`` with everything, every other user the keys of ``prefix``
    (Lua scripts included) and nothing of the server's administration; users in ``keyless`` no keys at all."""
    lines = ["user default off", f"user admin on >{passwords['admin']} ~* &* +@all"]
    for user, password in passwords.items():
        if user == "admin":
            continue
        keys = "" if user in keyless else f"~{prefix}*"
        if user == "governance":
            keys += f" {_LEASE_KEYS}"
        lines.append(f"user {user} on >{password} {keys} +@all -@admin -@dangerous")
    return "\n".join(lines) + "\n"


def redis_tls_arguments(port: int, pki: Pki, acl_file: Path) -> list[str]:
    """``redis-server`` arguments: TLS only on ``port`` of 127.0.0.1, the users of ``acl_file``."""
    return ["--bind", "127.0.0.1", "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(pki.cert),
            "--tls-key-file", str(pki.key), "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
            "--aclfile", str(acl_file)]  # fmt: skip


@dataclass(frozen=True)
class Grant:
    """What one principal may do: topics to read, topics to write, groups (literal and prefixed), transactional
    ids. Reading and writing a topic include Describe."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    group_prefixes: tuple[str, ...] = ()
    transactional_ids: tuple[str, ...] = ()


def role_grants(t: Topics, group: str) -> dict[str, Grant]:
    """The ACLs of each role of docs/security.md for the topics ``t`` and the worker's consumer group."""
    return {
        "worker": Grant(read=(t.scores, t.labels), write=(t.dlq, t.gates, t.rollbacks, t.alerts), groups=(group,)),
        "governance": Grant(read=(t.gates, t.rollbacks, t.approvals, t.commands, t.lifecycle, t.checkpoints,
                                  t.routing),
                            write=(t.lifecycle, t.checkpoints, t.routing, t.alerts),
                            transactional_ids=(transactional_id(t.lifecycle),), group_prefixes=("shadowgate-",)),
        "operator": Grant(read=(t.lifecycle, t.checkpoints, t.routing, t.scores, t.labels, t.dlq),
                          write=(t.commands, t.approvals), group_prefixes=("shadowgate-",)),
        "publisher": Grant(read=(t.routing,), write=(t.scores, t.labels), group_prefixes=("shadowgate-routing",)),
        "forwarder": Grant(read=(t.alerts, t.rollbacks, t.gates, t.lifecycle), write=(f"{t.alerts}.dlq",),
                           group_prefixes=("shadowgate-alerts",)),
        "status": Grant(read=(t.alerts, t.lifecycle), group_prefixes=("shadowgate-status",)),
    }


def grant(admin: Mapping[str, Any], user: str, allowed: Grant, timeout_s: float = 30.0) -> None:
    """Create the ACLs of ``allowed`` for ``User:<user>`` with the admin client settings ``admin``
    (idempotent: an ACL that exists is left as it is)."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin import _acl as acl  # the ACL types are not re-exported for type checkers
    from confluent_kafka.admin import _resource as resource

    AclBinding, AclOperation, AclPermissionType = acl.AclBinding, acl.AclOperation, acl.AclPermissionType
    ResourcePatternType, ResourceType = resource.ResourcePatternType, resource.ResourceType

    principal, allow, lit = f"User:{user}", AclPermissionType.ALLOW, ResourcePatternType.LITERAL
    read_ops, write_ops = (AclOperation.READ, AclOperation.DESCRIBE), (AclOperation.WRITE, AclOperation.DESCRIBE)
    bindings: list[Any] = []
    for topic in allowed.read:
        bindings += [AclBinding(ResourceType.TOPIC, topic, lit, principal, "*", op, allow) for op in read_ops]
    for topic in allowed.write:
        bindings += [AclBinding(ResourceType.TOPIC, topic, lit, principal, "*", op, allow) for op in write_ops]
    for name in allowed.groups:
        bindings.append(AclBinding(ResourceType.GROUP, name, lit, principal, "*", AclOperation.READ, allow))
    for name in allowed.group_prefixes:
        bindings.append(AclBinding(ResourceType.GROUP, name, ResourcePatternType.PREFIXED, principal, "*",
                                   AclOperation.READ, allow))
    for txn in allowed.transactional_ids:
        bindings += [AclBinding(ResourceType.TRANSACTIONAL_ID, txn, lit, principal, "*", op, allow)
                     for op in write_ops]
    unique = list({(b.restype, b.name, b.resource_pattern_type, b.operation): b for b in bindings}.values())
    if not unique:
        return
    client = AdminClient({**admin, "log_level": 0})
    for future in client.create_acls(unique, request_timeout=timeout_s).values():
        future.result(timeout=timeout_s)


def kafka_env(bootstrap: str, user: str, password_file: Path, ca: Path) -> dict[str, str]:
    """The ``SHADOWGATE_KAFKA*`` settings of a process that logs in as ``user``."""
    return {"SHADOWGATE_KAFKA_BOOTSTRAP": bootstrap, "SHADOWGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "SHADOWGATE_KAFKA__SASL_MECHANISM": MECHANISM, "SHADOWGATE_KAFKA__SASL_USERNAME": user,
            "SHADOWGATE_KAFKA__SASL_PASSWORD_FILE": str(password_file), "SHADOWGATE_KAFKA__SSL_CA_FILE": str(ca)}


def redis_env(url: str, user: str, password_file: Path, ca: Path, prefix: str) -> dict[str, str]:
    """The ``SHADOWGATE_REDIS*`` settings of a process that logs in to Redis as ``user``."""
    return {"SHADOWGATE_REDIS_URL": url, "SHADOWGATE_REDIS__USERNAME": user,
            "SHADOWGATE_REDIS__PASSWORD_FILE": str(password_file), "SHADOWGATE_REDIS__SSL_CA_FILE": str(ca),
            "SHADOWGATE_REDIS_PREFIX": prefix}
