"""The wire contract: what scoring services publish to Kafka.

Three message shapes, all JSON objects (UTF-8):

* :class:`ScoreEvent` — one model's score for one request. Production and shadow/canary scores of the
  same request are two events with the same ``request_id``; publish both keyed by ``request_id`` so they
  land on one partition.
* :class:`ScoreBatch` — an envelope ``{"events": [ScoreEvent, ...]}`` carrying many events in one Kafka
  message, for throughput. Every event in one envelope must belong to the same partition (the SDK
  groups them so).
* :class:`LabelEvent` — the ground truth for a request, arriving hours or days later.

Validation is strict: unknown fields, wrong types, NaN or infinite numbers, scores outside [0, 1],
negative latencies and naive datetimes are refused with an :class:`EventValidationError` that names the
field. Timestamps are normalised to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from governance.errors import EventValidationError

__all__ = [
    "FEATURE_NAME_CHARS",
    "MAX_BATCH_EVENTS",
    "MAX_FEATURES",
    "NAME_CHARS",
    "LabelEvent",
    "ScoreBatch",
    "ScoreEvent",
    "decode_label",
    "decode_scores",
    "encode",
    "validate_label",
    "validate_score",
]

MAX_BATCH_EVENTS = 10_000
MAX_FEATURES = 256

# Names end up in Redis keys and Prometheus labels: keep them to a safe alphabet.
NAME_CHARS = r"[A-Za-z0-9_.:\-]"  # a model or version name: 1-128 of these
FEATURE_NAME_CHARS = r"[A-Za-z0-9_.\-]"  # a feature name: 1-128 of these
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=rf"^{NAME_CHARS}+$")]
RequestId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
FeatureName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=rf"^{FEATURE_NAME_CHARS}+$")]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
FeatureValue = FiniteFloat | int | Annotated[str, StringConstraints(max_length=256)] | None

_CONFIG = ConfigDict(strict=True, extra="forbid", frozen=True)


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first UTC datetime
        raise ValueError("timestamp is outside the years 1-9999 once converted to UTC") from None


class ScoreEvent(BaseModel):
    """One model's score for one request."""

    model_config = _CONFIG

    request_id: RequestId
    model: Name
    version: Name
    role: Literal["production", "shadow", "canary"]
    score: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    latency_ms: Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
    ts: AwareDatetime
    error: Annotated[str, StringConstraints(max_length=1024)] | None = None
    features: dict[FeatureName, FeatureValue] | None = Field(default=None, max_length=MAX_FEATURES)

    _utc = field_validator("ts")(_to_utc)


class ScoreBatch(BaseModel):
    """Many score events in one Kafka message."""

    model_config = _CONFIG

    events: list[ScoreEvent] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class LabelEvent(BaseModel):
    """The ground-truth outcome of a request."""

    model_config = _CONFIG

    request_id: RequestId
    model: Name
    # A strict int, not Literal[0, 1]: JSON true would otherwise pass as 1.
    label: Annotated[int, Field(ge=0, le=1, strict=True)]
    ts: AwareDatetime

    _utc = field_validator("ts")(_to_utc)


def _explain(exc: ValidationError, prefix: str = "") -> EventValidationError:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "<root>"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return EventValidationError(f"{prefix}{field}: {err['msg']} (got {shown}){more}", field=field)


def validate_score(data: dict[str, Any] | ScoreEvent) -> ScoreEvent:
    """Validate a Python mapping as a ScoreEvent; raise EventValidationError naming the field."""
    if isinstance(data, ScoreEvent):
        return data
    try:
        # Python-side input: datetimes must be real aware datetime objects, not strings.
        return ScoreEvent.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc) from None


def validate_label(data: dict[str, Any] | LabelEvent) -> LabelEvent:
    """Validate a Python mapping as a LabelEvent; raise EventValidationError naming the field."""
    if isinstance(data, LabelEvent):
        return data
    try:
        return LabelEvent.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc) from None


def decode_scores(raw: bytes) -> list[ScoreEvent]:
    """Decode one Kafka message value: a ScoreEvent or a ScoreBatch envelope.

    Raises EventValidationError naming the field for anything else (bad JSON included).
    """
    # Strict JSON mode: numbers must be numbers and timestamps ISO 8601 strings with an offset. The hot
    # paths parse once: the SDK's envelopes by their prefix, single events straight into ScoreEvent.
    try:
        if raw.startswith(b'{"events":'):
            return list(ScoreBatch.model_validate_json(raw, strict=True).events)
        return [ScoreEvent.model_validate_json(raw, strict=True)]
    except ValidationError as exc:
        first_error = exc
    # Not valid as sent: find out what it is to name the right field.
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventValidationError(f"not valid JSON: {exc}", field="<json>") from None
    if not isinstance(doc, dict):
        raise EventValidationError("message must be a JSON object", field="<root>")
    if "events" in doc and not raw.startswith(b'{"events":'):
        try:
            return list(ScoreBatch.model_validate_json(raw, strict=True).events)
        except ValidationError as exc:
            raise _explain(exc) from None
    raise _explain(first_error) from None


def decode_label(raw: bytes) -> LabelEvent:
    """Decode one label message; raise EventValidationError naming the field."""
    try:
        return LabelEvent.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise _explain(exc) from None


def encode(event: BaseModel) -> bytes:
    """Serialise an event to its canonical wire bytes (UTF-8 JSON, UTC timestamps)."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
