"""The forwarder's configuration file: where alerts go, validated strictly (fails closed).

Example (every key shown; the ones with values here are the defaults)::

    group: shadowgate-alerts            # Kafka consumer group prefix: receiver R commits as "<group>.R"
    dead_letter_topic: shadow.alerts.dlq
    sources: [alerts, gates, rollbacks, audit]
    hold_s: 3600                        # how long a one-off notice stays firing in Alertmanager
    runbook_url: null                   # e.g. https://git.example.com/shadowgate/blob/main/docs/runbooks/{runbook}.md
    max_pending: 10000                  # messages a receiver may lag behind before reading pauses
    retry:
      timeout_s: 10                     # per HTTP request
      initial_backoff_s: 0.5            # doubles per failed attempt ...
      max_backoff_s: 30                 # ... up to this
      max_garbage: 5                    # consecutive non-HTTP answers before a notice is dead-lettered
    receivers:
      - name: alertmanager
        type: alertmanager
        url: http://alertmanager:9093   # POST <url>/api/v2/alerts
        resend_s: 60                    # re-post open conditions this often (endsAt = now + 4 x resend_s)
      - name: ops-hook
        type: webhook
        url: https://hooks.example.com/shadowgate
        secret_file: /run/secrets/shadowgate-webhook   # or secret_env: SHADOWGATE_WEBHOOK_SECRET
      - name: slack
        type: slack
        url_file: /run/secrets/slack-webhook-url       # or url_env: ..., or url: ...
        match: {severities: [critical, warning]}
      - name: pagerduty
        type: pagerduty
        routing_key_env: PAGERDUTY_ROUTING_KEY          # or routing_key_file: ...
        url: https://events.pagerduty.com/v2/enqueue    # the default
        match: {severities: [critical], kinds: [rollback_failed, rollback_triggered], models: [fraud]}

Rules: an unknown key, a wrong type, a duplicate key or receiver name, a secret given twice or not at all, an
unreadable secret file, an unset or empty secret variable are all refused with one line naming the key
(``alerts.yaml: receivers[1].secret_fil: unknown key; known: match, name, secret_env, secret_file, type,
url``). Relative ``*_file`` paths are read relative to the configuration file. Secrets never appear in
``repr`` or in errors.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from governance.contract.findings import AlertSeverity
from governance.contract.yamlfile import load_strict_yaml
from governance.errors import ConfigError
from governance.service.alerting.intake import Source
from governance.service.alerting.notices import Kind, Notice

__all__ = [
    "DEAD_LETTER",
    "AlertmanagerReceiver",
    "ForwarderConfig",
    "Match",
    "PagerDutyReceiver",
    "Receiver",
    "RetryConfig",
    "SlackReceiver",
    "WebhookReceiver",
    "load_config",
    "parse_config",
]

#: The name of the lane that writes rejected inputs to the dead-letter topic (no receiver may take it).
DEAD_LETTER = "dead-letter"
_Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
_Url = Annotated[str, Field(pattern=r"^https?://[^\s/]+.*$", max_length=2048)]
_Env = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Match(_Strict):
    """Which notices a receiver gets; an empty list (the default) means every value."""

    severities: list[AlertSeverity] = []
    kinds: list[Kind] = []
    models: list[Annotated[str, Field(min_length=1, max_length=512)]] = []

    def wants(self, notice: Notice) -> bool:
        return ((not self.severities or notice.severity in self.severities)
                and (not self.kinds or notice.kind in self.kinds)
                and (not self.models or notice.model in self.models))


class RetryConfig(_Strict):
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    initial_backoff_s: Annotated[float, Field(gt=0)] = 0.5
    max_backoff_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_garbage: Annotated[int, Field(ge=1)] = 5

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(f"initial_backoff_s {self.initial_backoff_s} is above max_backoff_s {self.max_backoff_s}")
        return self


class _Receiver(_Strict):
    name: _Name
    match: Match = Field(default_factory=Match)


def _one_of(model: BaseModel, *names: str) -> None:
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) != 1:
        which = "both " + " and ".join(given) if given else "none"
        raise ValueError(f"give exactly one of {', '.join(names)} (got {which})")


class AlertmanagerReceiver(_Receiver):
    type: Literal["alertmanager"]
    url: _Url
    resend_s: Annotated[float, Field(ge=1)] = 60.0


class WebhookReceiver(_Receiver):
    type: Literal["webhook"]
    url: _Url
    secret_file: str | None = None
    secret_env: _Env | None = None

    @model_validator(mode="after")
    def _secret(self) -> Self:
        _one_of(self, "secret_file", "secret_env")
        return self


class SlackReceiver(_Receiver):
    type: Literal["slack"]
    url: _Url | None = None
    url_file: str | None = None
    url_env: _Env | None = None

    @model_validator(mode="after")
    def _url(self) -> Self:
        _one_of(self, "url", "url_file", "url_env")
        return self


class PagerDutyReceiver(_Receiver):
    type: Literal["pagerduty"]
    url: _Url = "https://events.pagerduty.com/v2/enqueue"
    routing_key_file: str | None = None
    routing_key_env: _Env | None = None

    @model_validator(mode="after")
    def _key(self) -> Self:
        _one_of(self, "routing_key_file", "routing_key_env")
        return self


Receiver = Annotated[
    AlertmanagerReceiver | WebhookReceiver | SlackReceiver | PagerDutyReceiver, Field(discriminator="type")
]


class _File(_Strict):
    group: _Name = "shadowgate-alerts"
    dead_letter_topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")] = "shadow.alerts.dlq"
    sources: list[Source] = ["alerts", "gates", "rollbacks", "audit"]
    hold_s: Annotated[float, Field(gt=0)] = 3600.0
    runbook_url: Annotated[str, Field(min_length=1, max_length=2048)] | None = None
    max_pending: Annotated[int, Field(ge=1)] = 10_000
    retry: RetryConfig = Field(default_factory=RetryConfig)
    receivers: Annotated[list[Receiver], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources {self.sources} must be a non-empty list without repeats")
        names = [r.name for r in self.receivers]
        for index, name in enumerate(names):
            if name == DEAD_LETTER:
                raise ValueError(f"receivers[{index}].name: {DEAD_LETTER!r} is reserved for the dead-letter lane")
            if name in names[:index]:
                raise ValueError(f"receivers[{index}].name: {name!r} is used twice; names must be unique")
        if self.runbook_url is not None and "{runbook}" not in self.runbook_url:
            raise ValueError(f"runbook_url {self.runbook_url!r} has no {{runbook}} placeholder")
        return self


@dataclass(frozen=True)
class ForwarderConfig:
    """A validated configuration with every secret read."""

    source: str
    group: str
    dead_letter_topic: str
    sources: tuple[Source, ...]
    hold_s: float
    runbook_url: str | None
    max_pending: int
    retry: RetryConfig
    receivers: tuple[AlertmanagerReceiver | WebhookReceiver | SlackReceiver | PagerDutyReceiver, ...]
    secrets: Mapping[str, SecretStr] = field(default_factory=dict, repr=False)

    def secret(self, receiver: str) -> str:
        """The secret of ``receiver`` (webhook HMAC key, Slack URL, PagerDuty routing key)."""
        return self.secrets[receiver].get_secret_value()

    def group_of(self, lane: str) -> str:
        """The Kafka consumer group whose committed offsets are ``lane``'s position."""
        return f"{self.group}.{lane}"


