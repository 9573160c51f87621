"""Fold batches into integer fields, read metrics back, and hold every figure to an independent oracle."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit
from scipy.stats import entropy, ks_2samp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from governance.errors import ConfigError, SketchError
from governance.policy.bounds import kl_estimate
from streams.fold.aggregate import (
    AggregateConfig,
    fold_duplicates,
    fold_integrity,
    fold_labels,
    fold_orphans,
    fold_pairs,
    merge_fields,
)
from streams.fold.readout import METRIC_NAMES, delta_sums, metrics_from_fields, score_counts

CFG = AggregateConfig()
SPEC_NAMES = [
    "mean_abs_delta",
    "p95_abs_delta",
    "p99_abs_delta",
    "brier_score",
    "auc_roc",
    "precision_at_10",
    "recall_at_10",
    "calibration_slope",
    "calibration_intercept",
    "p99_latency_ms",
    "error_rate",
    "kl_divergence",
    "psi",
    "js_divergence",
    "decision_flip_rate",
    "orphan_rate",
    "sample_count",
    "label_count",
]


@dataclass
class Traffic:
    prod: np.ndarray
    cand: np.ndarray
    lat_p: np.ndarray
    lat_c: np.ndarray
    labels: np.ndarray


def _traffic(kind: str, n: int = 40_000, seed: int = 0) -> Traffic:
    rng = np.random.default_rng(seed)
    if kind == "risk":  # scores crowd near 0, correlated models
        z = rng.normal(-3.5, 1.3, n)
        prod, cand = expit(z), expit(z + rng.normal(0.1, 0.25, n))
    elif kind == "near identical":
        z = rng.normal(-1.0, 2.0, n)
        prod, cand = expit(z), expit(z + rng.normal(0.0, 0.02, n))
    elif kind == "independent":
        prod, cand = rng.uniform(size=n), rng.beta(2.0, 3.0, n)
    elif kind == "heavy tail":  # mostly tiny deltas, a Cauchy tail clipped at the ends of [0, 1]
        prod = rng.uniform(size=n)
        cand = np.clip(prod + 0.01 * rng.standard_cauchy(n), 0.0, 1.0)
    elif kind == "ties":  # scores on a 0.01 grid
        prod = np.round(rng.beta(2.0, 5.0, n), 2)
        cand = np.round(np.clip(prod + rng.normal(0.0, 0.03, n), 0.0, 1.0), 2)
    else:
        raise AssertionError(kind)
    lat_p = rng.lognormal(3.0, 0.8, n)
    lat_c = (rng.pareto(1.5, n) + 1.0) * 8.0  # heavy-tailed candidate latency
    labels = (rng.uniform(size=n) < cand).astype(int)  # the candidate is calibrated
    return Traffic(prod, cand, lat_p, lat_c, labels)


def _fold(t: Traffic, batch: int = 1000) -> dict[str, int]:
    parts = []
    for i in range(0, t.prod.size, batch):
        s = slice(i, i + batch)
        parts.append(fold_pairs(t.prod[s], t.cand[s], t.lat_p[s], t.lat_c[s]))
        parts.append(fold_labels(t.prod[s], t.cand[s], t.labels[s]))
    return merge_fields(*parts)


def _selected(scores: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Per item, the share of it in the top fraction (a tie group at the cut shares in proportion)."""
    share = np.zeros(scores.size)
    wanted, taken = fraction * scores.size, 0.0
    for value in np.unique(scores)[::-1]:
        group = scores == value
        share[group] = min(1.0, max(0.0, (wanted - taken) / group.sum()))
        taken += share[group][0] * group.sum()
        if taken >= wanted:
            break
    return share


def _exact_flip(prod: np.ndarray, cand: np.ndarray) -> float:
    sp, sc = _selected(prod), _selected(cand)
    return float(np.mean(sp + sc - 2 * sp * sc))  # ties broken at random, in expectation


