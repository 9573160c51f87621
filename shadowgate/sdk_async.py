"""The publisher SDK for asyncio services: the same publishers as :mod:`shadowgate.sdk`, with awaitable deliveries.

::

    from shadowgate import AsyncScorePublisher

    async with AsyncScorePublisher("127.0.0.1:9092") as pub:
        await pub.publish({"request_id": rid, "model": "fraud", "version": "1.4.0", "role": "production",
                           "score": 0.12, "latency_ms": 8.1, "ts": datetime.now(UTC)})   # returns once delivered
        pending = pub.publish_nowait({... "role": "shadow", ...})   # queued; an asyncio.Future of its delivery
        await pending

Same contract as the synchronous publishers, which do the work underneath: events are validated before
anything is queued (:class:`~governance.errors.EventValidationError` names the field), keyed and placed by
``request_id`` with Kafka's murmur2 partitioner, so the production and candidate scores and the label of one
request meet on one partition; envelopes, linger, idempotent ``acks=all`` delivery and the periodic
partition-count refresh are those of :class:`~shadowgate.sdk.ScorePublisher`. Each event's delivery is its
own future: it resolves when the broker acknowledged its message and fails with
:class:`~governance.errors.DeliveryError` when librdkafka gave up; ``on_delivery_error`` is still called (on the
event loop). Nothing here blocks the loop for a broker round trip: the start-up metadata read, ``flush`` and
``close`` run in a worker thread, and a background thread serves delivery reports. The one wait on the loop is
librdkafka's own back-pressure when its local queue (1,000,000 messages or 1 GiB) is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Generic, TypeVar

from governance.contract.connections import KafkaTarget
from governance.contract.wire import LabelEvent, ScoreEvent, validate_label, validate_score
from governance.errors import DeliveryError, InfrastructureError
from shadowgate.sdk import DeliveryCallback, LabelPublisher, PublisherStats, ScorePublisher, Waiter

__all__ = ["AsyncLabelPublisher", "AsyncScorePublisher"]

_P = TypeVar("_P", ScorePublisher, LabelPublisher)


class _AsyncBase(Generic[_P]):
    def __init__(self, on_delivery_error: DeliveryCallback | None) -> None:
        self._on_error = on_delivery_error
        self._sync: _P | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _build(self, on_error: DeliveryCallback) -> _P:
        raise NotImplementedError

    async def start(self) -> None:
        """Create the producer (and read the topic's partition count) in a worker thread; idempotent."""
        if self._sync is not None:
            return
        loop = self._loop = asyncio.get_running_loop()

        def on_error(error: DeliveryError) -> None:
            if self._on_error is not None:
                _call_soon(loop, self._on_error, error)

        self._sync = await asyncio.to_thread(self._build, on_error)
        # Delivery reports are served here even when publishing pauses, so every future resolves.
        self._poller = threading.Thread(
            target=_serve_reports, args=(self._sync, self._stop), name="shadowgate-async-reports", daemon=True
        )
        self._poller.start()

    @property
    def stats(self) -> PublisherStats:
        """What the publisher did so far (see :class:`~shadowgate.sdk.PublisherStats`)."""
        return self._publisher().stats

    def _publisher(self) -> _P:
        if self._sync is None:
            raise InfrastructureError("publisher is not started: use `async with` or `await publisher.start()`")
        return self._sync

    def _future(self) -> tuple[asyncio.Future[None], Waiter]:
        loop = self._loop
        if loop is None:  # set by start(), which every caller's _publisher() checked
            raise InfrastructureError("publisher is not started")
        future: asyncio.Future[None] = loop.create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

        def settle(error: DeliveryError | None) -> None:
            _call_soon(loop, _settle, future, error)

        return future, settle

    async def flush(self, timeout_s: float = 30.0) -> int:
        """Send everything queued; the number of messages still undelivered after the timeout."""
        return await asyncio.to_thread(self._publisher().flush, timeout_s)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Flush and close; raises DeliveryError when messages remain undelivered (their futures fail too)."""
        if self._sync is None:
            return
        try:
            await asyncio.to_thread(self._sync.close, timeout_s)
        finally:
            self._stop.set()
            if self._poller is not None:
                await asyncio.to_thread(self._poller.join)
            await asyncio.sleep(0)  # let the deliveries flush() reported settle their futures first
            for future in list(self._pending):
                _settle(future, DeliveryError(f"publisher closed before delivery to topic {self._sync.topic}"))

    async def __aenter__(self) -> _AsyncBase[_P]:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    # A report that comes after its loop closed (a publisher never closed) has no one left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _settle(future: asyncio.Future[None], error: DeliveryError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _serve_reports(publisher: ScorePublisher | LabelPublisher, stop: threading.Event) -> None:
    while not stop.is_set():
        publisher._producer.poll(0.05)


class AsyncScorePublisher(_AsyncBase[ScorePublisher]):
    """:class:`~shadowgate.sdk.ScorePublisher` for asyncio: same arguments, awaitable deliveries."""

    def __init__(
        self,
        bootstrap_servers: KafkaTarget = "127.0.0.1:9092",
        topic: str = "scores",
        *,
        batch_size: int = 500,
        linger_s: float = 0.05,
        on_delivery_error: DeliveryCallback | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metadata_timeout_s: float = 10.0,
        metadata_refresh_s: float = 30.0,
    ) -> None:
        super().__init__(on_delivery_error)
        self._args: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "topic": topic,
            "batch_size": batch_size,
            "linger_s": linger_s,
            "producer_config": producer_config,
            "metadata_timeout_s": metadata_timeout_s,
            "metadata_refresh_s": metadata_refresh_s,
        }

    def _build(self, on_error: DeliveryCallback) -> ScorePublisher:
        return ScorePublisher(**self._args, on_delivery_error=on_error)

    def publish_nowait(self, event: ScoreEvent | Mapping[str, Any]) -> asyncio.Future[None]:
        """Validate and queue one event; the future resolves when its message is delivered.

        Raises EventValidationError naming the field (nothing is queued)."""
        publisher = self._publisher()
        ev = validate_score(dict(event) if isinstance(event, Mapping) else event)
        future, settle = self._future()
        publisher._enqueue(ev, settle)
        return future

    async def publish(self, event: ScoreEvent | Mapping[str, Any]) -> None:
        """Validate, queue and wait until the event is delivered (DeliveryError when it is not)."""
        await self.publish_nowait(event)

    async def publish_many(self, events: Iterable[ScoreEvent | Mapping[str, Any]]) -> None:
        """Validate every event first (one bad event queues none), queue them all, wait for every delivery."""
        validated = [validate_score(dict(e) if isinstance(e, Mapping) else e) for e in events]
        await asyncio.gather(*(self.publish_nowait(ev) for ev in validated))

    async def __aenter__(self) -> AsyncScorePublisher:
        await self.start()
        return self


class AsyncLabelPublisher(_AsyncBase[LabelPublisher]):
    """:class:`~shadowgate.sdk.LabelPublisher` for asyncio: keyed by ``request_id``, awaitable deliveries."""

    def __init__(
        self,
        bootstrap_servers: KafkaTarget = "127.0.0.1:9092",
        topic: str = "labels",
        *,
        on_delivery_error: DeliveryCallback | None = None,
        producer_config: Mapping[str, Any] | None = None,
        metadata_refresh_s: float = 30.0,
    ) -> None:
        super().__init__(on_delivery_error)
        self._args: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "topic": topic,
            "producer_config": producer_config,
            "metadata_refresh_s": metadata_refresh_s,
        }

    def _build(self, on_error: DeliveryCallback) -> LabelPublisher:
        return LabelPublisher(**self._args, on_delivery_error=on_error)

    def publish_nowait(self, event: LabelEvent | Mapping[str, Any]) -> asyncio.Future[None]:
        """Validate and queue one label; the future resolves when its message is delivered."""
        publisher = self._publisher()
        ev = validate_label(dict(event) if isinstance(event, Mapping) else event)
        future, settle = self._future()
        publisher._enqueue(ev, settle)
        return future

    async def publish(self, event: LabelEvent | Mapping[str, Any]) -> None:
        """Validate, queue and wait until the label is delivered (DeliveryError when it is not)."""
        await self.publish_nowait(event)

    async def __aenter__(self) -> AsyncLabelPublisher:
        await self.start()
        return self
