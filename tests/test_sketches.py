"""LinearHistogram and LogHistogram against numpy's exact quantiles, plus merge and serialization laws."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.errors import SketchError
from streams.fold.sketches import DEFAULT_RELATIVE_ACCURACY, LinearHistogram, LogHistogram

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)
_SLACK = 1e-12  # float rounding in the bin arithmetic, far below the guarantees tested


def _unit_samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = 20_000
    return {
        "uniform": rng.uniform(size=n),
        "concentrated near 0": rng.beta(0.5, 40.0, size=n),
        # |Cauchy| deltas clipped into [0, 1]: a heavy tail plus a pile of ties at 1.0
        "heavy tail": np.minimum(np.abs(rng.standard_cauchy(size=n)) * 0.01, 1.0),
        "ties": rng.choice([0.0, 0.05, 0.2, 0.2001, 1.0], size=n),
        "all equal": np.full(n, 0.37),
        "all zero": np.zeros(n),
        "single": np.array([0.42]),
    }


@pytest.mark.parametrize("name", list(_unit_samples()))
def test_linear_quantiles_within_one_bin_of_numpy(name: str) -> None:
    values = _unit_samples()[name]
    sketch = LinearHistogram(0.0, 1.0, 1000)
    sketch.update(values)
    assert sketch.count == values.size
    for q in QS:
        exact = float(np.quantile(values, q))
        assert abs(sketch.quantile(q) - exact) <= 0.001 + _SLACK, (name, q)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200),
    q=st.floats(0.0, 1.0),
)
def test_linear_quantile_property(values: list[float], q: float) -> None:
    sketch = LinearHistogram(0.0, 1.0, 1000)
    sketch.update(np.array(values))
    assert abs(sketch.quantile(q) - float(np.quantile(values, q))) <= 0.001 + _SLACK


def _latency_samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    n = 20_000
    return {
        "lognormal": rng.lognormal(3.0, 1.0, size=n),
        "pareto heavy tail": (rng.pareto(1.1, size=n) + 1.0) * 5.0,
        "with zeros": np.concatenate([np.zeros(500), rng.exponential(20.0, size=n)]),
        "ties": rng.choice([1.0, 10.0, 250.0, 251.0], size=n),
        "all equal": np.full(n, 123.456),
        "sub-millisecond": rng.uniform(0.001, 0.5, size=n),
    }


@pytest.mark.parametrize("name", list(_latency_samples()))
def test_log_quantiles_within_relative_accuracy(name: str) -> None:
    values = _latency_samples()[name]
    sketch = LogHistogram()
    sketch.update(values)
    for q in QS:
        exact = float(np.quantile(values, q))
        got = sketch.quantile(q)
        # The promise of the issue is 1 %; the sketch is built for 0.5 %.
        assert abs(got - exact) <= DEFAULT_RELATIVE_ACCURACY * exact + _SLACK, (name, q, got, exact)


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e7), min_size=1, max_size=200),
    q=st.floats(0.0, 1.0),
)
def test_log_quantile_property(values: list[float], q: float) -> None:
    sketch = LogHistogram()
    sketch.update(np.array(values))
    exact = float(np.quantile(values, q))
    # Values below min_value (1e-6) fall in the zero bin: absolute error below min_value there.
    assert abs(sketch.quantile(q) - exact) <= 0.005 * exact + 1e-6


def test_log_memory_matches_the_docstring() -> None:
    sketch = LogHistogram()
    sketch.update(np.geomspace(1.0, 60_000.0, 200_000))
    assert len(sketch.to_counts()) <= 1102
    sketch.update(np.geomspace(1e-6, 86_400_000.0, 400_000))
    sketch.update(np.zeros(3))
    assert len(sketch.to_counts()) <= 3211


def test_merge_equals_update_on_the_union() -> None:
    rng = np.random.default_rng(3)
    a_values, b_values = rng.uniform(size=500), rng.uniform(size=700)
    a, b, both = LinearHistogram(0, 1, 100), LinearHistogram(0, 1, 100), LinearHistogram(0, 1, 100)
    a.update(a_values)
    b.update(b_values)
    both.update(np.concatenate([a_values, b_values]))
    a.merge(b)
    assert a == both
    la, lb, lboth = LogHistogram(), LogHistogram(), LogHistogram()
    la.update(a_values * 100)
    lb.update(b_values * 100)
    lboth.update(np.concatenate([a_values, b_values]) * 100)
    la.merge(lb)
    assert la == lboth
    assert la.quantile(0.9) == lboth.quantile(0.9)


def _linear(values: list[float]) -> LinearHistogram:
    sketch = LinearHistogram(0.0, 1.0, 50)
    sketch.update(np.array(values, dtype=np.float64))
    return sketch


def _log(values: list[float]) -> LogHistogram:
    sketch = LogHistogram()
    sketch.update(np.array(values, dtype=np.float64))
    return sketch


_unit_lists = st.lists(st.floats(0.0, 1.0), max_size=40)
_size_lists = st.lists(st.floats(0.0, 1e5), max_size=40)


@settings(max_examples=50, deadline=None)
@given(a=_unit_lists, b=_unit_lists, c=_unit_lists)
def test_linear_merge_is_associative_and_commutative(a: list[float], b: list[float], c: list[float]) -> None:
    left = _linear(a)
    left.merge(_linear(b))
    left.merge(_linear(c))
    bc = _linear(b)
    bc.merge(_linear(c))
    right = _linear(a)
    right.merge(bc)
    assert left == right
    ab, ba = _linear(a), _linear(b)
    ab.merge(_linear(b))
    ba.merge(_linear(a))
    assert ab == ba == _linear(a + b)


@settings(max_examples=50, deadline=None)
@given(a=_size_lists, b=_size_lists, c=_size_lists)
def test_log_merge_is_associative_and_commutative(a: list[float], b: list[float], c: list[float]) -> None:
    left = _log(a)
    left.merge(_log(b))
    left.merge(_log(c))
    bc = _log(b)
    bc.merge(_log(c))
    right = _log(a)
    right.merge(bc)
    assert left == right
    ab, ba = _log(a), _log(b)
    ab.merge(_log(b))
    ba.merge(_log(a))
    assert ab == ba == _log(a + b)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(0.0, 1e6), max_size=60))
def test_counts_round_trip(values: list[float]) -> None:
    lin = LinearHistogram(0.0, 1e6, 64)
    lin.update(np.array(values))
    assert LinearHistogram.from_counts(0.0, 1e6, 64, lin.to_counts()) == lin
    log = _log(values)
    again = LogHistogram.from_counts(log.to_counts(), log.relative_accuracy, log.min_value)
    assert again == log
    assert all(c > 0 for c in log.to_counts().values())
    assert sum(lin.to_counts().values()) == len(values) == again.count


def test_merge_refuses_other_parameters() -> None:
    with pytest.raises(SketchError, match="bins differ"):
        LinearHistogram(0, 1, 100).merge(LinearHistogram(0, 1, 200))
    with pytest.raises(SketchError, match="bins differ"):
        LinearHistogram(0, 1, 100).merge(LinearHistogram(0, 2, 100))
    with pytest.raises(SketchError, match="parameters differ"):
        LogHistogram(0.005).merge(LogHistogram(0.01))


def test_quantile_refuses_bad_q_and_empty_sketches() -> None:
    lin, log = LinearHistogram(0, 1, 10), LogHistogram()
    for sketch in (lin, log):
        with pytest.raises(SketchError, match="empty"):
            sketch.quantile(0.5)
        sketch.update(np.array([0.5]))
        for q in (-0.01, 1.01, math.nan):
            with pytest.raises(SketchError, match="outside"):
                sketch.quantile(q)


def test_update_refuses_bad_values_and_changes_nothing() -> None:
    lin = LinearHistogram(0, 1, 10)
    lin.update(np.array([0.5]))
    with pytest.raises(SketchError, match="NaN"):
        lin.update(np.array([0.1, math.nan]))
    with pytest.raises(SketchError, match=r"1\.5 at position 1 is outside"):
        lin.update(np.array([0.1, 1.5]))
    assert lin.count == 1
    log = LogHistogram()
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(SketchError):
            log.update(np.array([1.0, bad]))
    assert log.count == 0


def test_constructor_and_from_counts_validation() -> None:
    with pytest.raises(SketchError):
        LinearHistogram(1.0, 1.0, 10)
    with pytest.raises(SketchError):
        LinearHistogram(0.0, 1.0, 0)
    with pytest.raises(SketchError):
        LogHistogram(1.5)
    with pytest.raises(SketchError, match="outside 0..9"):
        LinearHistogram.from_counts(0, 1, 10, {10: 1})
    with pytest.raises(SketchError, match="negative"):
        LinearHistogram.from_counts(0, 1, 10, {3: -1})
    with pytest.raises(SketchError, match="below the zero bin"):
        LogHistogram.from_counts({-(10**6): 1})


def test_edges_and_zero_bin() -> None:
    lin = LinearHistogram(0.0, 1.0, 1000)
    assert lin.index(np.array([0.0, 0.0005, 0.9995, 1.0])).tolist() == [0, 0, 999, 999]
    log = LogHistogram()
    assert log.index(np.array([0.0, 1e-7])).tolist() == [log.zero_index] * 2
    assert log.index(np.array([log.min_value]))[0] == log.zero_index + 1
    log.update(np.zeros(10))
    assert log.quantile(0.5) == 0.0


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=200),
    qs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
)
def test_quantiles_of_many_qs_are_each_quantile_within_its_bound_of_numpy(values: list[float], qs: list[float]) -> None:
    linear = LinearHistogram(0.0, 1.0, 1000)
    linear.update(np.array(values))
    log = LogHistogram()
    log.update(np.array(values) * 1000.0)
    got_linear, got_log = linear.quantiles(qs), log.quantiles(qs)
    assert got_linear == [linear.quantile(q) for q in qs] and got_log == [log.quantile(q) for q in qs]
    for q, lin, lg in zip(qs, got_linear, got_log, strict=True):
        assert abs(lin - float(np.quantile(values, q))) <= 0.001 + _SLACK
        exact = float(np.quantile(np.array(values) * 1000.0, q))
        assert abs(lg - exact) <= 0.005 * exact + 1e-6  # as for one quantile (test_log_quantile_property)


def test_quantiles_refuse_a_bad_q_among_many_and_empty_sketches() -> None:
    sketch = LinearHistogram(0.0, 1.0, 10)
    sketch.update(np.array([0.5]))
    with pytest.raises(SketchError, match="outside"):
        sketch.quantiles([0.5, 1.5])
    with pytest.raises(SketchError, match="outside"):
        LogHistogram().quantiles([0.5, float("nan")])
    with pytest.raises(SketchError, match="empty"):
        LogHistogram().quantiles([0.5])
