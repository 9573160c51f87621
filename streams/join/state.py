"""Shared plumbing of the two stateful joins (the reference modules :mod:`~streams.join.reference.pairing` and
:mod:`~streams.join.reference.labels`, and the native ones).

* event time as float epoch seconds (the joins compare and heap-order plain floats, never datetimes);
* incremental state: a join's state is a set of *entries*, one short string key per remembered item plus one
  meta entry (key ``"m"``: format version, watermark, sequence counter), each encoded as a compact orjson
  array. A ``StateDelta`` (:mod:`streams.state.statelog`) is what changed since the previous delta: upserts
  and deletes; the stores keep deltas as state log records, and accumulating every delta gives the whole state
  back, which ``restore_entries`` rebuilds. Never pickle: entries are read back from Redis, where anyone with
  write access could plant bytes; a malformed entry is refused with :class:`CheckpointError`;
* a bounded string interner, so the thousands of pending events that share a model or version name
  share one string object instead of each keeping its own decoded copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from governance.errors import ConfigError, StoreError

__all__ = [
    "META_KEY",
    "CheckpointError",
    "Interner",
    "dump_meta",
    "epoch_s",
    "is_int",
    "is_num",
    "load_entry",
    "load_meta",
    "parse_seq",
    "positive",
    "section",
]

#: The key of the one meta entry of a join's state (never a valid item key: those start otherwise).
META_KEY = "m"


class CheckpointError(StoreError, ValueError):
    """Join state that cannot be restored (unknown version, malformed entry)."""


def section(entries: Mapping[str, bytes], prefix: str) -> dict[str, bytes]:
    """The entries under ``prefix``, with the prefix removed (the inverse of :func:`combine`)."""
    cut = len(prefix)
    return {key[cut:]: value for key, value in entries.items() if key.startswith(prefix)}


def load_meta(kind: str, version: int, entries: Mapping[str, bytes]) -> tuple[float, int] | None:
    """``(watermark_s, next_seq)`` from the meta entry, or None for an empty state.

    The watermark is ``-inf`` before any event. Raises CheckpointError when items exist without a meta
    entry, or the meta entry is of another format version or malformed.
    """
    raw = entries.get(META_KEY)
    if raw is None:
        if entries:
            raise CheckpointError(f"{kind} state: {len(entries)} entries but no meta entry {META_KEY!r}")
        return None
    doc = load_entry(kind, META_KEY, raw)
    if len(doc) != 3 or doc[0] != version:
        raise CheckpointError(
            f"{kind} state meta {doc!r:.80}: expected [{version}, watermark_s, next_seq] "
            f"(this build reads format version {version})"
        )
    _, watermark, next_seq = doc
    if not (watermark is None or is_num(watermark)) or not is_int(next_seq) or next_seq < 0:
        raise CheckpointError(f"{kind} state meta {doc!r:.80}: watermark must be a number or null, next_seq an int")
    return (-math.inf if watermark is None else float(watermark)), next_seq


def dump_meta(version: int, watermark_s: float, next_seq: int) -> bytes:
    return orjson.dumps([version, None if watermark_s == -math.inf else watermark_s, next_seq])


def load_entry(kind: str, key: str, raw: bytes) -> list[Any]:
    """One entry's JSON array, or CheckpointError naming the key."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{kind} state entry {key!r} is not valid JSON: {exc}") from None
    if not isinstance(doc, list):
        raise CheckpointError(f"{kind} state entry {key!r} must be a JSON array, got {type(doc).__name__}")
    return doc


def parse_seq(kind: str, key: str, digits: str) -> int:
    """The sequence number a key carries as lowercase hex, or CheckpointError naming the key."""
    if not digits or digits.strip("0123456789abcdef") or (digits[0] == "0" and len(digits) > 1):
        raise CheckpointError(f"{kind} state key {key!r} is not a known entry key (canonical hex sequence)")
    return int(digits, 16)


def is_num(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def epoch_s(value: datetime, name: str = "now") -> float:
    """Seconds since the Unix epoch of an aware datetime; a naive one is refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value!r} is a naive datetime: pass a timezone-aware UTC datetime")
    return value.timestamp()


def positive(name: str, value: float) -> float:
    """A finite, strictly positive setting, or ConfigError naming it."""
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={value!r}: must be a finite number > 0")
    return float(value)


class Interner(dict[str, str]):
    """``interner[name]`` maps equal strings to one shared object; holds at most ``limit`` of them.

    A hit is a plain dict lookup (the hot path); past the limit new strings are returned as given (still
    correct, just not shared), so a flood of bogus names cannot grow the table without bound.
    """

    def __init__(self, limit: int = 65_536) -> None:
        super().__init__()
        self._limit = limit

    def __missing__(self, value: str) -> str:
        if len(self) < self._limit:
            self[value] = value
        return value
