"""Streams: the Faust worker that pairs scores and keeps windows (depends on governance)."""
