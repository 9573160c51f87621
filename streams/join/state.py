"""Shared plumbing of the two stateful joins (the reference modules :mod:`~streams.join.reference.pairing` and
:mod:`~streams.join.reference.labels`, and the native ones).

* event time as float epoch seconds (the joins compare and heap-order plain floats, never datetimes);
* incremental state: a join's state is a set of *entries*, one short string key per remembered item plus one
  meta entry (key ``"m"``: format version, watermark, sequence counter), each encoded as a compact orjson
  array. :class:`StateDelta` is what changed since the previous delta: upserts and deletes. Accumulating every
  delta into one mapping (:func:`accumulate`) gives the whole state back, which ``restore_entries`` rebuilds.
  The stores keep deltas as *state log records* (:class:`StateLog`): one byte string per delta, appended whole
  (the native joins write them directly), see below. Never pickle: entries are read back from Redis, where
  anyone with write access could plant bytes; a malformed entry is refused with :class:`CheckpointError`;
* a bounded string interner, so the thousands of pending events that share a model or version name
  share one string object instead of each keeping its own decoded copy.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cramjam
import orjson

from governance.errors import ConfigError, StoreError

__all__ = [
    "META_KEY",
    "CheckpointError",
    "Interner",
    "StateDelta",
    "StateLog",
    "accumulate",
    "apply_log",
    "decode_log",
    "encode_delta",
    "pack_log",
    "combine",
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


@dataclass(frozen=True)
class StateDelta:
    """What changed in a keyed state since the previous delta.

    Applying it (:func:`accumulate`) deletes ``deletes`` first, then sets ``upserts``; a key in both ends
    up set. A join never reuses a key, so its deltas never hold one key twice. Treat both as read-only.
    """

    upserts: dict[str, bytes]
    deletes: frozenset[str]

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)

    @classmethod
    def empty(cls) -> StateDelta:
        return cls({}, frozenset())


@dataclass(frozen=True)
class StateLog:
    """A state delta as one *state log record*: what the stores append, one value per batch.

    Format: ``b"Z"`` and a zstd frame of the plain record (what :func:`pack_log` makes of a record of
    4 KiB or more: JSON entries shrink about 5x, and Redis takes a large value at about 100 MB/s), or the
    plain record: a sequence of items applied in order, ``b"D" key_len:u32le key`` (delete) or
    ``b"U" key_len:u32le key value_len:u32le value`` (upsert), keys UTF-8. A record of a
    :class:`StateDelta` holds its deletes first, then its upserts (``accumulate``'s order), so records of
    several joins (each under its key prefix) concatenate into one. ``replace``: the record is the whole
    state (a compaction), which replaces the stored map instead of updating it.
    """

    blob: bytes
    replace: bool = False

    @classmethod
    def of(cls, delta: StateDelta, replace: bool = False) -> StateLog:
        return cls(encode_delta(delta), replace)


_U32 = struct.Struct("<I")


def encode_delta(delta: StateDelta, prefix: str = "") -> bytes:
    """The state log record of ``delta``, every key under ``prefix`` (the reference encoder)."""
    out = bytearray()
    for key in sorted(delta.deletes):
        raw = (prefix + key).encode()
        out += b"D" + _U32.pack(len(raw)) + raw
    for key, value in delta.upserts.items():
        raw = (prefix + key).encode()
        out += b"U" + _U32.pack(len(raw)) + raw + _U32.pack(len(value)) + value
    return bytes(out)


_PACK_MIN_BYTES = 4096


def pack_log(record: bytes) -> bytes:
    """A plain record as stored: zstd-compressed (``b"Z"`` + frame) from 4 KiB on, else as it is."""
    if len(record) < _PACK_MIN_BYTES:
        return record
    return b"Z" + bytes(cramjam.zstd.compress(record, level=1))


def decode_log(blob: bytes) -> list[tuple[str, bytes | None]]:
    """The items of one state log record in order: ``(key, value)``, value None for a delete.

    Raises StoreError naming the byte offset when the record is malformed.
    """
    if blob[:1] == b"Z":
        try:
            blob = bytes(cramjam.zstd.decompress(blob[1:]))
        except cramjam.DecompressionError as exc:
            raise StoreError(f"state log record malformed: its zstd frame does not decompress ({exc})") from None
    view = memoryview(blob)
    at, end = 0, len(blob)
    items: list[tuple[str, bytes | None]] = []
    try:
        while at < end:
            op = blob[at]
            (klen,) = _U32.unpack_from(view, at + 1)
            if at + 5 + klen > end:
                raise ValueError("key runs past the end")
            key = bytes(view[at + 5 : at + 5 + klen]).decode()
            at += 5 + klen
            if op == 0x44:  # D
                items.append((key, None))
            elif op == 0x55:  # U
                (vlen,) = _U32.unpack_from(view, at)
                if at + 4 + vlen > end:
                    raise ValueError("value runs past the end")
                items.append((key, bytes(view[at + 4 : at + 4 + vlen])))
                at += 4 + vlen
            else:
                raise ValueError(f"unknown item type {op!r}")
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise StoreError(f"state log record malformed at byte {at} of {end}: {exc}") from None
    return items


def apply_log(entries: MutableMapping[str, bytes], blob: bytes) -> None:
    """Apply one state log record to ``entries`` in place (StoreError, nothing applied, if malformed)."""
    for key, value in decode_log(blob):
        if value is None:
            entries.pop(key, None)
        else:
            entries[key] = value


def accumulate(entries: MutableMapping[str, bytes], delta: StateDelta) -> None:
    """Apply ``delta`` to ``entries`` in place (deletes, then upserts)."""
    for key in delta.deletes:
        entries.pop(key, None)
    entries.update(delta.upserts)


def combine(parts: Mapping[str, StateDelta]) -> StateDelta:
    """One delta of several states, each under its key prefix (``{"p/": pairer, "l/": joiner}``)."""
    upserts: dict[str, bytes] = {}
    deletes: set[str] = set()
    for prefix, delta in parts.items():
        for key, value in delta.upserts.items():
            upserts[prefix + key] = value
        deletes.update(prefix + key for key in delta.deletes)
    return StateDelta(upserts, frozenset(deletes))


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
