"""The worker's message decoder, in three tiers: native Rust, msgspec, then the pydantic contract.

:mod:`governance.contract.wire` (pydantic) is the contract: what it accepts is valid, and its errors name the field
in the dead-letter reason. Validating with it costs about 3.4 µs per score event, and its model objects are
tracked by the garbage collector, so a worker holding hours of state pays again in every collection.

1. ``streams._native`` (Rust, ``native/core/src/decode.rs``) turns a message straight into a block
   (:class:`ScoreBlock` / :class:`LabelBlock`, no Python object per event; well under 0.5 µs per event). It
   answers ``None`` for anything it is not certain the contract accepts with the same values (a timestamp
   form it does not parse, an escaped name, an int beyond 64 bits, any invalid message...).
2. msgspec structs that encode the same rules (about 1.0 µs per event, as fast as orjson building plain
   dicts; never tracked by the collector) take the rest; their events become a block with ``from_events``.
3. Every message msgspec refuses goes to :func:`governance.contract.wire.decode_scores`: that gives the reason of an
   invalid message, and an event the contract accepts but the faster tiers do not still counts.

The native core is optional (:mod:`streams.native`): without it the worker decodes with tiers 2 and 3
(:func:`decode_scores_fast`, :func:`decode_label_fast`); the ``*_block`` functions need it.

The invariant, checked with Hypothesis against the pydantic models (``tests/test_decoding.py``,
``tests/test_native_decode.py``): whatever a faster tier accepts, the contract accepts with the same values
(timestamps as the same instant). Where the parsers differ the fast paths defer: a timestamp with more than
six fraction digits (pydantic truncates, msgspec rounds) or in the year 0001 or 9999 (an offset can move it
out of the years 1-9999 in UTC, which only the contract refuses) sends its message to the contract, found by
one regex scan of the raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

import msgspec

from governance.contract.wire import (
    FEATURE_NAME_CHARS,
    MAX_BATCH_EVENTS,
    MAX_FEATURES,
    NAME_CHARS,
    decode_label,
    decode_scores,
)
from streams.native import core as _native

if TYPE_CHECKING:
    from streams._native import LabelBlock, ScoreBlock

__all__ = [
    "FastLabel",
    "FastScore",
    "LabelLike",
    "ScoreLike",
    "decode_label_block",
    "decode_label_fast",
    "decode_scores_block",
    "decode_scores_fast",
]


class ScoreLike(Protocol):
    """What pairing reads of a score event: :class:`FastScore` and :class:`ScoreEvent` both have it."""

    @property
    def request_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def role(self) -> Literal["production", "shadow", "canary"]: ...
    @property
    def score(self) -> float: ...
    @property
    def latency_ms(self) -> float: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def error(self) -> str | None: ...
    @property
    def features(self) -> dict[str, float | int | str | None] | None: ...


class LabelLike(Protocol):
    """What the label join reads of a label event: :class:`FastLabel` and :class:`LabelEvent` both have it."""

    @property
    def request_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def label(self) -> int: ...
    @property
    def ts(self) -> datetime: ...


# The contract's constraints (governance.wire), in msgspec's terms. Python's ``re`` lets ``$`` match
# before a final newline, pydantic's regex does not: ``\Z`` is the end of the string in both senses.
# Names repeat in every event: their patterns are checked once per distinct name and message (``_names_ok``),
# not by msgspec per occurrence.
_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_NAME = re.compile(rf"{NAME_CHARS}+\Z")
_RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_FEATURE_NAME = re.compile(rf"{FEATURE_NAME_CHARS}+\Z")
_FeatureValue = float | int | Annotated[str, msgspec.Meta(max_length=256)] | None
_Aware = Annotated[datetime, msgspec.Meta(tz=True)]

# What msgspec reads otherwise than the contract, found in the raw bytes, sends the message to the contract:
# * a timestamp with more than microsecond precision: msgspec rounds it, pydantic truncates it (seven or more
#   fraction digits then the offset: possessive, so the digits of a score are never re-scanned);
# * a string starting with the year 0001 or 9999: with an offset, such a timestamp can leave the years
#   1-9999 once converted to UTC, which msgspec accepts and the contract refuses (an offset moves an instant
#   by less than a day, so no other year can). Any other string starting so only takes the slower path.
_DEFER = re.compile(rb'\.\d{7,}+[Zz+\-]|"(?:0001|9999)-')


class FastScore(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A validated score event; the attributes of :class:`governance.contract.wire.ScoreEvent`."""

    request_id: _RequestId
    model: _Name
    version: _Name
    role: Literal["production", "shadow", "canary"]
    score: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]  # msgspec refuses NaN and out-of-range numbers
    latency_ms: Annotated[float, msgspec.Meta(ge=0.0)]
    ts: _Aware
    error: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    features: Annotated[dict[_Name, _FeatureValue], msgspec.Meta(max_length=MAX_FEATURES)] | None = None


