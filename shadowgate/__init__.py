"""shadowgate: the SDK for scoring services and the command line.

Scoring services publish every request's production and shadow/canary scores with
:class:`ScorePublisher` and ground-truth labels with :class:`LabelPublisher` (in asyncio services:
:class:`AsyncScorePublisher`, :class:`AsyncLabelPublisher`), read their serving
assignment with :class:`RoutingClient`, and check a model artifact's ML-DSA-65 manifest with
:func:`verify_artifact` (against a :class:`TrustStore`) before they load it.

``pip install shadowgate`` brings the publishers alone (confluent-kafka, pydantic, pydantic-settings, orjson);
the routing client and artifact verification need ``shadowgate[routing]``, the processes and the command line
``shadowgate[all]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AsyncLabelPublisher",
    "AsyncScorePublisher",
    "LabelEvent",
    "LabelPublisher",
    "RoutingClient",
    "ScoreBatch",
    "ScoreEvent",
    "ScorePublisher",
    "TrustStore",
    "verify_artifact",
]

if TYPE_CHECKING:
    from governance.contract.wire import LabelEvent, ScoreBatch, ScoreEvent
    from governance.crypto import TrustStore, verify_artifact
    from shadowgate.routing_client import RoutingClient
    from shadowgate.sdk import LabelPublisher, ScorePublisher
    from shadowgate.sdk_async import AsyncLabelPublisher, AsyncScorePublisher


def __getattr__(name: str) -> Any:
    # Lazy so that `import shadowgate` does not load confluent-kafka for CLI commands that need none.
    if name in ("ScorePublisher", "LabelPublisher"):
        from shadowgate import sdk

        return getattr(sdk, name)
    if name in ("AsyncScorePublisher", "AsyncLabelPublisher"):
        from shadowgate import sdk_async

        return getattr(sdk_async, name)
    if name in ("ScoreEvent", "ScoreBatch", "LabelEvent"):
        from governance.contract import wire

        return getattr(wire, name)
    if name in ("TrustStore", "verify_artifact"):
        from governance import crypto

        return getattr(crypto, name)
    if name == "RoutingClient":
        from shadowgate.routing_client import RoutingClient

        return RoutingClient
    raise AttributeError(name)
