"""The Faust agent without a broker (Faust's test_context): raw bytes in, windows and dead letters out."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from governance.contract.settings import Settings
from shadowgate.traffic import TrafficSpec, generate
from streams.state.memory_store import MemoryWindowStore
from streams.worker.app import create_app
from streams.worker.processor import BatchOutcome, DeadLetter
from streams.worker.reading import read_windows


@pytest.mark.integration  # the evaluator's state store is Redis even in this test
async def test_agent_folds_raw_score_messages_and_dead_letters_invalid_ones(redis_url: str, unique: str) -> None:
    store = MemoryWindowStore()
    settings = Settings(redis_url=redis_url, redis_prefix=f"t{unique}", consumer_group=f"g-{unique}")  # type: ignore[arg-type]
    handle = create_app(settings, store=store, app_id=f"test-{unique}", loop=asyncio.get_running_loop())
    dead: list[DeadLetter] = []
    outcomes: list[BatchOutcome] = []

    async def collect(letters: list[DeadLetter]) -> None:
        dead.extend(letters)

    handle.send_dead_letters = collect
    handle.outcomes.append(outcomes.append)
    spec = TrafficSpec(pairs=200, start=datetime.now(UTC) - timedelta(minutes=5), rate_per_s=10, label_share=0.0)
    messages = [orjson.dumps({k: v for k, v in e.items() if k != "kind"}) for e in generate(spec)]
    messages.insert(7, b'{"model":"fraud-risk","score":"high"}')
    messages.insert(20, b"\xff not json")
    agent = handle.app.agents["ingest"]
    async with agent.test_context() as ctx:
        for raw in messages:
            await ctx.put(value=raw, key=b"k", partition=0)
        for _ in range(200):
            if sum(o.records for o in outcomes) >= len(messages):
                break
            await asyncio.sleep(0.05)
    handle.close()
    assert sum(o.records for o in outcomes) == len(messages)
    assert sum(o.pairs for o in outcomes) == 200
    assert sorted(d.record.value for d in dead) == sorted([messages[7], messages[20]])
    assert all(d.record.offset in (7, 20) for d in dead)
    window = read_windows(store, windows=["24h"])["comparisons"][0]["windows"]["24h"]
    assert window["sample_count"] == 200
    assert window["integrity_violations"] == 1  # the undecodable message names no model