_KNOWN_MODELS: dict[str, type[BaseModel]] = {
    "alertmanager": AlertmanagerReceiver, "webhook": WebhookReceiver, "slack": SlackReceiver,
    "pagerduty": PagerDutyReceiver,
}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    parent = loc[-2] if len(loc) >= 2 else None
    if parent in ("retry", "match"):
        return sorted((RetryConfig if parent == "retry" else Match).model_fields)
    if len(loc) >= 3 and loc[0] == "receivers" and parent in _KNOWN_MODELS:
        return sorted(_KNOWN_MODELS[str(parent)].model_fields)
    return sorted(_File.model_fields) if len(loc) == 1 else []


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif index == 2 and loc[0] == "receivers" and part in _KNOWN_MODELS:
            continue  # the discriminated union's tag, not a key of the file
        else:
            out += ("." if out else "") + str(part)
    return out or "<file>"


_PATTERNS = {
    "url": "must be an http:// or https:// URL",
    "name": "must be 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
    "dead_letter_topic": "must be a Kafka topic name (letters, digits, '.', '_', '-')",
}


def _message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    where = _where(loc)
    if first["type"] == "extra_forbidden":
        known = _known_keys(loc)
        return f"{where}: unknown key" + (f"; known: {', '.join(known)}" if known else "")
    if first["type"] == "string_pattern_mismatch":
        field_name = str(loc[-1])
        rule = _PATTERNS.get(field_name, "must be an environment variable name" if field_name.endswith("_env")
                             else "has a character that is not allowed")
        return f"{where}: {first['input']!r} {rule}"
    if not loc:  # a rule across keys: its message names them
        return re.sub(r"^Value error, ", "", first["msg"])
    if first["type"] == "union_tag_invalid":
        return f"{where}.type: must be one of {', '.join(_KNOWN_MODELS)}"
    if first["type"] == "union_tag_not_found":
        return f"{where}: a receiver needs a type ({', '.join(_KNOWN_MODELS)})"
    message = re.sub(r"^Value error, ", "", first["msg"])
    given = f" (got {first['input']!r})" if first["type"] not in ("missing", "value_error") else ""
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {message}{given}{more}"