class _Envelope(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    events: Annotated[list[FastScore], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]


class FastLabel(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A validated label event; the attributes of :class:`governance.contract.wire.LabelEvent`."""

    request_id: _RequestId
    model: _Name
    label: Annotated[int, msgspec.Meta(ge=0, le=1)]  # msgspec never takes true/false for an int
    ts: _Aware


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_SCORE = msgspec.json.Decoder(FastScore)
_LABEL = msgspec.json.Decoder(FastLabel)


def decode_scores_fast(raw: bytes) -> Sequence[ScoreLike]:
    """The events of one score message (envelope or single event); EventValidationError as the contract's."""
    if _DEFER.search(raw) is None:
        try:
            events = _ENVELOPE.decode(raw).events if raw.startswith(b'{"events":') else [_SCORE.decode(raw)]
        except msgspec.MsgspecError:
            pass
        else:
            if _names_ok(events):
                return events
    return decode_scores(raw)


def decode_label_fast(raw: bytes) -> LabelLike:
    """One label message; EventValidationError as the contract's."""
    if _DEFER.search(raw) is None:
        try:
            label = _LABEL.decode(raw)
        except msgspec.MsgspecError:
            pass
        else:
            if _NAME.match(label.model):
                return label
    return decode_label(raw)


def decode_scores_block(raw: bytes) -> ScoreBlock:
    """The events of one score message as a block: native first, else msgspec, else the contract.

    Raises EventValidationError as the contract does for an invalid message. Needs the native core.
    """
    block = _native.decode_scores(raw)
    if block is None:
        block = _native.ScoreBlock.from_events(decode_scores_fast(raw))
    return block


def decode_label_block(raw: bytes) -> LabelBlock:
    """One label message as a block of one label: native first, else msgspec, else the contract (needs the
    native core)."""
    block = _native.decode_label(raw)
    if block is None:
        block = _native.LabelBlock.from_events([decode_label_fast(raw)])
    return block


# Names already matched (model and version names; feature names), so a stream of single-event messages
# does not run the regexes for every message. Bounded: past the bound names are matched every time.
_GOOD_NAMES: set[str] = set()
_GOOD_FEATURES: set[str] = set()
_MAX_REMEMBERED = 10_000


def _names_ok(events: list[FastScore]) -> bool:
    names = {e.model for e in events} | {e.version for e in events}
    features: set[str] = set()
    for e in events:
        if e.features:
            features.update(e.features)
    return _matches(names, _NAME, _GOOD_NAMES) and _matches(features, _FEATURE_NAME, _GOOD_FEATURES)


def _matches(names: set[str], pattern: re.Pattern[str], good: set[str]) -> bool:
    if names <= good:
        return True
    if not all(pattern.match(name) for name in names - good):
        return False
    if len(good) < _MAX_REMEMBERED:
        good |= names
    return True
