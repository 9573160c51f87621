"""Issue 12, defects 6, 7 and 8 (command time): keys that follow their files while processes run, revocation
from its time on, key and trust files that others can write refused, commands bounded against the clock."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from governance.contract.kafkaio import Record
from governance.contract.publishing import encode_signed_event
from governance.crypto import Context, Keyring, LiveKeyring, sign_record, verify_record
from governance.crypto.schedule import Phase
from governance.errors import ConfigError, CryptoError
from governance.lifecycle.commands import Escalate, new_command, sign_command
from governance.lifecycle.identities import LiveTrust, identity_dir, identity_signer, load_trust
from governance.lifecycle.intake import Received, Refused, intake
from governance.lifecycle.state import GovernanceState
from governance.service.consumer import GovernanceConsumer, read_log
from tests.governance_kit import (
    REPO,
    Env,
    catalog,
    fast_policy,
    gate_ready,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    seed_log,
    send,
    wait_until,
)

POLICY = fast_policy()


class Clock:
    """A monotonic clock the test moves (the key watch checks files at most every check_s of it)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    return make_keys(tmp_path)


# ------------------------------------------------------------------------------------------------ permissions


def _writable_targets(keys: Path) -> dict[str, tuple[Path, int]]:
    gid08 = identity_dir(keys, "GID-08")
    return {
        "system trust store": (keys / "trust-store.json", 0o666),
        "keys directory": (keys, 0o770),
        "identities directory": (keys / "identities", 0o777),
        "identity directory": (gid08, 0o775),
        "identity trust store": (gid08 / "trust-store.json", 0o646),
    }


@pytest.mark.parametrize("what", ["system trust store", "keys directory", "identities directory",
                                  "identity directory", "identity trust store"])
def test_group_or_world_writable_key_files_are_refused_naming_the_file_and_the_fix(keys: Path, what: str) -> None:
    path, mode = _writable_targets(keys)[what]
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match=rf"{path} is group- or world-writable \(mode {mode:o}\); "
                                          rf"run `chmod go-w {path}`"):
        load_trust(keys)
    os.chmod(path, mode & ~0o022)
    load_trust(keys)  # fixed as the message says


def test_a_writable_keys_directory_is_refused_for_signing(keys: Path) -> None:
    os.chmod(keys, 0o777)  # noqa: S103  (the fault under test)
    with pytest.raises(ConfigError, match=rf"keys directory {keys} is group- or world-writable"):
        Keyring(keys).signer(now_utc())


def test_key_files_made_under_a_group_writable_umask_are_accepted(tmp_path: Path) -> None:
    """The refusal must not hit shadowgate's own files on a machine whose umask is 002."""
    previous = os.umask(0o002)
    try:
        keys = make_keys(tmp_path)
        Keyring(keys).rotate(now_utc())
    finally:
        os.umask(previous)
    assert set(load_trust(keys).identities) == {"GID-02", "GID-08"}
    assert Keyring(keys).signer(now_utc()).key_id


def test_a_key_planted_in_a_world_writable_trust_store_is_never_accepted(keys: Path, tmp_path: Path) -> None:
    """The issue's attack: whoever can write GID-08's trust store adds a key and approves as GID-08."""
    attacker = Keyring(tmp_path / "attacker")
    attacker.generate(now_utc())
    trusted = identity_dir(keys, "GID-08") / "trust-store.json"
    live = LiveTrust(keys, check_s=1.0, monotonic=(clock := Clock()))
    assert set(live.current().identities) == {"GID-02", "GID-08"}
    document = orjson.loads(trusted.read_bytes())
    document["keys"] += orjson.loads(attacker.trust_store_path.read_bytes())["keys"]
    os.chmod(trusted, 0o666)  # noqa: S103  (the fault under test)
    trusted.write_bytes(orjson.dumps(document))
    with pytest.raises(ConfigError, match="chmod go-w"):
        load_trust(keys)  # a process starting now refuses
    clock.t += 2
    store = live.current().identity("GID-08")  # a running one keeps the last good trust
    assert attacker.list_keys()[0].key_id not in store
    assert live.failures == 1 and "group- or world-writable" in (live.last_error or "")
    command = new_command(Escalate, identity="GID-08", now=now_utc(), model="fraud", version="1.0.0",
                          escalation_id="E", reason="planted")
    record = Record("governance.approvals", 0, 0, b"fraud", orjson.dumps(sign_command(command, attacker.signer(
        now_utc()), now_utc())))
    refused = intake(record, GovernanceState(), live.current(), now_utc(), "command")
    assert isinstance(refused, Refused) and refused.rejection.reason == "unknown_key"


