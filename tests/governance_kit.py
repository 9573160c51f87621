"""Helpers for the governance consumer tests: keys, per-test topics, a consumer in a thread, signed events.

Everything runs against the real Kafka broker and Redis (fixtures of tests/conftest.py); each test gets its
own topics and Redis prefix, so tests never see each other's audit logs.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from governance.contract.events import Evidence, GateReady, RollbackTrigger, Versions
from governance.contract.findings import Check
from governance.contract.kafkaio import SyncProducer
from governance.contract.publishing import encode_signed_event
from governance.crypto.keyring import Keyring
from governance.crypto.record import record_bytes
from governance.crypto.signing import Signer
from governance.lifecycle.audit import EntryBody, Input, entry_hash, seal
from governance.lifecycle.identities import Trust, identity_dir, load_trust, system_signer
from governance.lifecycle.ledger import Event
from governance.policy.catalog import FeatureCatalog, load_catalog
from governance.policy.document import Policy
from governance.service.consumer import ConsumerConfig, GovernanceConsumer
from tests.governance_factory import policy_with

REPO = Path(__file__).resolve().parent.parent
IDENTITIES = ("GID-02", "GID-08")


def now_utc() -> datetime:
    return datetime.now(UTC)


def make_keys(root: Path) -> Path:
    """A keys dir with a system key and keys for GID-02 and GID-08."""
    keys_dir = root / "keys"
    now = now_utc()
    Keyring(keys_dir).generate(now)
    for identity in IDENTITIES:
        Keyring(identity_dir(keys_dir, identity)).generate(now)
    return keys_dir


def fast_policy() -> Policy:
    """The default policy with every minimum stage duration at zero (the lifecycle of days runs in seconds)."""
    changes: dict[str, Any] = {f"lifecycle.{stage}.min_days": 0 for stage in ("PROPOSAL", "PROTOTYPE", "TRAINING",
                                                                             "SHADOW", "STAGING")}
    for kind in ("risk_scoring", "classification", "anomaly_detection", "ranking"):
        changes[f"shadow.model_types.{kind}.min_duration_days"] = 0
    return policy_with(**changes)


def catalog() -> FeatureCatalog:
    return load_catalog()


@dataclass
class Env:
    """One test's topics, Redis prefix and keys."""

    bootstrap: str
    redis_url: str
    prefix: str
    keys_dir: Path
    topics: dict[str, str]
    policy_path: Path | None = None

    def config(self, canary_share: float = 0.05) -> ConsumerConfig:
        t = self.topics
        return ConsumerConfig(
            bootstrap=self.bootstrap, redis_url=self.redis_url, prefix=self.prefix, gates_topic=t["gates"],
            rollbacks_topic=t["rollbacks"], approvals_topic=t["approvals"], commands_topic=t["commands"],
            lifecycle_topic=t["lifecycle"], routing_topic=t["routing"], alerts_topic=t["alerts"],
            canary_share=canary_share, lease_ttl_s=5.0, checkpoints_topic=t["checkpoints"],
            summary_interval_s=0.3,
        )

    def cli_env(self) -> dict[str, str]:
        """Environment for the CLI (CliRunner or subprocess) pointing at this test's topics."""
        env = {
            "SHADOWGATE_KAFKA_BOOTSTRAP": self.bootstrap,
            "SHADOWGATE_REDIS_URL": self.redis_url,
            "SHADOWGATE_REDIS_PREFIX": self.prefix,
            "SHADOWGATE_KEYS_DIR": str(self.keys_dir),
            "SHADOWGATE_TOPICS__COMMANDS": self.topics["commands"],
            "SHADOWGATE_METRICS_PORT": "0",
        }
        for name in ("gates", "rollbacks", "alerts", "approvals", "lifecycle", "routing", "checkpoints"):
            env[f"SHADOWGATE_TOPICS__{name.upper()}"] = self.topics[name]
        if self.policy_path is not None:
            env["SHADOWGATE_POLICY_PATH"] = str(self.policy_path)
        return env

    def trust(self) -> Trust:
        return load_trust(self.keys_dir)

    def signer(self) -> Signer:
        return system_signer(self.keys_dir, now_utc())


