"""Whether the native core was built: the one switch between it and the Python reference joins.

``streams._native`` (Rust, ``native/``) is an optional extension: ``pip install`` builds it when cargo is
on the PATH and still succeeds without. Without it the worker decodes with the msgspec/pydantic tiers
(:mod:`streams.decode.decoder`) and joins with the reference :class:`streams.join.reference.pairing.Pairer` and
:class:`streams.join.reference.labels.LabelJoiner`: the same windows and byte-identical state entries, only slower
(:data:`SLOWDOWN`). The processor reads :data:`AVAILABLE` when it is built (:func:`streams.join.engines.select`),
so a test can switch the native core off by setting it to False.
"""

from __future__ import annotations

import logging

__all__ = ["AVAILABLE", "MISSING_WARNING", "SLOWDOWN", "core", "warn_missing"]

try:
    from streams import _native as core
except ImportError as exc:  # built without cargo: the reference joins take over
    core = None  # type: ignore[assignment]  # typed as the module: only used where AVAILABLE
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None

#: The native core was built and loads.
AVAILABLE = core is not None

#: Throughput of the processor with the native core over without (offline, memory store, labels included:
#: 2.2x on single-event messages, 3.1x to 3.8x on envelopes of 64 events; docs/streams.md).
SLOWDOWN = 3

MISSING_WARNING = (
    f"native core not built: using the Python reference joins, about {SLOWDOWN} x slower; "
    "install Rust (rustup) and reinstall"
)


def warn_missing(log: logging.Logger) -> None:
    """Log that the native core is missing: once per processor, that is at worker (or replay) start."""
    log.warning(MISSING_WARNING)
    if _IMPORT_ERROR is not None:
        log.debug("import streams._native: %s", _IMPORT_ERROR)
