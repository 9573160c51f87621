"""Feature binning: a list of values and its columnar form (what the worker's native pairs give) agree."""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._native import Pairs
from streams.fold.features import FeatureColumn, feature_bin_counts

VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
    st.integers(-(2**40), 2**40),
    st.sampled_from(["US", "DE", "FR", "", "é", "a" * 40]),
)


def _column(values: list[float | int | str | None]) -> FeatureColumn:
    """The native columns of ``values``: one pair per value, the feature on the production side."""
    n = len(values)
    pairs = Pairs.from_columns(
        [("m", "1", "2", "shadow", [f"r{i}" for i in range(n)], [0.5] * n, [0.5] * n, [1.0] * n, [1.0] * n,
          [False] * n, [False] * n, [0.0] * n, [{"x": v} for v in values], [None] * n)]
    )  # fmt: skip
    arrays = pairs.feature_arrays(0, "prod")
    if not n:
        assert arrays == {}
        return FeatureColumn(np.zeros(0), np.zeros(0, dtype=np.int32), [])
    rows, numbers, codes, strings = arrays["x"]
    assert np.frombuffer(rows, dtype=np.uint32).tolist() == list(range(n))
    return FeatureColumn(np.frombuffer(numbers), np.frombuffer(codes, dtype=np.int32), strings)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(VALUES, max_size=60), edges=st.sampled_from([None, (-1.0, 0.0, 2.5, 100.0)]))
def test_columns_bin_like_the_values(values: list[float | int | str | None], edges: tuple[float, ...] | None) -> None:
    expected = feature_bin_counts(values, edges=edges, log_width=0.5, buckets=32) if values else Counter()
    assert feature_bin_counts(_column(values), edges=edges, log_width=0.5, buckets=32) == expected


def test_independent_counts_of_a_mixed_feature() -> None:
    values: list[float | int | str | None] = [1.5, "US", None, "US", 3, "DE", 1.6]
    counts = feature_bin_counts(values, edges=(0.0, 2.0), log_width=0.5, buckets=8)
    # Numbers bin as numbers even beside strings (numpy alone would make "1.5" text of them).
    assert counts == Counter(
        {"1": 2, "2": 1, "na": 1, f"s{zlib.crc32(b'US') % 8}": 2, f"s{zlib.crc32(b'DE') % 8}": 1}
    )
    assert feature_bin_counts(_column(values), edges=(0.0, 2.0), log_width=0.5, buckets=8) == counts


def test_a_column_keeps_the_rows_it_is_given() -> None:
    column = _column(["US", 1.0, None, "DE", "US"])
    kept = column.take(np.array([True, False, True, False, True]))
    assert feature_bin_counts(kept, edges=None, log_width=0.5, buckets=32) == feature_bin_counts(
        ["US", None, "US"], edges=None, log_width=0.5, buckets=32
    )


def test_rows_without_the_feature_add_nothing() -> None:
    pairs = Pairs.from_columns(
        [("m", "1", "2", "shadow", ["a", "b", "c"], [0.5] * 3, [0.5] * 3, [1.0] * 3, [1.0] * 3, [False] * 3,
          [False] * 3, [0.0] * 3, [{"x": 1}, None, {"x": "s", "y": 2.5}], [None] * 3)]
    )  # fmt: skip
    arrays = pairs.feature_arrays(0, "prod")
    assert list(arrays) == ["x", "y"]
    rows, numbers, codes, strings = arrays["x"]
    assert np.frombuffer(rows, dtype=np.uint32).tolist() == [0, 2]
    assert np.frombuffer(numbers).tolist()[0] == 1.0 and np.isnan(np.frombuffer(numbers)[1])
    assert np.frombuffer(codes, dtype=np.int32).tolist() == [-1, 0] and strings == ["s"]
    with pytest.raises(ValueError, match="side"):
        pairs.feature_arrays(0, "both")
