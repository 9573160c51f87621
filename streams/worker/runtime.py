"""Process-wide tuning of the processes that run a :class:`~streams.worker.processor.Processor`.

The worker allocates a few objects per event and keeps hours of join state alive. With the interpreter's
default of a young collection every 700 allocations, that state is scanned again and again on its way to
the oldest generation: about 30 % of the worker's time went to the collector
(``benchmarks/bench_processor.py``, GC modes). A young threshold of 50,000 cuts that to a few percent and
holds at most that many unreachable cyclic objects a little longer; reference-counted objects, which is
nearly all the worker makes, are freed at once either way.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc(young_threshold: int) -> None:
    """Collect the young generation every ``young_threshold`` allocations (0: leave the default)."""
    if young_threshold < 0:
        raise ValueError(f"young_threshold={young_threshold}: must be >= 0")
    if young_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young_threshold, older, oldest)