def _secret(where: str, file: str | None, env: str | None, base: Path, environ: Mapping[str, str]) -> SecretStr:
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else base / file
        try:
            value = path.read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{where}_file: cannot read {path} ({exc.strerror})") from None
        if not value:
            raise ConfigError(f"{where}_file: {path} is empty")
        return SecretStr(value)
    assert env is not None  # noqa: S101 - the model validator required one of the two
    value = environ.get(env, "").strip()
    if not value:
        raise ConfigError(f"{where}_env: environment variable {env} is unset or empty; export it")
    return SecretStr(value)


def _with_secrets(file: _File, base: Path, environ: Mapping[str, str]) -> ForwarderConfig:
    secrets: dict[str, SecretStr] = {}
    for index, receiver in enumerate(file.receivers):
        where = f"receivers[{index}]"
        if isinstance(receiver, WebhookReceiver):
            secrets[receiver.name] = _secret(f"{where}.secret", receiver.secret_file, receiver.secret_env, base,
                                             environ)
        elif isinstance(receiver, SlackReceiver):
            url = (SecretStr(receiver.url) if receiver.url is not None
                   else _secret(f"{where}.url", receiver.url_file, receiver.url_env, base, environ))
            if not re.match(r"^https?://\S+$", url.get_secret_value()):
                raise ConfigError(f"{where}.url: the Slack webhook URL read is not an http(s) URL")
            secrets[receiver.name] = url
        elif isinstance(receiver, PagerDutyReceiver):
            secrets[receiver.name] = _secret(f"{where}.routing_key", receiver.routing_key_file,
                                             receiver.routing_key_env, base, environ)
    return ForwarderConfig(source="", group=file.group, dead_letter_topic=file.dead_letter_topic,
                           sources=tuple(file.sources), hold_s=file.hold_s, runbook_url=file.runbook_url,
                           max_pending=file.max_pending, retry=file.retry, receivers=tuple(file.receivers),
                           secrets=secrets)


def parse_config(data: Any, source: str, base: Path, environ: Mapping[str, str]) -> ForwarderConfig:
    """Validate the parsed YAML ``data`` (from ``source``) and read its secrets."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a mapping with a receivers list")
    try:
        file = _File.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_message(exc)}") from None
    try:
        config = _with_secrets(file, base, environ)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(config, source=source)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ForwarderConfig:
    """Read and validate the configuration file at ``path`` (secrets from files beside it or ``environ``)."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"alerts config {path}: cannot read it ({exc.strerror})") from None
    try:
        data = load_strict_yaml(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    return parse_config(data, str(path), path.parent, os.environ if environ is None else environ)