def _exact_precision_recall(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    hits = float(np.sum(_selected(scores) * labels))
    return hits / (0.1 * scores.size), hits / labels.sum()


def _calibration(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    x = logit(np.clip(scores, expit(-12.0), expit(12.0)))
    # C=inf is scikit-learn's spelling of penalty=None (deprecated since 1.8).
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(x[:, None], labels)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _num(values: Mapping[str, float | None], name: str) -> float:
    value = values[name]
    assert value is not None, f"{name} is None"
    return float(value)


def _drift_probs(scores: np.ndarray) -> np.ndarray:
    # k / 20 is the double nearest the decimal edge, so a tied score like 0.15 lands in the upper bin
    # [0.15, 0.2) as documented (np.linspace edges are off by one ulp for some k).
    counts = np.histogram(scores, np.arange(21) / 20)[0] / scores.size
    p = np.maximum(counts, 1e-4)
    probs: np.ndarray = p / p.sum()
    return probs


KINDS = ["risk", "near identical", "independent", "heavy tail", "ties"]


@pytest.fixture(scope="module", params=KINDS)
def case(request: pytest.FixtureRequest) -> tuple[Traffic, dict[str, float | None]]:
    t = _traffic(request.param, seed=KINDS.index(request.param))
    return t, metrics_from_fields(_fold(t))[0]


def test_every_spec_metric_is_reported(case: tuple[Traffic, dict[str, float | None]]) -> None:
    _, m = case
    assert set(SPEC_NAMES) <= set(METRIC_NAMES) == set(m)
    assert all(m[name] is not None for name in SPEC_NAMES if name != "orphan_rate")


def test_delta_metrics(case: tuple[Traffic, dict[str, float | None]]) -> None:
    t, m = case
    d = t.cand - t.prod
    assert m["sample_count"] == t.prod.size
    assert m["mean_abs_delta"] == pytest.approx(np.mean(np.abs(d)), abs=1e-9)
    assert m["mean_signed_delta"] == pytest.approx(np.mean(d), abs=1e-9)
    for q in (50, 95, 99):
        assert abs(_num(m, f"p{q}_abs_delta") - np.quantile(np.abs(d), q / 100)) <= 0.001


def test_distribution_metrics(case: tuple[Traffic, dict[str, float | None]]) -> None:
    t, m = case
    p, q = _drift_probs(t.cand), _drift_probs(t.prod)
    assert m["kl_divergence"] == pytest.approx(entropy(p, q), rel=1e-9, abs=1e-12)
    assert m["psi"] == pytest.approx(np.sum((p - q) * np.log(p / q)), rel=1e-9, abs=1e-12)
    mid = 0.5 * (p + q)
    assert m["js_divergence"] == pytest.approx(0.5 * entropy(p, mid) + 0.5 * entropy(q, mid), rel=1e-9, abs=1e-12)
    assert abs(_num(m, "decision_flip_rate") - _exact_flip(t.prod, t.cand)) < 0.002


def test_latency_metrics(case: tuple[Traffic, dict[str, float | None]]) -> None:
    t, m = case
    for q in (50, 95, 99):
        for prefix, values in (("", t.lat_c), ("production_", t.lat_p)):
            exact = np.quantile(values, q / 100)
            assert abs(_num(m, f"{prefix}p{q}_latency_ms") - exact) <= 0.01 * exact
    assert m["error_rate"] == 0.0 and m["production_error_rate"] == 0.0


def test_label_metrics(case: tuple[Traffic, dict[str, float | None]]) -> None:
    t, m = case
    assert m["label_count"] == t.labels.size and m["label_coverage"] == 1.0
    for prefix, scores in (("", t.cand), ("production_", t.prod)):
        assert m[f"{prefix}brier_score"] == pytest.approx(np.mean((scores - t.labels) ** 2), abs=1e-9)
        assert abs(_num(m, f"{prefix}auc_roc") - roc_auc_score(t.labels, scores)) < 0.002
        precision, recall = _exact_precision_recall(scores, t.labels)
        assert abs(_num(m, f"{prefix}precision_at_10") - precision) < 0.01
        assert abs(_num(m, f"{prefix}recall_at_10") - recall) < 0.01
        slope, intercept = _calibration(scores, t.labels)
        assert abs(_num(m, f"{prefix}calibration_slope") - slope) < 0.02
        assert abs(_num(m, f"{prefix}calibration_intercept") - intercept) < 0.02


def test_precision_at_10_against_the_plain_top_k() -> None:
    t = _traffic("risk", seed=21)
    m = metrics_from_fields(_fold(t))[0]
    top = np.argsort(-t.cand)[: int(np.ceil(0.1 * t.cand.size))]
    assert abs(_num(m, "precision_at_10") - t.labels[top].mean()) < 0.01
    assert abs(_num(m, "recall_at_10") - t.labels[top].sum() / t.labels.sum()) < 0.01


def test_ks_inputs_and_delta_sums() -> None:
    t = _traffic("risk", seed=22)
    fields = _fold(t)
    prod, cand = score_counts(fields)
    assert prod.sum() == cand.sum() == t.prod.size
    ks = np.max(np.abs(np.cumsum(prod) - np.cumsum(cand))) / t.prod.size
    assert abs(ks - ks_2samp(t.prod, t.cand).statistic) < 0.005
    sums = delta_sums(fields)
    d = t.cand - t.prod
    assert sums is not None and sums.n == d.size
    assert sums.sum_delta == pytest.approx(d.sum(), abs=d.size * 1e-9)
    assert sums.sum_abs_delta == pytest.approx(np.abs(d).sum(), abs=d.size * 1e-9)
    assert sums.sum_delta_sq == sums.sum_abs_delta_sq == pytest.approx(np.sum(d * d), abs=d.size * 1e-9)
    assert delta_sums({}) is None


def test_all_equal_scores() -> None:
    n = 5000
    s = np.full(n, 0.3)
    fields = merge_fields(fold_pairs(s, s, np.ones(n), np.ones(n)), fold_labels(s, s, np.arange(n) % 2))
    m, _ = metrics_from_fields(fields)
    assert m["mean_abs_delta"] == 0.0 and m["p99_abs_delta"] is not None and m["p99_abs_delta"] <= 0.001
    assert m["kl_divergence"] == pytest.approx(0.0, abs=1e-15)
    assert m["auc_roc"] == pytest.approx(0.5)  # every pair a tie, as in scikit-learn
    assert m["auc_roc"] == roc_auc_score(np.arange(n) % 2, s)
    assert m["calibration_slope"] is None and m["calibration_intercept"] is None  # no spread in x
    assert m["decision_flip_rate"] == pytest.approx(_exact_flip(s, s))
    assert m["p99_latency_ms"] == pytest.approx(1.0, rel=0.005)


def test_one_class_labels_and_no_labels() -> None:
    t = _traffic("risk", n=3000, seed=23)
    pairs = fold_pairs(t.prod, t.cand, t.lat_p, t.lat_c)
    m, _ = metrics_from_fields(pairs)
    for name in ("brier_score", "auc_roc", "precision_at_10", "recall_at_10", "calibration_slope"):
        assert m[name] is None and m[f"production_{name}"] is None
    assert m["label_count"] == 0 and m["label_coverage"] == 0.0
    negatives = fold_labels(t.prod, t.cand, np.zeros(3000, dtype=int))
    m, _ = metrics_from_fields(merge_fields(pairs, negatives))
    assert m["auc_roc"] is None and m["calibration_slope"] is None and m["recall_at_10"] is None
    assert m["precision_at_10"] == 0.0
    assert m["brier_score"] == pytest.approx(np.mean(t.cand**2), abs=1e-9)


def test_empty_window_is_none_not_zero() -> None:
    m, drift = metrics_from_fields({})
    assert drift == {}
    counts = {"sample_count", "label_count", "orphan_count", "duplicate_count", "integrity_violations",
              "feature_violations",
              *(f"{side}{name}" for side in ("", "production_")
                for name in ("request_count", "error_count", "latency_count"))}
    assert all(m[k] == 0 for k in counts)
    assert all(v is None for k, v in m.items() if k not in counts)
    assert fold_pairs([], [], [], []) == {} and fold_labels([], [], []) == {}


def test_errors_orphans_duplicates_and_integrity() -> None:
    prod, cand = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.1, 0.9, np.nan, 0.5])
    fields = merge_fields(
        fold_pairs(prod, cand, [5.0, 6.0, 7.0, np.nan], [5.0, 6.0, 1e4, 8.0], cand_error=[0, 0, 1, 0]),
        fold_orphans(production=3, candidate=1, production_errors=1),
        fold_duplicates(2),
        fold_integrity(7),
    )
    m, _ = metrics_from_fields(fields)
    assert m["sample_count"] == 4
    assert m["mean_abs_delta"] == pytest.approx((0.0 + 0.7 + 0.1) / 3)  # the errored pair has no delta
    assert m["error_rate"] == pytest.approx(1 / 5) and m["production_error_rate"] == pytest.approx(1 / 7)
    assert m["orphan_rate"] == pytest.approx(4 / 8) and m["orphan_count"] == 4
    assert m["duplicate_count"] == 2 and m["integrity_violations"] == 7
    assert m["p99_latency_ms"] == pytest.approx(np.quantile([5.0, 6.0, 1e4, 8.0], 0.99), rel=0.005)
    # a NaN latency was not reported: it is not folded
    assert sum(v for k, v in fields.items() if k.startswith("lp:")) == 3


