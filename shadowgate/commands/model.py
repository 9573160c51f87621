"""``shadowgate model register | propose | approve | escalate | resolve | advance | rollback | cancel-rollback |
status | history | proofpack``.

Commands that change state are signed by ``--identity`` (its key under ``<keys-dir>/identities/<ID>``) and
sent to the governance consumer, the single writer of the audit log; the command then waits (``--timeout``)
for the audit entry that answers it and prints it: ``applied``, or ``refused`` with every broken rule
(exit 1). ``approve``, ``escalate`` and ``resolve`` go to the approvals topic, the others to the commands
topic. ``status``, ``history`` and ``proofpack`` read the state the consumer materialised in Redis
(``--from-log`` rebuilds it from the audit log instead).

``--artifact FILE`` sends the file's SHA-256 and, when ``FILE.manifest.json`` exists (``shadowgate sign FILE``),
the signed manifest, checked here against the file first (a manifest that does not match the file is refused
before anything is sent); the consumer verifies it against the system trust store (spec 6.3). Metadata is
judged by the consumer as a whole (spec 4.2): invalid metadata is refused with every violation named.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
import yaml

from governance.contract.connections import kafka_connection, redis_client, redis_connection
from governance.contract.stages import MODEL_TYPES, Stage
from governance.errors import ConfigError, VerificationError
from governance.lifecycle.commands import (
    Advance,
    Approve,
    CancelRollback,
    Command,
    DocumentIn,
    Escalate,
    Propose,
    Register,
    Resolve,
    Rollback,
)
from governance.lifecycle.documents import REQUIRED_DOCUMENTS
from governance.lifecycle.state import GovernanceState
from shadowgate.commands.governance import (
    commands_topic_option,
    describe_entry,
    keys_dir_option,
    now_utc,
    phase_option,
    schedule_of,
    settings,
)

__all__ = ["model"]

_F = TypeVar("_F", bound=Callable[..., Any])
_STAGES = click.Choice([stage.value for stage in Stage])
_DOC_STAGE = {spec.name: stage for stage, specs in REQUIRED_DOCUMENTS.items() for spec in specs}


def _sending(func: _F) -> _F:
    for option in (
        click.option("--identity", envvar="SHADOWGATE_IDENTITY", required=True,
                     help="Who signs: a key under <keys-dir>/identities/<ID> (e.g. GID-08)."),
        click.option("--timeout", type=click.FloatRange(0.5), default=30.0, show_default=True,
                     help="Seconds to wait for the consumer's answer."),
        keys_dir_option, commands_topic_option, phase_option,
    ):
        func = option(func)
    return func


def _send(command_kind: type[Any], model: str, version: str, identity: str, keys_dir: Path, commands_topic: str,
          phase: str | None, timeout: float, **fields: Any) -> None:
    from governance.lifecycle.commands import new_command, sign_command
    from governance.lifecycle.identities import identity_signer, load_trust
    from governance.service.client import submit

    config = settings()
    now = now_utc()
    command: Command = new_command(command_kind, identity=identity, now=now, model=model, version=version, **fields)
    record = sign_command(command, identity_signer(keys_dir, identity, now), now)
    topic = config.topics.approvals if isinstance(command, Approve | Escalate | Resolve) else commands_topic
    click.echo(f"sent {command.command} {model}@{version} as {identity} (command {command.command_id}); "
               "waiting for the governance consumer", err=True)

    def progress(elapsed: float) -> None:
        click.echo(f"  still waiting ({elapsed:.0f} s of {timeout:.0f} s)", err=True)

    entry = submit(kafka_connection(config), topic, config.topics.lifecycle, record,
                   load_trust(keys_dir, schedule_of(phase)), timeout, progress)
    for line in describe_entry(entry):
        click.echo(line)
    if entry.outcome == "rejected" or (entry.rollback is not None and entry.rollback.status == "FAILED"):
        click.echo(f"not applied (audit seq {entry.seq})", err=True)
        raise SystemExit(1)
    click.echo(f"{entry.outcome} (audit seq {entry.seq})")


def _load_mapping(path: Path | None, what: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} file {path}: cannot read it as JSON or YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {path} must hold an object (a mapping)")
    # YAML reads timestamps as datetimes; the wire wants JSON values.
    loaded: dict[str, Any] = orjson.loads(orjson.dumps(data, default=str))
    return loaded


def _digest(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(path: Path | None, keys_dir: Path, phase: str | None) -> dict[str, Any] | None:
    """The signed manifest beside ``path`` (None when it has none), after checking it matches the file."""
    from governance.crypto.manifest import manifest_path_for, verify_artifact
    from governance.lifecycle.identities import load_trust

    if path is None or not manifest_path_for(path).exists():
        return None
    trust, now = load_trust(keys_dir, schedule_of(phase)), now_utc()
    try:
        verify_artifact(path, trust.system, now, phase=trust.phase(now))
    except VerificationError as exc:
        raise ConfigError(f"--artifact {path}: its manifest does not verify here, nothing sent: {exc}") from None
    loaded: dict[str, Any] = orjson.loads(manifest_path_for(path).read_bytes())
    return loaded


def _documents(docs: tuple[str, ...]) -> list[DocumentIn]:
    out = []
    for item in docs:
        name, sep, file = item.partition("=")
        stage_name, colon, doc = name.partition(":")
        if not colon:
            stage_name, doc = "", stage_name
        stage = stage_name.upper() or _DOC_STAGE.get(doc)
        if not sep or not doc or stage is None:
            known = ", ".join(sorted(_DOC_STAGE))
            raise ConfigError(f"--doc {item!r}: use [STAGE:]NAME=FILE; names with a known stage: {known}")
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--doc {item!r}: cannot read {file}: {exc.strerror}") from None
        out.append(DocumentIn(stage=Stage(stage), name=doc, text=text))
    return out


_file = click.Path(dir_okay=False, exists=True, path_type=Path)


@click.group()
def model() -> None:
    """Register, document, approve, promote and roll back model versions; show their status."""


@model.command("register")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--type", "model_type", type=click.Choice(list(MODEL_TYPES)), required=True,
              help="Shadow-duration class of spec 3.1.")
@click.option("--metadata", type=_file, help="The ten metadata fields of spec 4 (JSON or YAML).")
@click.option("--features", type=_file, help="Input features {name: dtype} (JSON or YAML).")
@click.option("--artifact", type=_file, help="The model artifact: its SHA-256, and its signed manifest "
              "FILE.manifest.json when present (`shadowgate sign FILE`; needed for STAGING, spec 6.3).")
@_sending
def register(model_name: str, version: str, model_type: str, metadata: Path | None, features: Path | None,
             artifact: Path | None, **send: Any) -> None:
    """Register VERSION of MODEL in PROPOSAL (metadata, when given, must be valid: spec 4.2)."""
    _send(Register, model_name, version, model_type=model_type, metadata=_load_mapping(metadata, "metadata") or {},
          features=_load_mapping(features, "features") or {}, artifact_sha256=_digest(artifact),
          artifact_manifest=_manifest(artifact, send["keys_dir"], send["phase"]), **send)


@model.command("propose")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--doc", "docs", multiple=True, metavar="[STAGE:]NAME=FILE", help="A stage document (Markdown).")
@click.option("--metadata", type=_file, help="Replace the metadata (JSON or YAML).")
@click.option("--features", type=_file, help="Replace the input features (JSON or YAML).")
@click.option("--artifact", type=_file, help="Record the artifact's SHA-256 and its signed manifest "
              "FILE.manifest.json when present (spec 6.3).")
@_sending
def propose(model_name: str, version: str, docs: tuple[str, ...], metadata: Path | None, features: Path | None,
            artifact: Path | None, **send: Any) -> None:
    """Submit evidence for VERSION: documents, metadata, features, artifact digest."""
    _send(Propose, model_name, version, documents=_documents(docs), metadata=_load_mapping(metadata, "metadata"),
          features=_load_mapping(features, "features"), artifact_sha256=_digest(artifact),
          artifact_manifest=_manifest(artifact, send["keys_dir"], send["phase"]), **send)


@model.command("approve")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--target", type=_STAGES, required=True, help="The stage move approved (GID-02: PROTOTYPE, and "
              "SHADOW = training approved; GID-08: STAGING = the shadow review, PRODUCTION).")
@click.option("--comment", default="")
@_sending
def approve(model_name: str, version: str, target: str, comment: str, **send: Any) -> None:
    """Approve VERSION's move to TARGET as --identity."""
    _send(Approve, model_name, version, target=target, comment=comment, **send)


