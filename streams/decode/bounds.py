"""Event time bounded against a clock: a message dated too far ahead or behind is a dead letter.

Event time drives everything downstream (the pairer's watermark, the slots, a comparison's first and newest
event, the evaluation grid), and it comes from the producer. So before any of that, every decoded message is
checked against a window around the worker's clock ``now`` (the wall clock live, ``--now`` in replay):

* ``ts > now + lead_s`` (``SHADOWGATE_MAX_EVENT_LEAD_S``): the pairer's watermark is the newest event time,
  so one early event would close the join window of every event older than ``ts - join_window_s``: the lead
  bound is what stops one event from moving a watermark far (keep it under the join window);
* ``ts < now - lag_s`` (``SHADOWGATE_MAX_EVENT_LAG_S``): older than any window a gate reads, yet it would
  move a comparison's first event (the default stage start) back.

A score message is checked as a whole: one event outside makes the message a dead letter, as one invalid
event makes an envelope invalid for the contract. The check runs after decoding, on the decoded values of
every tier alike (native blocks, msgspec structs, contract models): for native blocks in ONE native call per
batch (:func:`blocks_outside`), with no Python object per event. The time an invalid message claims (for its
integrity violation) is only believed inside the same window (:meth:`TimeWindow.admits`).

Pure: no clock of its own, ``now`` is passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from governance.errors import ConfigError
from streams.native import core as _native

if TYPE_CHECKING:
    from streams._native import LabelBlock, ScoreBlock
    from streams.decode.decoder import LabelLike, ScoreLike

__all__ = ["EventTimeBounds", "Outside", "TimeWindow"]

LEAD_SETTING = "SHADOWGATE_MAX_EVENT_LEAD_S"
LAG_SETTING = "SHADOWGATE_MAX_EVENT_LAG_S"

#: (message index, event index, event ts) of the first event outside the window, per message that has one.
Outside = list[tuple[int, int, float]]


@dataclass(frozen=True)
class EventTimeBounds:
    """How far event time may be ahead of (``lead_s``) and behind (``lag_s``) the clock."""

    lead_s: float
    lag_s: float

    def __post_init__(self) -> None:
        if not (self.lead_s >= 0 and self.lag_s > 0) or math.isinf(self.lead_s) or math.isinf(self.lag_s):
            raise ConfigError(
                f"{LEAD_SETTING} must be >= 0 and {LAG_SETTING} > 0, both finite (got {self.lead_s}, {self.lag_s})"
            )

    def check_join_window(self, join_window_s: float) -> None:
        """Refuse a lead that lets one early event close the join window of the current traffic."""
        if self.lead_s >= join_window_s:
            raise ConfigError(
                f"{LEAD_SETTING}={_num(self.lead_s)} must be under SHADOWGATE_JOIN_WINDOW_S={_num(join_window_s)}: "
                "an event dated that far ahead would close the join window of every event of now"
            )

    def window(self, now_s: float) -> TimeWindow:
        """The window around ``now_s``."""
        return TimeWindow(now_s, now_s - self.lag_s, now_s + self.lead_s, self)


@dataclass(frozen=True)
class TimeWindow:
    """``[low_s, high_s]`` around ``now_s``: the event times a batch processed at ``now_s`` admits."""

    now_s: float
    low_s: float
    high_s: float
    bounds: EventTimeBounds

    def admits(self, ts_s: float) -> bool:
        return self.low_s <= ts_s <= self.high_s

    def reason(self, ts_s: float, event: int | None = None) -> str:
        """The dead-letter reason of a message dated ``ts_s`` (its event ``event`` of several), outside the window."""
        which = "" if event is None else f"event {event}: "
        if ts_s > self.high_s:
            return (f"{which}ts {_iso(ts_s)} is {ts_s - self.now_s:,.0f} s ahead of the clock ({_iso(self.now_s)}): "
                    f"more than {LEAD_SETTING}={_num(self.bounds.lead_s)}")  # fmt: skip
        return (f"{which}ts {_iso(ts_s)} is {self.now_s - ts_s:,.0f} s behind the clock ({_iso(self.now_s)}): "
                f"more than {LAG_SETTING}={_num(self.bounds.lag_s)}")  # fmt: skip

    def ahead(self, ts_s: float) -> bool:
        """Whether ``ts_s`` is past the window's lead (else, when outside, behind its lag)."""
        return ts_s > self.high_s

    def scores_outside(self, blocks: Sequence[ScoreBlock]) -> Outside:
        """Native score blocks with an event outside the window (one native call)."""
        return _native.scores_outside(blocks, self.low_s, self.high_s) if blocks else []

    def labels_outside(self, blocks: Sequence[LabelBlock]) -> Outside:
        """Native label blocks with a label outside the window (one native call)."""
        return _native.labels_outside(blocks, self.low_s, self.high_s) if blocks else []

    def events_outside(self, messages: Sequence[Sequence[ScoreLike] | LabelLike]) -> Outside:
        """Decoded messages of the reference path (a score message's events, or one label) outside the window.

        The reference path builds Python objects per event anyway; this reads their ``ts``.
        """
        out: Outside = []
        for i, message in enumerate(messages):
            events: Sequence[Any] = message if isinstance(message, Sequence) else [message]
            for j, event in enumerate(events):
                ts_s = event.ts.timestamp()
                if not self.admits(ts_s):
                    out.append((i, j, ts_s))
                    break
        return out


def _num(value: float) -> str:
    """A setting's value as it would be written: 30, 1296000, 0.5."""
    return f"{value:.0f}" if value == int(value) else repr(value)


def _iso(ts_s: float) -> str:
    try:
        return datetime.fromtimestamp(ts_s, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{ts_s:.0f} (epoch s)"
