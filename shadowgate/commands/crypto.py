"""``shadowgate keys | sign | verify | encrypt | decrypt | crypto``: post-quantum signing and provenance.

Thin edge over :mod:`governance.crypto`: it reads the clock, the key directory (``--keys-dir``,
``SHADOWGATE_KEYS_DIR``, default ``~/.config/shadowgate/keys``) and files, and prints one line per
result. Failures raise :mod:`governance.errors` classes, which ``shadowgate.cli.main`` prints as one line
with exit code 2; ``crypto audit`` exits 1 when findings block (phase 3).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from governance.crypto.algorithms import Algorithm, Kind, parse_algorithm, spec
from governance.crypto.audit import DEFAULT_ALLOWLIST, Allowlist, AuditReport, audit
from governance.crypto.hybrid import decrypt as hybrid_decrypt
from governance.crypto.hybrid import encrypt as hybrid_encrypt
from governance.crypto.hybrid import envelope_key_id
from governance.crypto.keyring import Keyring, default_keys_dir
from governance.crypto.keys import KeyStatus, TrustStore
from governance.crypto.manifest import manifest_path_for, sign_artifact, verify_artifact
from governance.crypto.schedule import DEFAULT_SCHEDULE, MigrationSchedule, Phase, parse_phase
from governance.errors import ConfigError

__all__ = ["crypto", "decrypt", "encrypt", "keys", "sign", "verify"]

_F = TypeVar("_F", bound=Callable[..., Any])


def _now() -> datetime:
    return datetime.now(UTC)


def _keys_dir_option(func: _F) -> _F:
    option = click.option(
        "--keys-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="SHADOWGATE_KEYS_DIR",
        default=default_keys_dir,
        show_default="~/.config/shadowgate/keys",
        help="Key directory (private keys mode 0600 and the local trust store).",
    )
    return option(func)


def _phase_option(func: _F) -> _F:
    option = click.option(
        "--phase",
        envvar="SHADOWGATE_PQC_PHASE",
        default=None,
        metavar="0-3",
        help="Pin the PQC migration phase (default: the phase of today's date).",
    )
    return option(func)


def _schedule(phase: str | None) -> MigrationSchedule:
    return DEFAULT_SCHEDULE if phase is None else DEFAULT_SCHEDULE.pinned(parse_phase(phase))


def _algorithm(name: str | None, phase: str | None) -> Algorithm | None:
    if name is None:
        return None
    algorithm = parse_algorithm(name)
    current = _schedule(phase).phase_at(_now())
    if algorithm is Algorithm.CLASSICAL and not DEFAULT_SCHEDULE.enforcement(current).classical_signing_allowed:
        raise ConfigError(f"classical keys are blocked in {current.label}; use ML-DSA-65 or SLH-DSA-SHA2-128f")
    return algorithm


def _write_new(path: Path, data: bytes, force: bool, mode: int = 0o644) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


# ---------------------------------------------------------------- keys


@click.group()
def keys() -> None:
    """Generate, rotate, list, export and revoke signing and encryption keys."""


@keys.command("generate")
@_keys_dir_option
@_phase_option
@click.option("--algorithm", default=None, help="ML-DSA-65 (default), SLH-DSA-SHA2-128f or ML-KEM-768.")
def keys_generate(keys_dir: Path, phase: str | None, algorithm: str | None) -> None:
    """Make the first key of an algorithm (refuses if an active one exists: use rotate)."""
    info = Keyring(keys_dir).generate(_now(), _algorithm(algorithm, phase))
    click.echo(f"generated {info.algorithm.value} key {info.key_id} (rotate after {info.rotate_after:%Y-%m-%d})")


@keys.command("rotate")
@_keys_dir_option
@_phase_option
@click.option("--algorithm", default=None, help="Algorithm whose active key to replace (default ML-DSA-65).")
def keys_rotate(keys_dir: Path, phase: str | None, algorithm: str | None) -> None:
    """Make a new key and retire the active one (its records keep verifying).

    Running processes (the governance consumer; the worker, if it follows its keyring) pick the new key up
    within SHADOWGATE_KEYS_CHECK_S seconds, without a restart.
    """
    new, retired = Keyring(keys_dir).rotate(_now(), _algorithm(algorithm, phase))
    click.echo(f"new {new.algorithm.value} key {new.key_id}")
    for old in retired:
        click.echo(f"retired {old.key_id} (its signatures dated before {old.expires_at:%Y-%m-%d %H:%M} verify)")


@keys.command("list")
@_keys_dir_option
def keys_list(keys_dir: Path) -> None:
    """Every key of the keyring with its status."""
    keyring, now = Keyring(keys_dir), _now()
    found = keyring.list_keys()
    if not found:
        click.echo(f"no keys in {keys_dir}; run `shadowgate keys generate`")
        return
    click.echo(f"{'key id':<28} {'algorithm':<18} {'status':<8} {'created':<10} {'expires':<10} note")
    for key in found:
        status = key.status(now)
        note = ""
        if key.revoked_at is not None:
            note = f"revoked: {key.revocation_reason}"
        elif status.value == "active" and key.rotation_due(now):
            note = "rotation due: run `shadowgate keys rotate`"
        click.echo(
            f"{key.key_id:<28} {key.algorithm.value:<18} {status.value:<8} "
            f"{key.created_at:%Y-%m-%d} {key.expires_at:%Y-%m-%d} {note}".rstrip()
        )


@keys.command("export-public")
@_keys_dir_option
@click.argument("key_ids", nargs=-1)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def keys_export_public(keys_dir: Path, key_ids: tuple[str, ...], output: Path | None, force: bool) -> None:
    """A trust-store file with the public keys (all, or KEY_IDS) for verifiers elsewhere."""
    store = Keyring(keys_dir).trust_store()
    chosen = TrustStore([store.get(k) for k in key_ids] if key_ids else store, source="export")
    if output is None:
        click.echo(chosen.to_json().decode(), nl=False)
    else:
        _write_new(output, chosen.to_json(), force)
        click.echo(f"exported {len(chosen)} public keys to {output}")


@keys.command("revoke")
@_keys_dir_option
@click.argument("key_id")
@click.option("--reason", required=True, help="Why (recorded in the trust store and shown on failures).")
def keys_revoke(keys_dir: Path, key_id: str, reason: str) -> None:
    """Revoke KEY_ID: signatures dated from now on fail; those made before stay verifiable.

    Rotate first (`keys rotate`) when KEY_ID is the active signing key, or the keyring has none to sign with.
    A running governance consumer notices it within SHADOWGATE_KEYS_CHECK_S seconds, records the revocation
    in the audit log, and from then on refuses every input signed by the key and every later log entry
    signed by it, whatever date it claims.
    """
    keyring, now = Keyring(keys_dir), _now()
    info = keyring.revoke(key_id, now, reason)
    click.echo(f"revoked {info.key_id}: {info.revocation_reason}; re-export the trust store to verifiers")
    remaining = [k for k in keyring.list_keys() if k.algorithm is info.algorithm and k.status(now) is KeyStatus.ACTIVE]
    if not remaining and spec(info.algorithm).kind is Kind.SIGNATURE:
        click.echo(f"warning: no active {info.algorithm.value} key is left: run `shadowgate keys generate`", err=True)


# ---------------------------------------------------------------- sign / verify


@click.command()
@_keys_dir_option
@_phase_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_id", default=None, help="Key id to sign with (default: the active ML-DSA-65 key).")
@click.option("--classical-key", default=None, help="Dual mode (phases 1-2): also sign with this classical key.")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), help="Default: FILE.manifest.json")
def sign(
    keys_dir: Path, phase: str | None, file: Path, key_id: str | None, classical_key: str | None, manifest: Path | None
) -> None:
    """Sign a model artifact: write its manifest (SHA-256, SHA3-256, key id, signature)."""
    now = _now()
    keyring = Keyring(keys_dir)
    signer = keyring.signer(now, key_id=key_id)
    classical = keyring.signer(now, key_id=classical_key) if classical_key else None
    written = sign_artifact(
        file, signer, now, manifest_path=manifest, classical=classical, phase=_schedule(phase).phase_at(now)
    )
    click.echo(f"signed {file} with {signer.algorithm.value} key {signer.key_id}: {written}")


@click.command()
@_keys_dir_option
@_phase_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), help="Default: FILE.manifest.json")
@click.option(
    "--trust-store",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Trust-store file from `keys export-public` (default: the one in --keys-dir).",
)
def verify(keys_dir: Path, phase: str | None, file: Path, manifest: Path | None, trust_store: Path | None) -> None:
    """Verify a model artifact against its signed manifest; exits 2 with the reason if it does not verify."""
    now = _now()
    store = TrustStore.load(trust_store) if trust_store else Keyring(keys_dir).trust_store()
    result = verify_artifact(
        file, store, now, manifest_path=manifest or manifest_path_for(file), schedule=_schedule(phase)
    )
    click.echo(
        f"verified {file}: {result.signature.alg.value} key {result.signature.key_id}, signed "
        f"{result.signature.signed_at:%Y-%m-%d %H:%M:%S}Z, sha256 {result.digest.sha256}"
    )


# ---------------------------------------------------------------- encrypt / decrypt


@click.command()
@_keys_dir_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--recipient", default=None, help="ML-KEM-768 key id (default: the active ML-KEM-768 key).")
@click.option(
    "--trust-store",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Find the recipient's public key here (default: the trust store in --keys-dir).",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: FILE.enc")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def encrypt(
    keys_dir: Path, file: Path, recipient: str | None, trust_store: Path | None, output: Path | None, force: bool
) -> None:
    """Encrypt a ProofPack or evidence file with ML-KEM-768 + AES-256-GCM."""
    now = _now()
    if trust_store is not None:
        if recipient is None:
            raise ConfigError("--trust-store needs --recipient KEY_ID")
        key = TrustStore.load(trust_store).get(recipient)
    else:
        keyring = Keyring(keys_dir)
        key = keyring.trust_store().get(recipient) if recipient else keyring.active_key(now, Algorithm.ML_KEM_768)
    target = output or file.with_name(file.name + ".enc")
    _write_new(target, hybrid_encrypt(file.read_bytes(), key, now), force)
    click.echo(f"encrypted {file} to {key.key_id}: {target}")


@click.command()
@_keys_dir_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: FILE without .enc")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
def decrypt(keys_dir: Path, file: Path, output: Path | None, force: bool) -> None:
    """Decrypt a file made by `shadowgate encrypt` (written with mode 0600); fails if anything was altered."""
    envelope = file.read_bytes()
    key_id = envelope_key_id(envelope)
    if output is None:
        if file.suffix != ".enc":
            raise ConfigError(f"{file} does not end in .enc; pass -o OUTPUT")
        output = file.with_suffix("")
    plaintext = hybrid_decrypt(envelope, Keyring(keys_dir).secret_key(key_id), key_id=key_id)
    _write_new(output, plaintext, force, mode=0o600)
    click.echo(f"decrypted {file} with {key_id}: {output}")


# ---------------------------------------------------------------- crypto audit / schedule


@click.group()
def crypto() -> None:
    """Crypto inventory and the PQC migration schedule (spec section 6)."""


def _print_report(report: AuditReport, blocking: int, phase: Phase) -> None:
    for finding in report.findings:
        tag = f"allowed by {finding.allowed_by}" if finding.allowed else "NOT ALLOWED"
        click.echo(f"{finding.path}:{finding.line}: {finding.algorithm}: {finding.snippet}  [{tag}]")
    for entry in report.unused_allow:
        click.echo(f"warning: allowlist entry {entry.path!r} matched nothing; remove it", err=True)
    allowed = sum(1 for f in report.findings if f.allowed)
    click.echo(
        f"crypto audit of {report.root} ({phase.label}): {len(report.findings)} findings, {allowed} allowed, "
        f"{blocking} blocking, in {report.files_scanned} files"
    )


@crypto.command("audit")
@_phase_option
@click.argument("path", type=click.Path(exists=True, path_type=Path), default=Path("."))
@click.option(
    "--allowlist",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Reviewed allowlist (default: PATH/{DEFAULT_ALLOWLIST} if it exists).",
)
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def crypto_audit(ctx: click.Context, phase: str | None, path: Path, allowlist: Path | None, output_format: str) -> None:
    """Report quantum-vulnerable public-key crypto (RSA, ECDSA, ECDH, DSA, Ed25519/X25519) with file:line.

    Exits 1 in phase 3 (PQC-only) if any finding is not allowlisted.
    """
    if allowlist is None and (path / DEFAULT_ALLOWLIST).is_file():
        allowlist = path / DEFAULT_ALLOWLIST
    report = audit(path, Allowlist.load(allowlist) if allowlist else None, skip=[allowlist] if allowlist else [])
    current = _schedule(phase).phase_at(_now())
    blocking = report.blocking(DEFAULT_SCHEDULE.enforcement(current))
    if output_format == "json":
        document = {
            "root": str(report.root),
            "phase": int(current),
            "files_scanned": report.files_scanned,
            "findings": [
                {
                    "path": f.path,
                    "line": f.line,
                    "algorithm": f.algorithm,
                    "snippet": f.snippet,
                    "allowed_by": f.allowed_by,
                    "allow_reason": f.allow_reason,
                }
                for f in report.findings
            ],
            "unused_allowlist_entries": [e.path for e in report.unused_allow],
            "blocking": len(blocking),
        }
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_report(report, len(blocking), current)
    if blocking:
        click.echo(
            f"shadowgate: crypto audit failed: {len(blocking)} quantum-vulnerable uses in {current.label}; "
            f"migrate signatures to ML-DSA-65 and key exchange to ML-KEM-768 (docs/signing.md), or allowlist "
            f"reviewed uses with a reason in {DEFAULT_ALLOWLIST}",
            err=True,
        )
        ctx.exit(1)


@crypto.command("schedule")
@_phase_option
def crypto_schedule(phase: str | None) -> None:
    """The PQC migration phases (spec 6.1), their rules (6.4) and the phase in force now."""
    schedule, now = _schedule(phase), _now()
    current, by_date = schedule.phase_at(now), schedule.date_phase(now)
    for item in Phase:
        start = schedule.start_of(item)
        mark = "->" if item is current else "  "
        since = f"from {start:%Y-%m-%d}" if start else "before phase 1"
        click.echo(f"{mark} {item.label:<24} {since:<16} {', '.join(schedule.enforcement(item).rules)}")
    pinned = f" (pinned; the date says phase {int(by_date)})" if schedule.pinned_phase is not None else ""
    click.echo(f"in force: {current.label}{pinned}")