@model.command("escalate")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--reason", required=True)
@click.option("--id", "escalation_id", default=None, help="Escalation id (default: a new one).")
@_sending
def escalate(model_name: str, version: str, reason: str, escalation_id: str | None, **send: Any) -> None:
    """Raise an escalation on VERSION: it blocks promotion until resolved."""
    import uuid

    _send(Escalate, model_name, version, escalation_id=escalation_id or f"ESC-{uuid.uuid4().hex[:8]}",
          reason=reason, **send)


@model.command("resolve")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.argument("escalation_id")
@click.option("--resolution", required=True)
@_sending
def resolve(model_name: str, version: str, escalation_id: str, resolution: str, **send: Any) -> None:
    """Resolve ESCALATION_ID on VERSION."""
    _send(Resolve, model_name, version, escalation_id=escalation_id, resolution=resolution, **send)


@model.command("advance")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--to", "target", type=_STAGES, default=None, help="Target stage (default: the next one).")
@click.option("--reason", default="")
@_sending
def advance(model_name: str, version: str, target: str | None, reason: str, **send: Any) -> None:
    """Move VERSION to its next stage (or --to), through every gate."""
    _send(Advance, model_name, version, target=target, reason=reason, **send)


@model.command("rollback")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--reason", required=True)
@click.option("--to", "restore_version", default=None, help="Previous production version to restore.")
@_sending
def rollback(model_name: str, version: str, reason: str, restore_version: str | None, **send: Any) -> None:
    """Roll VERSION back (spec 8.2): retire it and restore the previous production version."""
    _send(Rollback, model_name, version, reason=reason, restore_version=restore_version, **send)


