"""The state log: how the stores keep a join's state, as one appended record per batch.

A join's state is a map of short string keys to byte values (its *entries*, see :mod:`streams.join.state`).
:class:`StateDelta` is what changed since the previous delta; the stores append each delta whole as a *state
log record* (:class:`StateLog`) and replay the records in order to read the map back (:func:`apply_log`). The
native joins write records in this format directly (``native/``); this module is its reference.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

import cramjam

from governance.errors import StoreError

__all__ = ["StateDelta", "StateLog", "accumulate", "apply_log", "combine", "decode_log", "encode_delta", "pack_log"]


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