def make_env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
             keys_dir: Path) -> Env:
    names = ("gates", "rollbacks", "alerts", "approvals", "commands", "lifecycle", "routing", "checkpoints")
    topics = {name: make_topic(name, config={"cleanup.policy": "compact"} if name in ("routing", "checkpoints")
                               else None)
              for name in names}
    # The fast policy as a file, so CLI commands judge (status) with the consumer's policy.
    policy_path = keys_dir.parent / f"policy-{redis_prefix}.yaml"
    policy_path.write_text(yaml.safe_dump(fast_policy().model_dump(mode="json")))
    return Env(kafka_bootstrap, redis_url, redis_prefix, keys_dir, topics, policy_path)


@contextmanager
def running(env: Env, policy: Policy | None = None, registry: CollectorRegistry | None = None,
            clock: Callable[[], datetime] | None = None) -> Iterator[GovernanceConsumer]:
    """A started consumer polling in a thread; stopped (lease released) on exit."""
    consumer = GovernanceConsumer(env.config(), signer=env.signer(), trust=env.trust(), policy=policy or fast_policy(),
                                  catalog=catalog(), metrics=registry or CollectorRegistry(), clock=clock)
    stop = threading.Event()
    errors: list[BaseException] = []
    assert consumer.start(stop)

    def loop() -> None:
        try:
            while not stop.is_set():
                consumer.poll_once(0.1)
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=loop, name="governance-consumer", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(timeout=10)
        consumer.close()
    if errors:
        raise errors[0]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> float:
    """Poll ``predicate`` every 20 ms; returns the seconds it took, fails the test on timeout."""
    import time

    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        if predicate():
            return time.monotonic() - began
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def check(name: str, value: float, threshold: float) -> Check:
    return Check(name=name, outcome="PASS", value=value, threshold=threshold, comparator=">=", enforcement="BLOCK",
                 message=f"{name}: {value} < {threshold}")


def gate_ready(policy: Policy, model: str, production: str, candidate: str, stage: str,
               now: datetime | None = None, ttl: timedelta = timedelta(hours=1)) -> GateReady:
    ts = now or now_utc()
    role = "shadow" if stage == "SHADOW" else "canary"
    checks = [check("mean_abs_delta", 0.02, 0.15), check("p99_abs_delta", 0.12, 0.35), check("auc_roc", 0.86, 0.7)]
    return GateReady(event_id=uuid.uuid4(), ts=ts, expires_at=ts + ttl, model=model,
                     versions=Versions(production=production, candidate=candidate, role=role),  # type: ignore[arg-type]
                     evidence=Evidence(policy_hash=policy.hash(), checks=checks),
                     gate="shadow_completion" if stage == "SHADOW" else "staging", stage=stage)  # type: ignore[arg-type]


def rollback_trigger(policy: Policy, model: str, from_version: str, to_version: str | None,
                     action: str = "immediate") -> RollbackTrigger:
    ts = now_utc()
    return RollbackTrigger(event_id=uuid.uuid4(), ts=ts, expires_at=ts + timedelta(hours=1), model=model,
                           versions=Versions(production=from_version), evidence=Evidence(policy_hash=policy.hash()),
                           trigger="error_rate", action=action, reason="error rate 3.1 % > 1 % for 5 min",  # type: ignore[arg-type]
                           from_version=from_version, to_version=to_version)


def send(env: Env, topic: str, value: bytes, key: bytes = b"fraud") -> tuple[int, int]:
    producer = SyncProducer(env.bootstrap)
    try:
        return producer.send(env.topics[topic], value, key)
    finally:
        producer.close()