@model.command("cancel-rollback")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@click.option("--reason", required=True, help="Why the scheduled rollback is overridden (recorded).")
@_sending
def cancel_rollback(model_name: str, version: str, reason: str, **send: Any) -> None:
    """Override VERSION's pending scheduled rollback (spec 8.1); only GID-08 may."""
    _send(CancelRollback, model_name, version, reason=reason, **send)


def _state(from_log: bool) -> GovernanceState:

    from governance.service.statestore import StateStore

    config = settings()
    if from_log:
        from governance.crypto.keyring import default_keys_dir
        from governance.lifecycle.chain import read_items, walk
        from governance.lifecycle.identities import load_trust
        from governance.lifecycle.state import rebuild
        from governance.service.auditlog import read_log

        # The chain, as the consumer reads it: every record verified; foreign and void records left out.
        trust, now = load_trust(Path(config.keys_dir) if config.keys_dir else default_keys_dir()), now_utc()
        values = [r.value for r in read_log(kafka_connection(config), config.topics.lifecycle)]
        chain = walk(read_items(values, trust.system, now, trust.phase(now)))
        if chain.broken is not None:
            raise VerificationError(f"audit log BROKEN at {chain.broken.item.where}: {chain.broken.problem}")
        return rebuild(chain.entries())
    client = redis_client(redis_connection(config))
    try:
        state = StateStore(client, config.redis_prefix).load()
    finally:
        client.close()
    if state is None:
        raise ConfigError(f"no governance state under Redis prefix {config.redis_prefix!r}; is `shadowgate "
                          "governance` running? (or pass --from-log)")
    return state


_from_log = click.option("--from-log", is_flag=True, help="Rebuild the state from the audit log, not Redis (its chain "
                         "verified against the system trust store of SHADOWGATE_KEYS_DIR).")


