"""Folding pairs into mergeable aggregates (sketches, counters) and reading metrics back out of them."""
