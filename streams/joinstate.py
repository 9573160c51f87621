"""Shared plumbing of the two stateful joins (:mod:`streams.pairing`, :mod:`streams.labels`).

* event time as float epoch seconds (the joins compare and heap-order plain floats, never datetimes);
* the versioned checkpoint envelope: ``{"format": <kind>, "version": <int>, ...}`` serialised with
  orjson. Never pickle: a checkpoint is read back from Redis or Kafka, where anyone with write access
  could plant bytes. A checkpoint of another kind or version is refused with :class:`CheckpointError`;
* a bounded string interner, so the thousands of pending events that share a model or version name
  share one string object instead of each keeping its own decoded copy.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import orjson

from governance.errors import ConfigError, StoreError

__all__ = ["CheckpointError", "Interner", "dump_checkpoint", "epoch_s", "load_checkpoint", "positive"]


class CheckpointError(StoreError, ValueError):
    """A join checkpoint that cannot be restored (other kind, unknown version, malformed entry)."""


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


def dump_checkpoint(kind: str, version: int, body: dict[str, Any]) -> bytes:
    """Serialise a checkpoint body under its kind and format version."""
    return orjson.dumps({"format": kind, "version": version, **body})


def load_checkpoint(data: bytes, kind: str, version: int) -> dict[str, Any]:
    """Parse a checkpoint written by :func:`dump_checkpoint` for the same kind and version."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{kind} checkpoint is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{kind} checkpoint must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") != kind:
        raise CheckpointError(f"checkpoint format {doc.get('format')!r} is not {kind!r}: wrong state key?")
    if doc.get("version") != version:
        raise CheckpointError(
            f"{kind} checkpoint version {doc.get('version')!r} is not supported (this build reads {version})"
        )
    return doc


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