@model.command("status")
@click.argument("model_name", metavar="[MODEL]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--policy", "policy_path", default=None, help="Policy YAML (default: settings, else the shipped one).")
@click.option("--live", is_flag=True, help="Also evaluate each gate now on the live windows (as `model explain`).")
@_from_log
def status(model_name: str | None, as_json: bool, policy_path: str | None, live: bool, from_log: bool) -> None:
    """Every model version: stage, time in stage, role, and what blocks its next step."""
    from governance.lifecycle.report import gate_figures
    from governance.lifecycle.report import status as status_rows
    from governance.policy.document import load_policy

    state, policy, now = _state(from_log), load_policy(policy_path or settings().policy_path), now_utc()
    rows = status_rows(state, policy, now, model_name)
    figures = {(row.model, row.version): gate_figures(state, row.model, row.version, row.stage.value) for row in rows}
    if live:
        _live_figures(figures, policy, now)
    if as_json:
        docs = [{**row.model_dump(mode="json"), **figures[(row.model, row.version)]} for row in rows]
        click.echo(orjson.dumps(docs, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo("no model registered" + (f" under {model_name}" if model_name else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="shadowgate models", show_lines=True)
    for column in ("model", "version", "stage", "in stage", "role", "next", "blocked by", "pending",
                   "gate figures taken"):
        table.add_column(column, overflow="fold")
    for row in rows:
        blocked = "\n".join(f"- {rule}" for rule in row.blocked_by) or ("ready" if row.next_stage else "-")
        table.add_row(row.model, row.version, row.stage.value, row.time_in_stage, row.role,
                      row.next_stage.value if row.next_stage else "-", blocked, _pending_text(row),
                      _taken(figures[(row.model, row.version)], now))
    Console(width=200).print(table)


def _pending_text(row: Any) -> str:
    """What the consumer will do by itself: a scheduled rollback (spec 8.1) and a promotion retry, with times."""
    lines = []
    pending = row.scheduled_rollback
    if pending is not None:
        fails = f"; will fail: {pending.error}" if pending.error else ""
        lines.append(f"ROLLBACK scheduled {pending.due_at:%Y-%m-%d %H:%M:%S}Z ({pending.trigger}: "
                     f"{pending.reason}); to {pending.to_version or 'nothing'}{fails}; cancel: shadowgate model "
                     f"cancel-rollback {row.model} {row.version} --identity GID-08 --reason ...")
    if row.retry_at is not None:
        lines.append(f"promotion retried {row.retry_at:%Y-%m-%d %H:%M:%S}Z (only time blocks it)")
    return "\n".join(lines) or "-"


def _live_figures(figures: dict[tuple[str, str], dict[str, Any]], policy: Any, now: Any) -> None:
    from shadowgate.commands.explain import explanations

    for (model_name, version), doc in figures.items():
        gates = explanations(model_name, version, policy, now)
        doc["live"] = [{"comparison": g["comparison"], "verdict": g["verdict"], "taken_at": g["evaluated_at"],
                        "newest_event": g["newest_event"],
                        "failing": [c["message"] for c in g["checks"] if _blocks(c)]}
                       for g in gates]  # fmt: skip


def _blocks(check: dict[str, Any]) -> bool:
    # Check.blocks, on the JSON form.
    return (check["outcome"] == "FAIL" and check["enforcement"] == "BLOCK") or check["outcome"] in ("INCONCLUSIVE",
                                                                                                      "ERROR")


def _taken(doc: dict[str, Any], now: Any) -> str:
    from datetime import datetime

    lines = []
    if doc["gate_taken_at"] is not None:
        at = datetime.fromisoformat(doc["gate_taken_at"])
        lines.append(f"{doc['gate_verdict']} at {at:%Y-%m-%d %H:%M:%S} ({_ago(now - at)} ago)")
    for gate in doc.get("live", []):
        lines.append(f"live {gate['verdict']} at {datetime.fromisoformat(gate['taken_at']):%H:%M:%S} "
                     f"(events to {gate['newest_event']})")
        lines += [f"  - {failing}" for failing in gate["failing"]]
    return "\n".join(lines) or "-"


def _ago(delta: Any) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min" if seconds < 86400 else f"{seconds // 86400} d"


@model.command("history")
@click.argument("model_name", metavar="MODEL")
@click.argument("version", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_from_log
def history(model_name: str, version: str | None, as_json: bool, from_log: bool) -> None:
    """Everything that happened to MODEL (or one VERSION), oldest first, with rollbacks."""
    state = _state(from_log)
    line = state.registry.models.get(model_name)
    if line is None:
        raise ConfigError(f"model {model_name!r} is not registered")
    events = sorted(
        ((v, h) for v, record in line.versions.items() if version in (None, v) for h in record.history),
        key=lambda item: (item[1].at, item[1].event_id),
    )
    rollbacks = [r for r in state.rollbacks if r.model == model_name and version in (None, r.from_version)]
    if as_json:
        data = {"history": [{"version": v, **h.model_dump(mode="json")} for v, h in events],
                "rollbacks": [r.model_dump(mode="json") for r in rollbacks]}
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    for v, h in events:
        click.echo(f"{h.at:%Y-%m-%d %H:%M:%S} {model_name}@{v} {h.kind} by {h.actor}: {h.detail}")
    for r in rollbacks:
        click.echo(f"{r.finished_at:%Y-%m-%d %H:%M:%S} rollback {r.status} {r.from_version} -> {r.to_version} "
                   f"by {r.initiated_by}: {r.reason}" + (f" ({r.error})" if r.error else ""))


@model.command("proofpack")
@click.argument("model_name", metavar="MODEL")
@click.argument("version")
@keys_dir_option
@phase_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the signed record here instead of printing the ProofPack.")
@_from_log
def proofpack(model_name: str, version: str, keys_dir: Path, phase: str | None, output: Path | None,
              from_log: bool) -> None:
    """Fetch VERSION's ProofPack, verify its signature, print it (or write the signed record)."""
    from governance.lifecycle.identities import load_trust
    from governance.lifecycle.proofpack import verify_proofpack

    state = _state(from_log)
    pack_id = state.registry.get(model_name, version).proofpack_id
    record = state.proofpacks.get(pack_id) if pack_id else None
    if record is None:
        raise ConfigError(f"{model_name}@{version} has no ProofPack yet (generated on promotion to PRODUCTION)")
    trust, now = load_trust(keys_dir, schedule_of(phase)), now_utc()
    pack = verify_proofpack(dict(record), trust.system, now, trust.phase(now))
    if output is not None:
        output.write_bytes(orjson.dumps(record, option=orjson.OPT_INDENT_2))
        click.echo(f"ProofPack {pack.proofpack_id} (signature verified) written to {output}")
        return
    click.echo(orjson.dumps(pack.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode())


def _register_explain() -> None:
    # Its own module (it reads the live windows through the worker's code); a subcommand of `model`.
    from shadowgate.commands.explain import explain

    model.add_command(explain)


_register_explain()