def test_the_governance_command_refuses_a_writable_trust_store_in_one_line(keys: Path) -> None:
    os.chmod(keys / "trust-store.json", 0o666)  # noqa: S103  (the fault under test)
    done = subprocess.run([sys.executable, "-m", "shadowgate", "governance"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "SHADOWGATE_KEYS_DIR": str(keys), "SHADOWGATE_METRICS_PORT": "0",
                               "SHADOWGATE_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"shadowgate: error: trust store {keys / 'trust-store.json'} is group- or world-writable (mode 666); "
        f"run `chmod go-w {keys / 'trust-store.json'}`"]


# ------------------------------------------------------------------------------------------------ reloading


def test_live_keyring_follows_rotation_and_revocation_without_a_restart(keys: Path) -> None:
    clock = Clock()
    live = LiveKeyring(keys, check_s=1.0, reload_s=60.0, monotonic=clock)
    first = live.signer()
    assert live.signer() is first  # nothing changed: the same Signer, no file read
    new, _ = Keyring(keys).rotate(now_utc())
    assert live.signer().key_id == first.key_id  # not checked again before check_s
    clock.t += 1.0
    assert live.signer().key_id == new.key_id != first.key_id  # before: the worker signed with the retired key
    Keyring(keys).revoke(new.key_id, now_utc(), "leaked")
    clock.t += 1.0
    with pytest.raises(CryptoError, match="no active ML-DSA-65 key"):
        live.signer()  # never signs with a revoked key
    Keyring(keys).generate(now_utc())
    clock.t += 1.0
    assert live.signer().key_id not in (first.key_id, new.key_id)


def test_live_keyring_keeps_the_last_good_keys_when_a_reload_fails(keys: Path) -> None:
    clock = Clock()
    live = LiveKeyring(keys, check_s=1.0, monotonic=clock)
    signer = live.signer()
    (keys / "trust-store.json").write_bytes(b"{half written")
    clock.t += 1.0
    assert live.signer() is signer and live.failures == 1 and "not JSON" in (live.last_error or "")
    clock.t += 600.0  # the periodic reload: still refused, still the last good keys
    assert live.signer() is signer and live.failures == 2


def test_live_keyring_reloads_periodically_even_when_no_file_seems_changed(keys: Path) -> None:
    clock = Clock()
    live = LiveKeyring(keys, check_s=1000.0, reload_s=10.0, monotonic=clock)
    live.trust_store()
    generation = live.generation
    clock.t += 5.0
    live.trust_store()
    assert live.generation == generation
    clock.t += 5.0
    live.trust_store()
    assert live.generation == generation + 1


def test_revocation_keeps_the_past_verifiable_and_refuses_what_is_signed_after(keys: Path) -> None:
    keyring, now = Keyring(keys), now_utc()
    old = keyring.signer(now)
    before = sign_record({"n": 1}, Context.AUDIT_ENTRY, old, now)
    keyring.revoke(old.key_id, now + timedelta(hours=1), "leaked")
    later = now + timedelta(days=400)
    assert verify_record(before, Context.AUDIT_ENTRY, keyring.trust_store(), later, Phase.PQC_ONLY) == {"n": 1}
    after = sign_record({"n": 2}, Context.AUDIT_ENTRY, old, now + timedelta(hours=2))
    with pytest.raises(CryptoError, match="was revoked at"):
        verify_record(after, Context.AUDIT_ENTRY, keyring.trust_store(), later, Phase.PQC_ONLY)


# ------------------------------------------------------------------------------------------------ command time


def test_commands_are_bounded_both_ways_against_the_consumer_clock(keys: Path) -> None:
    trust, now = load_trust(keys), now_utc()
    signer = identity_signer(keys, "GID-08", now)

    def judged(issued_at: datetime, at: datetime) -> Received | Refused:
        command = new_command(Escalate, identity="GID-08", now=issued_at, model="fraud", version="1.0.0",
                              escalation_id="E", reason="clock")
        record = Record("governance.approvals", 0, 0, b"fraud", orjson.dumps(sign_command(command, signer, now)))
        return intake(record, GovernanceState(), trust, at, "command")

    ahead = judged(now + timedelta(days=200), now)  # before: accepted
    assert isinstance(ahead, Refused) and ahead.rejection.reason == "future"
    assert "more than 0:05:00 ahead of the consumer's clock" in ahead.rejection.message
    assert isinstance(judged(now + timedelta(minutes=4), now), Received)  # within the stated skew
    behind = judged(now - timedelta(minutes=11), now)  # its 10-minute life is over
    assert isinstance(behind, Refused) and behind.rejection.reason == "expired"


# ------------------------------------------------------------------------------------------------ while running


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        keys: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, keys)


