"""A governance consumer in a process of its own that SIGKILLs itself at a chosen step (tests/test_governance_faults).

``python -m tests.governance_child SPEC_JSON``, where SPEC_JSON holds the ConsumerConfig fields, ``keys_dir``,
``policy`` (a policy YAML) and ``kill_at``:

=================  ======================================================================================
kill_at            the process dies (SIGKILL, no cleanup) when handling an input that changes the lifecycle
=================  ======================================================================================
before_commit      after the entry and the routing were produced to the open transaction, before the commit
after_commit       after the transaction committed, before the state is saved to Redis (and alerts)
routing_published  during a rollback: after its routing was published (committed), before the entry exists
=================  ======================================================================================

The steps are hooked by wrapping methods of this one consumer instance: production code carries no fault hook.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from governance.lifecycle.identities import load_trust, system_signer
from governance.policy.catalog import load_catalog
from governance.policy.document import load_policy
from governance.service.consumer import ConsumerConfig, GovernanceConsumer

REPO = Path(__file__).resolve().parent.parent


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(consumer: GovernanceConsumer, kill_at: str) -> None:
    armed = threading.Event()
    commit, publish = consumer.writer.commit, consumer.routing.publish
    producer_commit = consumer.clients.producer._commit

    def writer_commit(sealed: Any, others: Any, checkpoint: Any) -> None:
        if any(item.entry.facts or item.entry.rollback for item in sealed):
            armed.set()
        commit(sealed, others, checkpoint)
        if armed.is_set() and kill_at == "after_commit":
            _die()

    def commit_transaction() -> None:
        if armed.is_set() and kill_at == "before_commit":
            _die()
        producer_commit()

    def publish_routing(assignment: Any, now: Any) -> tuple[int, int]:
        where = publish(assignment, now)
        if kill_at == "routing_published":
            _die()
        return where

    consumer.writer.commit = writer_commit  # type: ignore[method-assign]
    consumer.clients.producer._commit = commit_transaction  # type: ignore[method-assign]
    consumer.routing.publish = publish_routing  # type: ignore[method-assign]


def main(spec: dict[str, Any]) -> None:
    keys_dir = Path(spec.pop("keys_dir"))
    policy, kill_at = load_policy(spec.pop("policy")), spec.pop("kill_at")
    fields = {f.name for f in dataclasses.fields(ConsumerConfig)}
    config = ConsumerConfig(**{k: v for k, v in spec.items() if k in fields})
    from datetime import UTC, datetime

    consumer = GovernanceConsumer(config, signer=system_signer(keys_dir, datetime.now(UTC)), trust=load_trust(keys_dir),
                                  policy=policy, catalog=load_catalog(),
                                  metrics=CollectorRegistry())
    _arm(consumer, kill_at)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("started", flush=True)
    consumer.run(stop)


if __name__ == "__main__":
    main(orjson.loads(sys.argv[1]))
