"""The feature catalog in the worker (issue 14.9): its bins drive feature drift, and features that arrive in score
events are checked against it; an unknown or wrongly typed feature is an integrity finding of its model (spec 5.2),
counted in the windows and in the shadow gate's integrity count, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pytest

from governance.contract.kafkaio import Record
from governance.policy.catalog import load_catalog
from governance.policy.document import load_policy
from governance.policy.evaluator import EvaluationContext
from shadowgate.traffic import TrafficSpec, generate
from streams.fold.aggregate import catalog_config, fold_pairs
from streams.fold.features import feature_violations
from streams.fold.metrics import psi
from streams.fold.readout import metrics_from_fields
from streams.state.memory_store import MemoryWindowStore
from streams.worker.evaluator_states import MemoryEvaluatorStates
from streams.worker.processor import Processor
from streams.worker.reading import comparison_keys, read_windows
from streams.worker.rounds import Evaluator

START = datetime(2026, 11, 26, 4, 0, tzinfo=UTC)
CATALOG = load_catalog()
CONFIG = catalog_config(CATALOG)


@pytest.mark.parametrize(
    ("dtype", "values", "bad"),
    [
        (None, [1.0, "x", None], 3),  # not in the catalog: every value
        ("float64", [1.5, 2, "12.5", None, float("nan")], 1),
        ("int64", [1, 2.0, 2.5, "3", None], 2),
        ("bool", [True, False, 1, 0.5, "yes"], 2),
        ("category", ["DE", 3.0, None, "FR"], 1),
        ("string", [1, 2], 2),
        ("timestamp", ["2026-01-01T00:00:00Z", 1.7e9], 0),
    ],
)
def test_a_value_breaks_the_catalog_when_its_feature_is_unknown_or_of_another_type(
    dtype: str | None, values: list[Any], bad: int
) -> None:
    assert feature_violations(values, dtype) == bad


def _records(features: dict[str, Any] | None = None, pairs: int = 600) -> list[Record]:
    out = []
    for i, event in enumerate(generate(TrafficSpec(pairs=pairs, start=START, rate_per_s=10.0, label_share=0.0,
                                                   seed=5))):  # fmt: skip
        doc = {k: v for k, v in event.items() if k != "kind"}
        if features is not None and doc["role"] != "production":
            doc["features"] = {**doc["features"], **features}
        out.append(Record("s", 0, i, b"k", orjson.dumps(doc)))
    return out


def _store(records: list[Record]) -> MemoryWindowStore:
    store = MemoryWindowStore()
    Processor(store, scores_topic="s", labels_topic="l", fence_name="f", config=CONFIG).process(records)
    return store


def test_unknown_and_wrongly_typed_features_are_counted_for_their_model_and_block_its_shadow_gate() -> None:
    # The candidate's events carry a feature the catalog does not list and a number where it says category.
    store = _store(_records({"ssn_hash": "ab12", "merchant_category": 5411}))
    (window,) = read_windows(store, windows=["1h"])["comparisons"]
    figures = window["windows"]["1h"]
    pairs = figures["sample_count"]
    assert pairs == 600 and figures["integrity_violations"] == 0  # every message was valid
    assert figures["feature_violations"] == 2 * pairs  # two bad values per candidate event
    (key,) = comparison_keys(store)
    last = START + timedelta(seconds=59.9)
    ctx = EvaluationContext(key=key, stage="SHADOW", stage_started_at=START, model_type="classification")
    evaluator = Evaluator(store, load_policy(None), MemoryEvaluatorStates(), lambda k, first: ctx, CONFIG)
    assert evaluator.integrity_violations(key, ctx, last) == 2 * pairs
    (gate,) = evaluator.judge(key)
    check = gate[1].check("no_integrity_violations")
    assert check.outcome == "FAIL" and check.value == 2 * pairs

    clean = _store(_records())  # the catalog's own features, of their types
    (window,) = read_windows(clean, windows=["1h"])["comparisons"]
    assert window["windows"]["1h"]["feature_violations"] == 0


def test_feature_drift_uses_the_catalog_bins() -> None:
    amounts = np.random.default_rng(3).lognormal(4.0, 1.0, 4000)
    shifted = amounts * 1.4
    edges = CATALOG.features["transaction_amount_usd"].bins
    assert edges is not None
    scores = np.full(4000, 0.5)
    fields = fold_pairs(scores, scores, scores, scores, features_prod={"transaction_amount_usd": amounts},
                        features_cand={"transaction_amount_usd": shifted}, config=CONFIG)
    labels = {key.split(":")[1] for key in fields if key.startswith("fc:")}
    assert labels <= {str(i) for i in range(len(edges) + 1)}  # the catalog's bins, not the default sign-log bins
    # Oracle: numpy histograms on the catalog's edges, the outer bins open-ended.
    outer = np.concatenate([[-np.inf], edges, [np.inf]])
    prod, _ = np.histogram(amounts, bins=outer)
    cand, _ = np.histogram(shifted, bins=outer)
    keep = (prod + cand) > 0
    _, drift = metrics_from_fields(fields, CONFIG)
    assert drift["transaction_amount_usd"] == pytest.approx(psi(cand[keep], prod[keep]), rel=1e-9)
