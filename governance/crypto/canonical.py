"""Canonical JSON bytes: the one byte form of a record that gets signed.

Guarantees:

* Deterministic: keys sorted (``orjson.OPT_SORT_KEYS``), no whitespace, floats in shortest round-trip form,
  datetimes as UTC ISO 8601 with microseconds. Equal values give equal bytes regardless of key order.
* Stable across a JSON round trip: ``canonical_bytes(orjson.loads(canonical_bytes(v))) ==
  canonical_bytes(v)``, so a consumer that decodes a record from Kafka recomputes exactly the signed bytes.
* Refuses what JSON cannot carry faithfully instead of guessing: NaN and infinities (orjson would write
  ``null``, making ``NaN`` and ``None`` sign the same), naive datetimes, non-string keys, integers beyond
  64 bits, and any type orjson does not know. The error names the path of the offending value.

Cost: one pass over the value to check floats, then one orjson call; memory is the size of the output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from governance.errors import CryptoError

__all__ = ["canonical_bytes", "format_timestamp", "json_normalize"]

_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def format_timestamp(value: datetime) -> str:
    """Canonical text of an aware datetime: UTC, microseconds (``2026-11-26T12:00:00.000000+00:00``).

    Raises :class:`CryptoError` for a naive datetime, whose instant is unknown.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise CryptoError(f"naive datetime {value.isoformat()} cannot be signed; pass a timezone-aware UTC time")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_timestamp(value)
    raise TypeError(f"type {type(value).__name__} is not JSON; convert it first (pydantic: model_dump(mode='json'))")


def _check_floats(value: Any, path: str) -> None:
    # orjson silently writes non-finite floats as null; walk once to refuse them with the offending path.
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CryptoError(f"cannot sign non-finite float {value!r} at {path}; JSON has no NaN or infinity")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_floats(item, f"{path}.{key}")
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        for index, item in enumerate(value):
            _check_floats(item, f"{path}[{index}]")


def canonical_bytes(value: Any) -> bytes:
    """Serialize ``value`` (JSON types, aware datetimes, tuples as lists) to its canonical bytes."""
    _check_floats(value, "$")
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        # orjson wraps what `_default` raises; surface that message, it names the type and the fix.
        cause = exc.__cause__
        if isinstance(cause, CryptoError):
            raise cause from None
        raise CryptoError(f"cannot canonicalize value for signing: {cause or exc}") from exc


def json_normalize(value: Any) -> Any:
    """``value`` as a JSON decoder would return it (datetimes as canonical strings, tuples as lists)."""
    return orjson.loads(canonical_bytes(value))