def test_bad_input_is_refused_with_the_position() -> None:
    ok = np.array([0.5, 0.5])
    with pytest.raises(SketchError, match=r"cand_score \(pairs without error\)\[1\]=1\.5"):
        fold_pairs(ok, np.array([0.2, 1.5]), ok, ok)
    with pytest.raises(SketchError, match="expected 2"):
        fold_pairs(ok, ok, ok, np.ones(3))
    with pytest.raises(SketchError, match="not a finite non-negative"):
        fold_pairs(ok, ok, ok, np.array([1.0, -2.0]))
    with pytest.raises(SketchError, match=r"labels\[1\]=2 is not 0 or 1"):
        fold_labels(ok, ok, np.array([0, 2]))
    with pytest.raises(SketchError, match="negative"):
        fold_orphans(-1, 0)


def test_feature_drift_is_psi_of_candidate_against_production() -> None:
    rng = np.random.default_rng(30)
    n = 8000
    amount_p, amount_c = rng.lognormal(4.0, 1.0, n), rng.lognormal(4.2, 1.0, n)
    age_p, age_c = rng.uniform(18, 90, n), rng.uniform(18, 90, n)
    countries = np.array(["de", "fr", "us", "it", None], dtype=object)
    country_p = rng.choice(countries, n, p=[0.3, 0.3, 0.2, 0.1, 0.1])
    country_c = rng.choice(countries, n, p=[0.2, 0.3, 0.3, 0.1, 0.1])
    edges = (30.0, 45.0, 60.0)
    cfg = AggregateConfig(feature_edges=(("age", edges),))
    s = np.full(n, 0.5)
    fields = fold_pairs(
        s, s, s, s,
        features_prod={"amount": amount_p, "age": age_p, "country": country_p},
        features_cand={"amount": amount_c, "age": age_c, "country": country_c},
        config=cfg,
    )  # fmt: skip
    _, drift = metrics_from_fields(fields, cfg)

    def psi(cand_labels: list[str], prod_labels: list[str]) -> float:
        keys = sorted(set(cand_labels) | set(prod_labels))
        p = np.array([cand_labels.count(k) for k in keys]) / len(cand_labels)
        q = np.array([prod_labels.count(k) for k in keys]) / len(prod_labels)
        p, q = np.maximum(p, 1e-4), np.maximum(q, 1e-4)
        p, q = p / p.sum(), q / q.sum()
        return float(np.sum((p - q) * np.log(p / q)))

    def log_bins(x: np.ndarray) -> list[str]:
        return [str(int(np.floor(np.log1p(v) / 0.5))) for v in x]

    def hashed(x: np.ndarray) -> list[str]:
        return ["na" if v is None else f"s{zlib.crc32(v.encode()) % 32}" for v in x]

    assert drift["amount"] == pytest.approx(psi(log_bins(amount_c), log_bins(amount_p)), rel=1e-9)
    age = psi([str(b) for b in np.digitize(age_c, edges)], [str(b) for b in np.digitize(age_p, edges)])
    assert drift["age"] == pytest.approx(age, rel=1e-9)
    assert drift["country"] == pytest.approx(psi(hashed(country_c), hashed(country_p)), rel=1e-9)
    assert _num(drift, "country") > 0.05 > _num(drift, "age")
    only_prod = fold_pairs([0.5], [0.5], [1.0], [1.0], features_prod={"new": [1.0]})
    assert metrics_from_fields(only_prod)[1] == {"new": None}


