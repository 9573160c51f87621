"""Binning of feature values for per-feature drift: numeric bins, hashed string buckets, a missing bin.

Each value bins on its own, whatever else is in the batch, so folding is independent of batching:

* numbers (int, float, bool) go to ``searchsorted(edges, x, side="right")`` when the feature catalog gives
  ascending ``edges`` (``len(edges) + 1`` bins, the outer two open-ended), else to the default bin
  ``floor(sign(x) * log1p(|x|) / log_width)``: scale-free, about 2 bins per e-fold, and bounded (at most
  ``2 * 1420 + 1`` bins over the whole float range at the default width 0.5);
* strings are always categories, hashed with CRC-32 (stable across processes, unlike ``hash()``) into
  ``buckets`` buckets, labelled ``s{k}``;
* None, NaN and infinities are missing, labelled ``na``: a change in the missing rate is drift too.

Cost: vectorised for all-numeric and all-string arrays; mixed (object) arrays pay one ``isinstance`` per
value; one CRC per distinct string in the batch. A :class:`FeatureColumn` (the worker's form, from the
native pairs: numbers and string codes as arrays) costs no Python work per value at all.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["FeatureColumn", "feature_bin_counts", "feature_violations"]


@dataclass(frozen=True)
class FeatureColumn:
    """One feature's values as arrays (``Pairs.feature_arrays`` of the native pairs).

    ``numbers[i]`` is value ``i`` when it is a number (NaN when it is missing or a string); ``codes[i]``
    indexes ``strings`` when value ``i`` is a string, else -1. Bins exactly like the list of the values.
    """

    numbers: npt.NDArray[np.float64]
    codes: npt.NDArray[np.int32]
    strings: list[str]

    def __len__(self) -> int:
        return len(self.numbers)

    def take(self, keep: npt.NDArray[np.bool_]) -> FeatureColumn:
        """The values where ``keep`` is True."""
        return FeatureColumn(self.numbers[keep], self.codes[keep], self.strings)


def feature_bin_counts(
    values: npt.ArrayLike | Sequence[float | int | str | None] | FeatureColumn,
    *,
    edges: tuple[float, ...] | None,
    log_width: float,
    buckets: int,
) -> Counter[str]:
    """Counts per bin label (``{i}`` numeric bin, ``s{k}`` string bucket, ``na`` missing) of the values."""
    counts: Counter[str] = Counter()
    if isinstance(values, FeatureColumn):
        is_str = values.codes >= 0
        if is_str.any():
            seen = np.bincount(values.codes[is_str], minlength=len(values.strings))
            for word, c in zip(values.strings, seen.tolist(), strict=True):
                if c:
                    counts[f"s{zlib.crc32(word.encode()) % buckets}"] += c
        if not is_str.all():
            _count_numbers(counts, values.numbers[~is_str], edges, log_width)
        return counts
    array = np.asarray(values).ravel()
    if array.dtype.kind == "U" and _has_non_strings(values):
        array = np.asarray(values, dtype=object).ravel()  # numbers beside strings: numpy made them all text
    if array.dtype.kind in "biuf":
        is_str = np.zeros(array.size, dtype=bool)
    elif array.dtype.kind == "U":  # numpy made a str array: every value is a string
        is_str = np.ones(array.size, dtype=bool)
    else:
        is_str = np.fromiter((isinstance(v, str) for v in array), dtype=bool, count=array.size)
    if is_str.any():
        words, seen = np.unique(array[is_str].astype(str), return_counts=True)
        for word, c in zip(words.tolist(), seen.tolist(), strict=True):
            counts[f"s{zlib.crc32(word.encode()) % buckets}"] += c
    if not is_str.all():
        _count_numbers(counts, array[~is_str].astype(np.float64), edges, log_width)  # None becomes NaN: missing
    return counts


_NUMBERS = ("float64", "float32")
_INTEGERS = ("int64", "int32")


def feature_violations(
    values: npt.ArrayLike | Sequence[float | int | str | None] | FeatureColumn, dtype: str | None
) -> int:
    """How many of the values break the feature catalog (spec 5.2): all of them when the feature is not in the
    catalog (``dtype`` None), else those of the wrong type. Missing values (None, NaN) are never a type error.

    ``float64`` / ``float32`` want numbers; ``int64`` / ``int32`` whole numbers; ``bool`` 0 / 1 (JSON
    true / false); ``category`` / ``string`` text; ``timestamp`` text or numbers (ISO 8601 or epoch).
    """
    column = values if isinstance(values, FeatureColumn) else _column(values)
    if dtype is None:
        return len(column)
    is_str = column.codes >= 0
    numbers = column.numbers[~is_str]
    present = numbers[~np.isnan(numbers)]
    if dtype in _NUMBERS:
        return int(is_str.sum())
    if dtype in _INTEGERS:
        return int(is_str.sum()) + int((~np.isfinite(present) | (present != np.round(present))).sum())
    if dtype == "bool":
        return int(is_str.sum()) + int(((present != 0.0) & (present != 1.0)).sum())
    if dtype in ("category", "string"):
        return int(present.size)
    return 0  # timestamp: text or epoch numbers


def _column(values: npt.ArrayLike | Sequence[float | int | str | None]) -> FeatureColumn:
    """Arbitrary values as a FeatureColumn (numbers, and strings as codes), for :func:`feature_violations`."""
    items = list(np.asarray(values, dtype=object).ravel())
    strings = sorted({v for v in items if isinstance(v, str)})
    index = {word: i for i, word in enumerate(strings)}
    codes = np.array([index[v] if isinstance(v, str) else -1 for v in items], dtype=np.int32)
    numbers = np.array([np.nan if v is None or isinstance(v, str) else float(v) for v in items], dtype=np.float64)
    return FeatureColumn(numbers, codes, strings)


def _has_non_strings(values: object) -> bool:
    """Whether a list holds something besides strings (numpy turns ``[1.5, "x"]`` into text)."""
    return isinstance(values, list | tuple) and not all(isinstance(v, str) for v in values)


def _count_numbers(
    counts: Counter[str], numbers: npt.NDArray[np.float64], edges: tuple[float, ...] | None, log_width: float
) -> None:
    """Add the numeric bins of ``numbers`` (NaN and infinities: ``na``)."""
    finite = numbers[np.isfinite(numbers)]
    if edges is not None:
        bins = np.searchsorted(np.asarray(edges, dtype=np.float64), finite, side="right")
    else:
        bins = np.floor(np.sign(finite) * np.log1p(np.abs(finite)) / log_width)
    uniq, seen = np.unique(bins.astype(np.int64), return_counts=True)
    counts.update(dict(zip(map(str, uniq.tolist()), seen.tolist(), strict=True)))
    if finite.size < numbers.size:
        counts["na"] += numbers.size - finite.size