@contextmanager
def _live(env: Env) -> Iterator[GovernanceConsumer]:
    """A consumer following the keys directory (checked every 50 ms), polling in a thread."""
    consumer = GovernanceConsumer(env.config(), signer=LiveKeyring(env.keys_dir, check_s=0.05),
                                  trust=LiveTrust(env.keys_dir, check_s=0.05), policy=POLICY, catalog=catalog(),
                                  metrics=CollectorRegistry())
    stop, errors = threading.Event(), []
    assert consumer.start(stop)

    def loop() -> None:
        try:
            while not stop.is_set():
                consumer.poll_once(0.1)
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(timeout=10)
        consumer.close()
    assert errors == []


def _escalate(env: Env, escalation_id: str) -> tuple[str, bytes]:
    now = now_utc()
    command = new_command(Escalate, identity="GID-08", now=now, model="fraud", version="1.0.0",
                          escalation_id=escalation_id, reason="rotation")
    return command.command_id, orjson.dumps(sign_command(command, identity_signer(env.keys_dir, "GID-08", now), now))


def _signers(env: Env) -> list[str]:
    return [orjson.loads(r.value)["signature"]["key_id"] for r in read_log(env.bootstrap, env.topics["lifecycle"])]


@pytest.mark.integration
def test_rotation_and_revocation_while_the_consumer_runs(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "SHADOW")])
    with _live(env) as consumer:
        old = _rotate_and_revoke(env, consumer)
    assert old in consumer.state.revoked
    # The whole log (entries by the revoked key before its revocation included) verifies; a restart works.
    from click.testing import CliRunner

    from shadowgate.cli import cli

    verified = CliRunner().invoke(cli, ["audit", "verify"], env=env.cli_env(), catch_exceptions=False)
    assert verified.exit_code == 0 and verified.output.startswith("audit log OK: 6 entries"), verified.output
    again = GovernanceConsumer(env.config(), signer=Keyring(env.keys_dir).signer(now_utc()), trust=env.trust(),
                               policy=POLICY, catalog=catalog(), metrics=CollectorRegistry())
    try:
        assert again.start(threading.Event()) and again.state.seq == 5  # before: refused at entry 0
    finally:
        again.close()


def _rotate_and_revoke(env: Env, consumer: GovernanceConsumer) -> str:
    # An approver rotates: its next command is accepted without a restart (before: unknown_key until restart).
    Keyring(identity_dir(env.keys_dir, "GID-08")).rotate(now_utc())
    command_id, value = _escalate(env, "ESC-1")
    send(env, "commands", value)
    wait_until(lambda: command_id in consumer.state.seen, what="the command signed with the rotated key")
    # The system key rotates: the consumer signs with the new key, and accepts events signed with it.
    old = Keyring(env.keys_dir).signer(now_utc())
    new, _ = Keyring(env.keys_dir).rotate(now_utc())
    send(env, "gates", encode_signed_event(gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "SHADOW"),
                                           Keyring(env.keys_dir).signer(now_utc()), now_utc()))
    wait_until(lambda: consumer.state.seq == 3, what="the gate signed with the new system key")
    assert consumer.state.registry.get("fraud", "2.0.0").stage.value == "STAGING"
    assert _signers(env)[-1] == new.key_id
    # The old system key is revoked (compromised): recorded in the log, refused from then on, the past intact.
    Keyring(env.keys_dir).revoke(old.key_id, now_utc(), "found in a backup")
    wait_until(lambda: old.key_id in consumer.state.revoked, what="the revocation entry")
    forged = encode_signed_event(gate_ready(POLICY, "fraud", "1.0.0", "2.0.0", "STAGING"), old, now_utc())
    send(env, "gates", forged)
    wait_until(lambda: consumer.state.rejections.get("bad_signature") == 1, what="the forged event refused")
    revoked_at = consumer.state.revoked[old.key_id]
    assert _signers(env)[:2] == [old.key_id, old.key_id] and set(_signers(env)[3:]) == {new.key_id}
    assert revoked_at == 4
    return old.key_id
