"""shadowgate: the SDK for scoring services and the command line.

Scoring services publish every request's production and shadow/canary scores with
:class:`ScorePublisher` and ground-truth labels with :class:`LabelPublisher`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LabelEvent", "LabelPublisher", "ScoreBatch", "ScoreEvent", "ScorePublisher"]

if TYPE_CHECKING:
    from governance.wire import LabelEvent, ScoreBatch, ScoreEvent
    from shadowgate.sdk import LabelPublisher, ScorePublisher


def __getattr__(name: str) -> Any:
    # Lazy so that `import shadowgate` does not load confluent-kafka for CLI commands that need none.
    if name in ("ScorePublisher", "LabelPublisher"):
        from shadowgate import sdk

        return getattr(sdk, name)
    if name in ("ScoreEvent", "ScoreBatch", "LabelEvent"):
        from governance import wire

        return getattr(wire, name)
    raise AttributeError(name)
