"""The naive baseline: what a user writes from the Faust tutorial to pair shadow scores (issue 17).

    python benchmarks/naive_faust.py worker -l warn     (settings from the environment, below)

One Faust agent over the single-event JSON topic ``NAIVE_TOPIC``: it keeps the first event of each
``request_id`` in a dict until its partner comes, and writes each pair to Redis with one ``HINCRBY`` +
``HINCRBYFLOAT`` round trip (hash ``{NAIVE_PREFIX}:{model}:{production}:{candidate}``, fields ``pairs`` and
``abs_score_diff``). No fence, no windows, no labels, no features, no dead letters: a lower bound on the work
the real worker does, measured beside it in ``bench_pipeline.py``. Consumer group ``NAIVE_GROUP``, broker
``NAIVE_BOOTSTRAP``, Redis ``NAIVE_REDIS_URL``; the topic is read from its beginning.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import faust
import redis
from faust.types import StreamT

__all__ = ["create_app"]


def create_app(env: dict[str, str]) -> faust.App:
    """The tutorial's app: one topic, one agent, a dict, a Redis client."""
    group, prefix = env["NAIVE_GROUP"], env["NAIVE_PREFIX"]
    app = faust.App(
        group,
        broker=f"kafka://{env['NAIVE_BOOTSTRAP']}",
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        datadir=str(Path(tempfile.gettempdir()) / f"shadowgate-faust-{group}"),
    )
    topic = app.topic(env["NAIVE_TOPIC"], value_serializer="json")
    client = redis.Redis.from_url(env["NAIVE_REDIS_URL"])
    waiting: dict[str, dict[str, Any]] = {}

    @app.agent(topic)
    async def pair(events: StreamT[Any]) -> None:
        async for event in events:
            first = waiting.pop(event["request_id"], None)
            if first is None:
                waiting[event["request_id"]] = event
                continue
            prod, cand = (first, event) if first["role"] == "production" else (event, first)
            key = f"{prefix}:{prod['model']}:{prod['version']}:{cand['version']}"
            pipe = client.pipeline(transaction=False)
            pipe.hincrby(key, "pairs", 1)
            pipe.hincrbyfloat(key, "abs_score_diff", abs(float(prod["score"]) - float(cand["score"])))
            pipe.execute()

    return app


if __name__ == "__main__":
    create_app(dict(os.environ)).main()
    sys.exit(0)