def test_config_is_validated_and_fingerprinted() -> None:
    with pytest.raises(ConfigError, match="whole number of fine logit bins"):
        AggregateConfig(joint_bins=99)
    with pytest.raises(ConfigError, match="probability_floor"):
        AggregateConfig(probability_floor=0.1)
    with pytest.raises(ConfigError, match="ascending"):
        AggregateConfig(feature_edges=(("x", (2.0, 1.0)),))
    assert AggregateConfig().fingerprint() == CFG.fingerprint() != AggregateConfig(delta_bins=2000).fingerprint()


def test_fields_from_another_binning_are_refused() -> None:
    fields = fold_pairs([0.9], [0.1], [1.0], [1.0], config=AggregateConfig(delta_bins=2000))
    with pytest.raises(SketchError, match="another binning"):
        metrics_from_fields(fields)
    with pytest.raises(SketchError, match="not an aggregate field"):
        metrics_from_fields({"n": 1, "last_ts": 5})
    with pytest.raises(SketchError, match="unknown prefix"):
        metrics_from_fields({"zz:1": 1})


def test_a_field_dict_stays_small() -> None:
    t = _traffic("risk", n=100_000, seed=31)
    fields = _fold(t, batch=5000)
    assert len(fields) < 9000  # typical traffic, see the memory note in streams.aggregate


