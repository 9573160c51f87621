"""The one exception hierarchy of shadowgate.

Every error shadowgate raises on purpose derives from :class:`ShadowgateError`, so callers can catch
the whole family in one place, or one branch of it::

    ShadowgateError
    ├── ConfigError                 bad settings, policy or key files (names the key and the fix)
    ├── EventValidationError        an event that breaks the wire contract (names the field)
    ├── InfrastructureError         Kafka or Redis unreachable or failing (names the server)
    │   ├── DeliveryError           a message the broker refused (names topic, partition, key)
    │   └── FencedError             another writer took over a transactional log (this one must stop)
    ├── SketchError                 incompatible sketch parameters, empty sketch, bad quantile
    ├── CryptoError                 signing, verification, key and encryption failures (fail closed)
    │   └── VerificationError       a signature or digest that does not verify (names key and reason)
    ├── PolicyViolation             a gate or lifecycle rule that refuses an action (names the rules)
    └── StoreError                  a window store that cannot apply or read a batch

Messages name the key, field, topic, partition or offset involved, so the line alone says what to fix.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "CryptoError",
    "DeliveryError",
    "EventValidationError",
    "FencedError",
    "InfrastructureError",
    "PolicyViolation",
    "ShadowgateError",
    "SketchError",
    "StoreError",
    "VerificationError",
]


class ShadowgateError(Exception):
    """Root of every error shadowgate raises on purpose."""


class ConfigError(ShadowgateError, ValueError):
    """Settings, policy, catalog or key files that cannot be used as given."""


class EventValidationError(ShadowgateError, ValueError):
    """An event that breaks the wire contract; ``field`` names the first offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InfrastructureError(ShadowgateError):
    """Kafka or Redis is unreachable or answered with an error."""


class DeliveryError(InfrastructureError):
    """The broker refused or failed to deliver a message (to ``topic``, with librdkafka's error ``code``, when
    known)."""

    def __init__(self, message: str, *, topic: str | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.topic, self.code = topic, code


class FencedError(InfrastructureError):
    """The broker fenced this writer: a newer instance with the same ``transactional.id`` took over."""


class SketchError(ShadowgateError, ValueError):
    """A sketch operation that cannot give a meaningful answer."""


class CryptoError(ShadowgateError):
    """Signing, key handling or encryption failed; callers must fail closed."""


class VerificationError(CryptoError):
    """A signature, digest or chain link that does not verify."""


class PolicyViolation(ShadowgateError):
    """A gate or lifecycle rule refused an action; ``rules`` lists every rule broken."""

    def __init__(self, message: str, rules: list[str] | None = None) -> None:
        super().__init__(message)
        self.rules = list(rules or [])


class StoreError(ShadowgateError):
    """A window store could not apply or read a batch."""
