"""Synthetic scoring traffic with a known shape, for the demo, tests, benchmarks and replay files.

A :class:`TrafficSpec` describes one model served by a production version and a candidate (shadow or
canary) version: the production score is ``Beta(a, b)``; the candidate score is the production score
plus Gaussian noise of ``delta_sd`` and a ``shift``, clipped to [0, 1] (with ``delta_space="logit"``
the noise and shift are added to ``logit(score)`` instead, which keeps the candidate calibrated where
scores crowd near 0 or 1); labels are drawn as
``Bernoulli(production score)`` so the production model is calibrated by construction. Everything is
driven by one seeded ``numpy.random.Generator``: the same spec and seed give the same events.

Each request carries two features: a log-normal amount and a category drawn uniformly from
``categories``, named by ``feature_names`` (default: the shipped feature catalog's ``transaction_amount_usd``
and ``merchant_category``, so the worker's catalog check finds nothing to report). Names and categories do
not change the random draws, so the same seed gives the same numbers whatever they are called.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

__all__ = ["TrafficSpec", "generate"]


@dataclass(frozen=True)
class TrafficSpec:
    model: str = "fraud-risk"
    production_version: str = "1.4.0"
    candidate_version: str = "1.5.0"
    role: str = "shadow"
    pairs: int = 10_000
    start: datetime = datetime(2026, 11, 1, tzinfo=UTC)
    rate_per_s: float = 100.0
    beta_a: float = 2.0
    beta_b: float = 5.0
    delta_sd: float = 0.03
    shift: float = 0.0
    prod_latency_ms: float = 20.0
    cand_latency_ms: float = 25.0
    cand_error_rate: float = 0.0
    label_share: float = 1.0
    label_delay_s: float = 3600.0
    features: bool = True
    seed: int = 7
    feature_names: tuple[str, str] = ("transaction_amount_usd", "merchant_category")
    categories: tuple[str, ...] = ("DE", "FR", "US", "GB", "NL")
    delta_space: Literal["score", "logit"] = "score"


def generate(spec: TrafficSpec) -> Iterator[dict[str, Any]]:
    """Yield score events (dicts with ``kind`` = ``score`` or ``label``) in event-time order per request.

    Each request yields its production event, then its candidate event, then (later in event time,
    ``label_delay_s`` after) its label when drawn. Labels are yielded after all score events whose time
    precedes them, so the stream is ordered by event time.
    """
    if spec.delta_space not in ("score", "logit"):
        raise ValueError(f"delta_space {spec.delta_space!r}: use 'score' or 'logit'")
    rng = np.random.default_rng(spec.seed)
    n = spec.pairs
    prod = rng.beta(spec.beta_a, spec.beta_b, n)
    noise = rng.normal(0.0, spec.delta_sd, n)
    if spec.delta_space == "logit":
        p = np.clip(prod, 1e-12, 1.0 - 1e-12)
        cand = 1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p) + spec.shift + noise)))
    else:
        cand = np.clip(prod + spec.shift + noise, 0.0, 1.0)
    labels = (rng.random(n) < prod).astype(int)
    has_label = rng.random(n) < spec.label_share
    prod_lat = rng.lognormal(np.log(spec.prod_latency_ms), 0.3, n)
    cand_lat = rng.lognormal(np.log(spec.cand_latency_ms), 0.3, n)
    cand_err = rng.random(n) < spec.cand_error_rate
    amount = rng.lognormal(4.0, 1.0, n)
    country = rng.choice(np.array(spec.categories), n)
    amount_name, category_name = spec.feature_names
    step = 1.0 / spec.rate_per_s
    pending: list[tuple[float, dict[str, Any]]] = []
    for i in range(n):
        offset_s = i * step
        ts = spec.start + timedelta(seconds=offset_s)
        while pending and pending[0][0] <= offset_s:
            yield pending.pop(0)[1]
        rid = f"{spec.model}-{spec.seed}-{i:08d}"
        feats: dict[str, Any] | None = (
            {amount_name: round(float(amount[i]), 2), category_name: str(country[i])} if spec.features else None
        )
        base = {"kind": "score", "request_id": rid, "model": spec.model, "ts": ts}
        yield {**base, "version": spec.production_version, "role": "production", "score": float(prod[i]),
               "latency_ms": float(prod_lat[i]), "features": feats}
        cand_event: dict[str, Any] = {**base, "version": spec.candidate_version, "role": spec.role,
                                      "score": float(cand[i]), "latency_ms": float(cand_lat[i]),
                                      "features": feats}
        if cand_err[i]:
            cand_event["error"] = "timeout"
        yield cand_event
        if has_label[i]:
            pending.append((offset_s + spec.label_delay_s, {
                "kind": "label", "request_id": rid, "model": spec.model, "label": int(labels[i]),
                "ts": ts + timedelta(seconds=spec.label_delay_s),
            }))
    for _, label in pending:
        yield label
