"""The running governance consumer on the real Kafka and Redis: its timers and its keys (issue 14 points 5 and 8).

Time is the consumer's injected clock (``now_utc() + shift``), moved forward by the test: nothing waits a day.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from governance.crypto.keyring import Keyring
from governance.crypto.keys import KeyStatus
from governance.crypto.live import LiveKeyring
from governance.lifecycle.audit import AuditEntry, parse_entry
from governance.lifecycle.commands import Escalate, new_command, sign_command
from governance.lifecycle.identities import LiveTrust, identity_dir, identity_signer
from governance.service.consumer import GovernanceConsumer, read_log
from shadowgate.cli import cli
from tests.governance_kit import (
    Env,
    catalog,
    fast_policy,
    lifecycle_facts,
    make_env,
    make_keys,
    now_utc,
    rollback_trigger,
    running,
    seed_log,
    send,
    send_event,
    wait_until,
)

POLICY = fast_policy()


@pytest.fixture
def env(kafka_bootstrap: str, redis_url: str, redis_prefix: str, make_topic: Callable[..., str],
        tmp_path: Path) -> Env:
    return make_env(kafka_bootstrap, redis_url, redis_prefix, make_topic, make_keys(tmp_path))


class Clock:
    """The wall clock shifted by ``shift`` (the test moves it)."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return now_utc() + self.shift


def _signers(env: Env) -> list[str]:
    return [orjson.loads(r.value)["signature"]["key_id"] for r in read_log(env.bootstrap, env.topics["lifecycle"])]