# -- merge laws: any batching, any order, any slot split gives the same integers ------------------------

_score = st.floats(0.0, 1.0)
_event = st.tuples(
    _score,
    _score,
    st.floats(0.0, 1e5),
    st.floats(0.0, 1e5),
    st.booleans(),
    st.integers(0, 1),
    st.one_of(st.none(), st.floats(-1e6, 1e6), st.sampled_from(["a", "b", "zz"])),
)


def _fold_events(events: list[tuple[float, float, float, float, bool, int, object]]) -> dict[str, int]:
    if not events:
        return {}
    prod, cand, lat_p, lat_c, err, label, feature = map(list, zip(*events, strict=True))
    features = {"f": np.array(feature, dtype=object)}
    return merge_fields(
        fold_pairs(prod, cand, lat_p, lat_c, cand_error=err, features_prod=features, features_cand=features),
        fold_labels(prod, cand, label),
    )


@settings(max_examples=50, deadline=None)
@given(events=st.lists(_event, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=4), seed=st.integers(0, 99))
def test_folding_parts_then_merging_equals_folding_the_union(
    events: list[tuple[float, float, float, float, bool, int, object]], cuts: list[int], seed: int
) -> None:
    whole = _fold_events(events)
    shuffled = [events[i] for i in np.random.default_rng(seed).permutation(len(events))]
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    parts = [_fold_events(shuffled[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    assert merge_fields(*parts) == whole
    assert metrics_from_fields(merge_fields(*reversed(parts))) == metrics_from_fields(whole)


_fields = st.dictionaries(st.sampled_from(["n", "ns", "sd", "a:1", "a:2", "lp:-3", "fp:na:x"]), st.integers(-5, 5))


@settings(max_examples=50, deadline=None)
@given(a=_fields, b=_fields, c=_fields)
def test_merge_fields_is_associative_and_commutative(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert merge_fields(merge_fields(a, b), c) == merge_fields(a, merge_fields(b, c)) == merge_fields(c, b, a)
    assert all(v != 0 for v in merge_fields(a, b).values())


def test_a_string_is_always_a_category() -> None:
    values = np.array(["10001", 10001.0, None, True], dtype=object)
    fields = fold_pairs([0.5] * 4, [0.5] * 4, [1.0] * 4, [1.0] * 4, features_prod={"zip": values})
    bucket = zlib.crc32(b"10001") % 32
    number = int(np.floor(np.log1p(10001.0) / 0.5))
    one = int(np.floor(np.log1p(1.0) / 0.5))
    expected = {f"fp:s{bucket}:zip": 1, f"fp:{number}:zip": 1, "fp:na:zip": 1, f"fp:{one}:zip": 1}
    assert {k: v for k, v in fields.items() if k.startswith("fp:")} == expected


def test_the_rollback_triggers_exact_inputs_are_in_every_window() -> None:
    """Issue 14: request / error counts, latency count and count above the P99 threshold, KL bias and standard
    error, calibration slope standard error: what governance.policy.observations reads instead of approximating."""
    t = _traffic("risk", n=20_000, seed=4)
    rng = np.random.default_rng(9)
    errors = (rng.uniform(size=t.prod.size) < 0.03).astype(int)
    fields = merge_fields(
        fold_pairs(t.prod, t.cand, t.lat_p, t.lat_c, cand_error=errors),
        fold_labels(t.prod, t.cand, t.labels),
        fold_orphans(production=5, candidate=7, candidate_errors=2),
    )
    threshold = 40.0
    m, _ = metrics_from_fields(fields, latency_above_ms=(threshold,))
    assert (m["request_count"], m["error_count"]) == (t.prod.size + 7, int(errors.sum()) + 2)
    assert (m["production_request_count"], m["production_error_count"]) == (t.prod.size + 5, 0)
    assert m["latency_count"] == t.lat_c.size and m["production_latency_count"] == t.lat_p.size
    for prefix, latencies in (("", t.lat_c), ("production_", t.lat_p)):
        above = m[f"{prefix}latency_above_ms[40]"]
        exact = int((latencies > threshold).sum())
        # A lower bound, short by at most the values in the one 0.5 % bin that straddles the threshold.
        straddling = int(((latencies > threshold / 1.01) & (latencies <= threshold * 1.01)).sum())
        assert above is not None and exact - straddling <= above <= exact
    scored = errors == 0  # score metrics leave out the pairs where a side reported an error
    expected = kl_estimate(np.histogram(t.cand[scored], bins=20, range=(0.0, 1.0))[0],
                           np.histogram(t.prod[scored], bins=20, range=(0.0, 1.0))[0])
    assert expected is not None
    assert m["kl_divergence"] == pytest.approx(expected.value, rel=1e-9)
    assert m["kl_divergence_bias"] == pytest.approx(expected.bias, rel=1e-9)
    assert m["kl_divergence_se"] == pytest.approx(expected.se, rel=1e-9)
    # The slope's standard error against the inverse Fisher information of the unbinned fit.
    x = logit(np.clip(t.cand, expit(-12.0), expit(12.0)))
    slope, intercept = _calibration(t.cand, t.labels)
    p = expit(intercept + slope * x)
    design = np.column_stack([np.ones_like(x), x])
    se = float(np.sqrt(np.linalg.inv(design.T @ (design * (p * (1 - p))[:, None]))[1, 1]))
    assert _num(m, "calibration_slope_se") == pytest.approx(se, rel=0.03)
    lite, _ = metrics_from_fields(fields, full=False, kl_bounds=False)
    assert lite["calibration_slope_se"] is None and lite["kl_divergence_se"] is None
    assert lite["error_count"] == m["error_count"]
