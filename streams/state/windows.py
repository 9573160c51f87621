"""Event-time slot arithmetic: minute, hour and day slots, and the plan that covers a window with them.

Pure code: no I/O, no clock (``now_s`` is always passed in). Times are integer UTC epoch seconds; the
``_s`` suffix says so. A *slot* is one aligned interval ``[start_s, start_s + step_s)`` of one
:class:`Granularity`; the aggregator adds every event to the three slots that contain it
(:func:`slots_for`), and a window is answered by merging the few slots that :func:`plan` picks.

Retention. A slot of granularity ``g`` can be read while ``now_s < slot.end_s + retention[g]`` (the store
expires it at exactly that instant; see :meth:`Retention.expires_at_s`). Defaults: minute slots 26 h,
hour slots 15 d, day slots 35 d. Expiry is anchored to the slot's event time, not to the time of the
last write, so a late event never extends a slot's life and a replayed batch expires exactly like the
original.

Plan guarantees (property-tested in ``tests/test_windows.py``):

* the slots tile ``[plan.start_s, plan.end_s)`` exactly: no gap, no overlap, sorted by start;
* the tiling is the canonical one: day slots for whole UTC days, hour slots for whole hours, minute slots
  for the rest, so a window needs at most 59 + 23 + days + 23 + 59 slots (24 h: at most 141; 14 d, whose
  older edge is past the minute retention: at most 23 + 14 + 23 + 59);
* every slot in the plan is still retained at ``now_s``;
* rounding is always outward to the minute (a partial minute is read whole). Beyond that, the range is
  changed only where retention forces it, and the plan says so: when the older edge needs minute slots
  that have expired it is rounded down to the hour (``older_edge == "hour"``), when it needs expired
  hour slots, down to the day (``"day"``); when even day slots have expired the older edge is moved
  *forward* to the oldest retained day and data before it is gone (``"clipped"``). The newer edge is
  rounded up the same way only when the whole range is old (``newer_edge``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

from governance.errors import ConfigError

__all__ = [
    "DAY_S",
    "HOUR_S",
    "MINUTE_S",
    "WINDOWS",
    "Granularity",
    "Plan",
    "Retention",
    "Slot",
    "named_window",
    "plan",
    "slots_for",
    "to_epoch_s",
]

MINUTE_S = 60
HOUR_S = 3600
DAY_S = 86400

#: Named rolling windows and their duration; ``since=<ISO datetime>`` is also accepted by named_window.
WINDOWS: dict[str, int] = {"5m": 5 * MINUTE_S, "1h": HOUR_S, "24h": DAY_S, "7d": 7 * DAY_S, "14d": 14 * DAY_S}

EdgeRounding = Literal["exact", "hour", "day", "clipped"]


class Granularity(enum.StrEnum):
    """Slot sizes; the value is the short tag used in store keys."""

    MINUTE = "m"
    HOUR = "h"
    DAY = "d"

    @property
    def step_s(self) -> int:
        return _STEP_S[self]


_STEP_S: dict[Granularity, int] = {
    Granularity.MINUTE: MINUTE_S,
    Granularity.HOUR: HOUR_S,
    Granularity.DAY: DAY_S,
}
_LARGEST_FIRST = (Granularity.DAY, Granularity.HOUR, Granularity.MINUTE)


class Slot(NamedTuple):
    """One aligned event-time interval ``[start_s, start_s + granularity.step_s)``."""

    granularity: Granularity
    start_s: int

    @property
    def end_s(self) -> int:
        return self.start_s + self.granularity.step_s


@dataclass(frozen=True)
class Retention:
    """How long each granularity's slots are kept after the slot ends, in seconds.

    Must be non-decreasing from minute to hour to day (coarser slots are the fallback when finer ones
    have expired).
    """

    minute_s: int = 26 * HOUR_S
    hour_s: int = 15 * DAY_S
    day_s: int = 35 * DAY_S

    def __post_init__(self) -> None:
        for name in ("minute_s", "hour_s", "day_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"retention {name}={value!r}: must be a positive integer of seconds")
        if not self.minute_s <= self.hour_s <= self.day_s:
            raise ConfigError(
                f"retention minute_s={self.minute_s}, hour_s={self.hour_s}, day_s={self.day_s}: "
                "must be non-decreasing (minute <= hour <= day)"
            )

    def of(self, granularity: Granularity) -> int:
        """Retention of ``granularity`` in seconds."""
        if granularity is Granularity.MINUTE:
            return self.minute_s
        if granularity is Granularity.HOUR:
            return self.hour_s
        return self.day_s

    def expires_at_s(self, slot: Slot) -> int:
        """The epoch second from which ``slot`` is gone (``EXPIREAT`` in Redis)."""
        return slot.end_s + self.of(slot.granularity)

    def oldest_start_s(self, granularity: Granularity, now_s: int) -> int:
        """Start of the oldest slot of ``granularity`` still retained at ``now_s``."""
        step = granularity.step_s
        # retained iff start + step + retention > now, i.e. start > now - step - retention
        return _floor(now_s - step - self.of(granularity), step) + step


@dataclass(frozen=True)
class Plan:
    """The slots that answer one window, and how the covered range differs from the request."""

    slots: tuple[Slot, ...]
    start_s: int
    end_s: int
    requested_start_s: int
    requested_end_s: int
    older_edge: EdgeRounding
    newer_edge: EdgeRounding

    @property
    def exact(self) -> bool:
        """True when only the outward rounding to whole minutes was applied."""
        return self.older_edge == "exact" and self.newer_edge == "exact"


def to_epoch_s(when: datetime) -> int:
    """Whole epoch seconds (floored) of a timezone-aware datetime; naive datetimes are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"datetime {when.isoformat()!r} is naive: pass a timezone-aware (UTC) datetime")
    return int(when.timestamp() // 1)


def slots_for(ts_s: float) -> tuple[Slot, Slot, Slot]:
    """The minute, hour and day slots that contain the event time ``ts_s`` (epoch seconds)."""
    t = int(ts_s // 1)
    return (
        Slot(Granularity.MINUTE, _floor(t, MINUTE_S)),
        Slot(Granularity.HOUR, _floor(t, HOUR_S)),
        Slot(Granularity.DAY, _floor(t, DAY_S)),
    )


def named_window(name: str, now_s: int) -> tuple[int, int]:
    """``(start_s, end_s)`` of a named window at ``now_s``.

    Rolling windows (``5m``, ``1h``, ``24h``, ``7d``, ``14d``) end at the end of the current minute, so
    the minute in progress is included (also when ``now_s`` is its first second) and ``5m`` is exactly
    five minute slots. ``since=<ISO 8601
    datetime with offset>`` (e.g. ``since=2025-03-01T00:00:00Z``) runs from that instant to the same end.
    """
    # Not _ceil: at a whole minute that would end the window at now_s and leave out the minute now_s opens,
    # which holds the events of that second (e.g. a comparison's newest event, which windows end at).
    end_s = _floor(now_s, MINUTE_S) + MINUTE_S
    if name in WINDOWS:
        return end_s - WINDOWS[name], end_s
    if name.startswith("since="):
        text = name.removeprefix("since=")
        try:
            since = datetime.fromisoformat(text)
        except ValueError:
            raise ConfigError(f"window {name!r}: {text!r} is not an ISO 8601 datetime") from None
        if since.tzinfo is None:
            raise ConfigError(f"window {name!r}: add a UTC offset (e.g. {text}Z), naive times are ambiguous")
        start_s = to_epoch_s(since.astimezone(UTC))
        if start_s > end_s:
            raise ConfigError(f"window {name!r}: starts after now ({now_s})")
        return start_s, end_s
    raise ConfigError(f"window {name!r}: unknown; use one of {', '.join(WINDOWS)} or since=<ISO datetime>")


def plan(start_s: int, end_s: int, now_s: int, retention: Retention | None = None) -> Plan:
    """The fewest retained slots that exactly tile ``[start_s, end_s)`` (rounded as the module says).

    An empty or inverted range gives an empty plan.
    """
    ret = retention if retention is not None else Retention()
    req_start, req_end = int(start_s), int(end_s)
    if req_end <= req_start:
        return Plan((), req_start, req_start, req_start, req_end, "exact", "exact")
    start, end = _floor(req_start, MINUTE_S), _ceil(req_end, MINUTE_S)
    oldest_m = ret.oldest_start_s(Granularity.MINUTE, now_s)
    oldest_h = ret.oldest_start_s(Granularity.HOUR, now_s)
    oldest_d = ret.oldest_start_s(Granularity.DAY, now_s)

    older: EdgeRounding = "exact"
    if start < oldest_d:
        start, older = oldest_d, "clipped"
    if start >= end:
        return Plan((), end, end, req_start, req_end, older, "exact")
    # Left edge: minute slots are used up to the next hour boundary, hour slots up to the next day.
    if start % HOUR_S and start < oldest_m:
        start, older = _floor(start, HOUR_S), "hour"
    if start % DAY_S and start < oldest_h:
        start, older = _floor(start, DAY_S), "day"
    # Right edge: minute slots from the last hour boundary, hour slots from the last day boundary.
    newer: EdgeRounding = "exact"
    # (Within one hour or day of the start, the left edge's check already covers these slots.)
    if end % HOUR_S and max(_floor(end, HOUR_S), start) < oldest_m:
        end, newer = _ceil(end, HOUR_S), "hour"
    if end % DAY_S and max(_floor(end, DAY_S), start) < oldest_h:
        end, newer = _ceil(end, DAY_S), "day"
    return Plan(_tile(start, end), start, end, req_start, req_end, older, newer)


def _tile(start: int, end: int) -> tuple[Slot, ...]:
    # Greedy: at each point take the largest slot aligned there that fits. On nested aligned grids this
    # is the canonical (and minimal) tiling; plan() has already moved the edges so each slot is retained.
    slots: list[Slot] = []
    t = start
    while t < end:
        for g in _LARGEST_FIRST:
            step = g.step_s
            if t % step == 0 and t + step <= end:
                slots.append(Slot(g, t))
                t += step
                break
        else:  # pragma: no cover - start and end are minute-aligned, so a minute always fits
            raise AssertionError(f"cannot tile [{start}, {end}) at {t}")
    return tuple(slots)


def _floor(t: int, step: int) -> int:
    return t - t % step


def _ceil(t: int, step: int) -> int:
    return -((-t) // step) * step