def send_many(env: Env, topic: str, values: list[bytes], key: bytes = b"fraud") -> None:
    """Produce ``values`` in one batch (one producer, one flush): they arrive within milliseconds."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": env.bootstrap, "linger.ms": 50, "acks": "all",
                         "message.max.bytes": 4_194_304})
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for value in values:
        while True:
            try:
                producer.produce(env.topics[topic], value, key, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let it drain
                producer.poll(0.05)
    assert producer.flush(60) == 0 and failures == [], failures


def send_event(env: Env, topic: str, event: Any, signer: Signer | None = None) -> tuple[int, int]:
    return send(env, topic, encode_signed_event(event, signer or env.signer(), now_utc()), event.model.encode())


def with_signoffs(facts: list[Event], signer: Signer) -> list[Event]:
    """``facts`` with, after each registration, what the gates past TRAINING need besides stage moves: GID-02's
    training approval (spec 1.2), GID-08's shadow review (9.2) and the artifact signed by ``signer`` (6.3)."""
    from governance.contract.stages import Stage
    from governance.crypto.manifest import digest_bytes
    from governance.crypto.record import sign_record
    from governance.crypto.signing import Context
    from governance.lifecycle.ledger import ApprovalRecorded, ArtifactRecorded, Registered

    out: list[Event] = []
    for fact in facts:
        out.append(fact)
        if not isinstance(fact, Registered):
            continue
        at, model, version = fact.at, fact.model, fact.version
        signed_at = max(at, signer.key.created_at)  # a seed dated before the key was made
        data = f"{model}-{version}.ebm".encode()
        manifest = sign_record(digest_bytes(data).as_payload("model.ebm"), Context.ARTIFACT, signer, signed_at)
        out += [ApprovalRecorded(event_id=f"{fact.event_id}-training", at=at, model=model, version=version,
                                 approver="GID-02", target=Stage.SHADOW),
                ApprovalRecorded(event_id=f"{fact.event_id}-review", at=at, model=model, version=version,
                                 approver="GID-08", target=Stage.STAGING),
                ArtifactRecorded(event_id=f"{fact.event_id}-artifact", at=at, model=model, version=version,
                                 sha256=hashlib.sha256(data).hexdigest(), manifest=manifest, key_id=signer.key_id,
                                 signed_at=signed_at)]
    return out


def seed_log(env: Env, batches: list[list[Event]]) -> list[dict[str, Any]]:
    """Write audit entries carrying ``batches`` of facts straight to the log (the consumer rebuilds from it),
    each registration with its sign-offs (:func:`with_signoffs`); returns the signed records written."""
    producer = SyncProducer(env.bootstrap)
    signer, head, records = env.signer(), "0" * 64, []
    batches = [with_signoffs(facts, signer) for facts in batches]
    try:
        for seq, facts in enumerate(batches):
            source = Input(topic="seed", partition=0, offset=seq, digest="0" * 64, kind="command", id=f"seed-{seq}")
            body = EntryBody(at=now_utc(), input=source, outcome="applied", facts=facts)
            record = seal(body, seq, head, signer, now_utc())
            producer.send(env.topics["lifecycle"], record_bytes(record), b"audit")
            records.append(record)
            head = entry_hash(record)
    finally:
        producer.close()
    return records


def lifecycle_facts(model: str, version: str, to: str, at: datetime | None = None) -> list[Event]:
    """Facts that register ``model@version`` with valid metadata, features and every stage's documents, then move
    it along the forward path to stage ``to`` (the registry checks the table, not the gates: this is a seed)."""
    from governance.contract.stages import Stage
    from governance.lifecycle.ledger import DocumentRecorded, Registered, Transitioned
    from governance.lifecycle.machine import FORWARD, Assessment
    from governance.policy.catalog import validate_feature_linkage
    from tests.lifecycle_samples import MODEL_FEATURES, complete_documents, valid_metadata

    when = at or now_utc()
    ok, failures = validate_feature_linkage(catalog(), MODEL_FEATURES)
    metadata = valid_metadata(version, f"PP-{version}", when - timedelta(days=3))
    facts: list[Event] = [Registered(event_id=f"{model}-{version}-reg", at=when, model=model, version=version,
                                     model_type="classification", metadata=metadata,
                                     features=MODEL_FEATURES, feature_linkage=Assessment(passed=ok,
                                                                                      failures=tuple(failures)))]
    for stage, docs in complete_documents().items():
        for name, text in docs.items():
            facts.append(DocumentRecorded(event_id=f"{model}-{version}-{name}", at=when, model=model,
                                          version=version, stage=Stage(stage), name=name, text=text))
    path = FORWARD[: FORWARD.index(Stage(to)) + 1]
    for a, b in zip(path, path[1:], strict=False):
        facts.append(Transitioned(event_id=f"{model}-{version}-{b}", at=when, model=model, version=version,
                                  from_stage=a, to_stage=b))
    return facts
