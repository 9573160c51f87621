"""A delivery lane's fault paths with servers that really fail: Kafka unreachable for its commits or its dead
letters, a receiver that refuses. Nothing is recorded as committed that Kafka did not take, and nothing is
passed that was not delivered or dead-lettered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from governance.contract.kafkaio import SyncProducer
from governance.service.alerting.config import RetryConfig, WebhookReceiver
from governance.service.alerting.delivery import WebhookChannel
from governance.service.alerting.lanes import Committer, DeadLetters, Item, Lane
from governance.service.alerting.metrics import ForwarderMetrics
from governance.service.alerting.tracker import Tracker
from tests.alerting_kit import HttpReceiver, free_port
from tests.alerting_samples import alert, verified
from tests.governance_kit import wait_until

pytestmark = pytest.mark.real_clock  # librdkafka (the commit and dead-letter clients) hangs under libfaketime

RETRY = RetryConfig(timeout_s=2, initial_backoff_s=0.05, max_backoff_s=0.2, max_garbage=3)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver()
    yield server
    server.close()


def _lane(receiver: HttpReceiver, bootstrap: str, registry: CollectorRegistry) -> tuple[Lane, threading.Event]:
    stop = threading.Event()
    channel = WebhookChannel(WebhookReceiver(name="hook", type="webhook", url=receiver.url, secret_env="X"), "s", 2,
                             None)
    metrics = ForwarderMetrics(registry, ["hook"])
    lane = Lane("hook", channel, committer=Committer(bootstrap, "t-lane.hook"),
                dead_letters=DeadLetters(SyncProducer(bootstrap, timeout_s=1.0), "t-lane.dlq"), retry=RETRY,
                metrics=metrics, stop=stop, max_pending=10, clock=lambda: datetime.now(UTC), jitter=lambda: 0.5)
    lane.start_positions = {("shadow.alerts", 0): 0}
    return lane, stop


def _item(offset: int) -> Item:
    (notice,) = Tracker().apply(verified(alert(dedup_key=f"k{offset}"), offset=offset)).notices
    return Item("shadow.alerts", 0, offset, notices=(notice,))


def test_delivered_notices_are_not_recorded_committed_while_kafka_refuses_the_commit(receiver: HttpReceiver) -> None:
    registry = CollectorRegistry()
    lane, stop = _lane(receiver, f"127.0.0.1:{free_port()}", registry)  # nothing listens: every commit fails
    lane.start()
    try:
        lane.offer(_item(0))
        lane.offer(_item(1))
        # A commit to a coordinator that does not answer never holds delivery back (a synchronous one would
        # block for ~45 s per attempt) ...
        wait_until(lambda: len(receiver.delivered()) == 2 and lane.view().pending == 0, what="both delivered")
        assert lane.delivered_positions() == {("shadow.alerts", 0): 2}
        # ... and nothing counts as committed that Kafka did not confirm.
        assert lane.committed_positions() == {}
    finally:
        stop.set()
        lane.join(30)
        lane.committer.close()
    assert not lane.thread.is_alive()
    assert lane.committed_positions() == {}
    # The broker's silence came back as errors (after the 6 s the commit waits for a coordinator): counted.
    assert (registry.get_sample_value("shadowgate_alerts_commit_failures_total", {"receiver": "hook"}) or 0) >= 1
    assert registry.get_sample_value("shadowgate_alerts_delivered_total", {"receiver": "hook"}) == 2


def test_a_refused_notice_whose_dead_letter_cannot_be_written_holds_the_lane(receiver: HttpReceiver) -> None:
    receiver.set_mode("400")
    registry = CollectorRegistry()
    lane, stop = _lane(receiver, f"127.0.0.1:{free_port()}", registry)
    lane.start()
    try:
        lane.offer(_item(0))
        lane.offer(_item(1))
        wait_until(lambda: lane.backoff_s > 0 and len(receiver.answered("400")) == 1, timeout_s=30,
                   what="the dead-letter write failing and retried")
        assert lane.view().pending == 2  # the refused notice is not passed without its dead letter
        assert len(receiver.seen()) == 1  # and the next one waits behind it
    finally:
        stop.set()
        lane.join(30)
        lane.committer.close()
    assert lane.committed_positions() == {}
    assert registry.get_sample_value("shadowgate_alerts_dead_lettered_total",
                                     {"receiver": "hook", "reason": "refused"}) == 0
