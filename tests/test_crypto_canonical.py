"""Canonical bytes: stdlib json as the oracle for sorting and round trips; refusals with paths."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.crypto.canonical import canonical_bytes, format_timestamp, json_normalize
from governance.errors import CryptoError

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


def _keys_sorted(value: Any) -> bool:
    if isinstance(value, dict):
        return list(value) == sorted(value) and all(_keys_sorted(v) for v in value.values())
    if isinstance(value, list):
        return all(_keys_sorted(v) for v in value)
    return True


@settings(max_examples=150, deadline=None)
@given(_json)
def test_canonical_bytes_decode_to_the_value_with_sorted_keys(value: Any) -> None:
    encoded = canonical_bytes(value)
    decoded = json.loads(encoded)  # stdlib decoder, independent of orjson
    assert decoded == value
    assert _keys_sorted(json.loads(encoded, object_pairs_hook=lambda pairs: dict(pairs)))
    assert b"\n" not in encoded and b": " not in encoded.replace(b'": "', b"")  # compact
    assert canonical_bytes(decoded) == encoded  # stable across a JSON round trip


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=8), _scalars, min_size=2, max_size=8), st.randoms())
def test_key_insertion_order_does_not_matter(value: dict[str, Any], rnd: random.Random) -> None:
    items = list(value.items())
    rnd.shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(value)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused_with_their_path(bad: float) -> None:
    with pytest.raises(CryptoError, match=r"\$\.metrics\.auc\[1\]"):
        canonical_bytes({"metrics": {"auc": [0.9, bad]}})


def test_datetimes_are_normalized_to_utc_and_naive_ones_refused() -> None:
    plus_two = datetime(2026, 11, 26, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    utc = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    assert (
        canonical_bytes({"t": plus_two}) == canonical_bytes({"t": utc}) == b'{"t":"2026-11-26T12:00:00.000000+00:00"}'
    )
    assert format_timestamp(plus_two) == "2026-11-26T12:00:00.000000+00:00"
    with pytest.raises(CryptoError, match="naive datetime"):
        canonical_bytes({"t": datetime(2026, 11, 26, 12, 0)})  # noqa: DTZ001 - the point of the test


@pytest.mark.parametrize("bad", [{"b": b"raw bytes"}, {1: "int key"}, {"big": 2**64}, {"set": {1, 2}}])
def test_values_json_cannot_carry_are_refused(bad: dict[Any, Any]) -> None:
    with pytest.raises(CryptoError, match="cannot canonicalize"):
        canonical_bytes(bad)


def test_json_normalize_matches_a_decoder() -> None:
    value = {"t": datetime(2026, 1, 2, tzinfo=UTC), "xs": (1, 2.5)}
    assert json_normalize(value) == {"t": "2026-01-02T00:00:00.000000+00:00", "xs": [1, 2.5]}