@pytest.mark.integration
def test_a_scheduled_rollback_is_shown_pending_then_carried_out_when_its_time_comes(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION"), lifecycle_facts("fraud", "2.0.0", "PRODUCTION")])
    clock = Clock()
    with running(env, clock=clock) as consumer:
        trigger = rollback_trigger(POLICY, "fraud", "2.0.0", None, action="scheduled")
        send_event(env, "rollbacks", trigger)
        wait_until(lambda: "fraud/2.0.0" in consumer.state.scheduled, what="the scheduled rollback")
        due = consumer.state.scheduled["fraud/2.0.0"].due_at
        assert due is not None
        assert consumer.state.registry.models["fraud"].production == "2.0.0"  # nothing happens before it is due
        shown = CliRunner().invoke(cli, ["model", "status", "fraud", "--json", "--policy", str(env.policy_path)],
                                   env=env.cli_env(), catch_exceptions=False)
        assert shown.exit_code == 0, shown.output
        pending = {row["version"]: row["scheduled_rollback"] for row in orjson.loads(shown.output)}
        assert pending["1.0.0"] is None and pending["2.0.0"]["due_at"] == due.isoformat().replace("+00:00", "Z")
        assert pending["2.0.0"]["to_version"] == "1.0.0"
        table = CliRunner().invoke(cli, ["model", "status", "fraud", "--policy", str(env.policy_path)],
                                   env=env.cli_env(), catch_exceptions=False)
        assert table.exit_code == 0 and "ROLLBACK scheduled" in table.output, table.output
        clock.shift = due - now_utc() + timedelta(seconds=1)  # the consumer's clock reaches the due time
        wait_until(lambda: consumer.state.registry.models["fraud"].production == "1.0.0",
                   what="the scheduled rollback carried out")
        done = consumer.state.rollbacks[-1]
        assert (done.status, done.action, done.from_version, done.to_version) == (
            "COMPLETED", "scheduled", "2.0.0", "1.0.0")
        assert consumer.state.scheduled == {}
    entries = [parse_entry(orjson.loads(r.value)["payload"]) for r in read_log(env.bootstrap, env.topics["lifecycle"])]
    assert [e.rollback.status for e in entries if e.rollback is not None] == ["SCHEDULED", "COMPLETED"]
    assert entries[-1].input.kind == "system" and entries[-1].input.id == "fraud/2.0.0"


@contextmanager
def _live(env: Env, clock: Clock) -> Iterator[GovernanceConsumer]:
    consumer = GovernanceConsumer(env.config(), signer=LiveKeyring(env.keys_dir, check_s=0.05),
                                  trust=LiveTrust(env.keys_dir, check_s=0.05), policy=POLICY, catalog=catalog(),
                                  metrics=CollectorRegistry(), clock=clock)
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


@pytest.mark.integration
def test_the_consumer_rotates_its_key_when_due_and_the_past_keeps_verifying(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION")])
    old = Keyring(env.keys_dir).signer(now_utc()).key
    clock = Clock()
    with _live(env, clock) as consumer:
        wait_until(lambda: consumer.state.seq >= 0, what="the start")
        assert consumer.signer.key_id == old.key_id
        clock.shift = old.rotate_after - now_utc() + timedelta(hours=1)  # 90 days on (spec 6.4), no restart
        wait_until(lambda: consumer.signer.key_id != old.key_id, what="the automatic rotation")
        new = consumer.signer.key

        def rotations() -> list[AuditEntry]:
            return [entry for entry in (parse_entry(orjson.loads(r.value)["payload"])
                                        for r in read_log(env.bootstrap, env.topics["lifecycle"])) if entry.rotated]

        wait_until(lambda: len(rotations()) == 1, what="the rotation entry")
        rotation = rotations()[0]
        assert (rotation.rotated[0].retired_key_id, rotation.rotated[0].new_key_id) == (old.key_id, new.key_id)
        assert _signers(env)[0] == old.key_id and _signers(env)[-1] == new.key_id  # signed by the new key
    keys = {k.key_id: k for k in Keyring(env.keys_dir).list_keys()}
    assert keys[new.key_id].status(clock()) is KeyStatus.ACTIVE and keys[old.key_id].retired_at is not None
    # A restart (same clock) verifies the whole chain: entries by the retired key and by the new one.
    again = GovernanceConsumer(env.config(), signer=Keyring(env.keys_dir).signer(clock()),
                               trust=LiveTrust(env.keys_dir), policy=POLICY, catalog=catalog(),
                               metrics=CollectorRegistry(), clock=clock)
    try:
        assert again.start(threading.Event()) and again.state.seq == rotation.seq
    finally:
        again.close()


@pytest.mark.integration
def test_a_rotation_the_keys_directory_refuses_keeps_the_old_key_and_is_tried_again(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """The keys directory refuses the new secret (a file where its private/ directory was: every write under it
    fails, as on a full or read-only disk, even for root). The consumer keeps signing with the old key (valid
    through its overlap), records no rotation, counts and logs the failure; once the directory is back, the next
    try (a minute later on its clock) rotates and records it."""
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION")])
    old = Keyring(env.keys_dir).signer(now_utc()).key
    private, moved = env.keys_dir / "private", env.keys_dir / "private.away"
    clock = Clock()

    def rotations() -> list[AuditEntry]:
        return [entry for entry in (parse_entry(orjson.loads(r.value)["payload"])
                                    for r in read_log(env.bootstrap, env.topics["lifecycle"])) if entry.rotated]

    caplog.set_level(logging.INFO, logger="shadowgate.governance")
    with _live(env, clock) as consumer:
        wait_until(lambda: consumer.state.seq >= 0, what="the start")
        failures = consumer.metrics.key_reload_failures._value.get()
        private.rename(moved)
        private.write_bytes(b"")
        clock.shift = old.rotate_after - now_utc() + timedelta(hours=1)
        wait_until(lambda: consumer.rotation_error is not None, what="the refused rotation")
        assert consumer.rotation_error is not None and str(private) in consumer.rotation_error
        assert consumer.metrics.key_reload_failures._value.get() > failures
        wait_until(lambda: any("key rotation failed" in r.getMessage() and old.key_id in r.getMessage()
                               for r in caplog.records), what="the failure logged")  # logged just after it is set
        time.sleep(0.5)  # rounds of its loop while the directory refuses: still the old key, nothing recorded
        assert consumer.signer.key_id == old.key_id and rotations() == []
        assert [k.key_id for k in Keyring(env.keys_dir).list_keys()] == [old.key_id]  # the trust store unchanged
        private.unlink()
        moved.rename(private)
        clock.shift += timedelta(minutes=2)  # past the retry delay
        wait_until(lambda: consumer.signer.key_id != old.key_id, what="the rotation, tried again")
        wait_until(lambda: len(rotations()) == 1, what="the rotation entry")
        assert consumer.rotation_error is None
        assert rotations()[0].rotated[0].retired_key_id == old.key_id
        assert rotations()[0].rotated[0].new_key_id == consumer.signer.key_id
    assert any(r.getMessage().startswith("key rotation done after an earlier failure") for r in caplog.records)


@pytest.mark.integration
def test_a_new_approver_is_accepted_without_a_restart(env: Env) -> None:
    seed_log(env, [lifecycle_facts("fraud", "1.0.0", "PRODUCTION")])
    with _live(env, Clock()) as consumer:
        Keyring(identity_dir(env.keys_dir, "GID-04")).generate(now_utc())  # Dan (GID-04) joins the approvers
        now = now_utc()
        command = new_command(Escalate, identity="GID-04", now=now, model="fraud", version="1.0.0",
                              escalation_id="ESC-DAN", reason="rollback drill")
        send(env, "approvals", orjson.dumps(sign_command(command, identity_signer(env.keys_dir, "GID-04", now), now)))
        wait_until(lambda: command.command_id in consumer.state.seen, what="GID-04's command")
        assert consumer.state.registry.get("fraud", "1.0.0").open_escalations() == ("ESC-DAN",)
        assert consumer.state.rejections == {}
