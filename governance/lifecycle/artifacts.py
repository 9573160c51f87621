"""Signed model artifacts at promotion (spec 6.3 ``signature_verification: MANDATORY``), pure.

A version's artifact is recorded with ``model register|propose --artifact FILE``: its SHA-256 and, when
``FILE.manifest.json`` exists (``shadowgate sign FILE``), the signed manifest record
(:mod:`governance.crypto.manifest`, context ``shadowgate/artifact/v1``). The consumer verifies the manifest
when it is recorded (:func:`verify_manifest`: a manifest that does not verify, or names another digest, is
refused with the command) and again whenever the version would enter STAGING or PRODUCTION
(:func:`artifact_rules`), against the system trust store of that moment: a key revoked since (at any date,
``strict_revocation``: a stolen key can backdate) or a manifest that no longer verifies blocks the move.

Who may sign: a key of the system trust store (the build pipeline signs with the system keyring, or with a
key whose public part was added to the system ``trust-store.json``, as the streams worker does). The
signature covers the file's size, SHA-256 and SHA3-256; the consumer never sees the file, so the CLI checks
the manifest against the file before it sends it, and the consumer checks it against the recorded SHA-256.

Guarantees: pure apart from the signature check (CPU); every problem is named with its spec section.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from governance.crypto.keys import TrustStore
from governance.crypto.manifest import MANIFEST_FORMAT
from governance.crypto.record import verify_record
from governance.crypto.schedule import Phase
from governance.crypto.signing import Context, Signature, Verifier
from governance.errors import VerificationError
from governance.lifecycle.registry import ModelVersion

__all__ = ["artifact_rules", "verify_manifest"]


def verify_manifest(manifest: Mapping[str, Any], sha256: str, store: TrustStore, now: datetime,
                    phase: Phase) -> tuple[str, datetime]:
    """``(key_id, signed_at)`` of ``manifest`` when it verifies under ``store`` (no revoked key, whatever the date)
    and describes the artifact ``sha256``; else :class:`VerificationError` saying why."""
    record = dict(manifest)
    payload = verify_record(record, Context.ARTIFACT, store, now, phase,
                            verifier=Verifier(store, strict_revocation=True))
    artifact = payload.get("artifact")
    if payload.get("format") != MANIFEST_FORMAT or not isinstance(artifact, dict):
        raise VerificationError(f"the manifest is not a {MANIFEST_FORMAT} document")
    if artifact.get("sha256") != sha256:
        raise VerificationError(f"the manifest is for sha256 {artifact.get('sha256')!r}, not the artifact's {sha256}")
    block = Signature.model_validate(record["signature"] if record.get("signature") else record["classical"])
    return block.key_id, block.signed_at


def artifact_rules(record: ModelVersion, store: TrustStore | None, now: datetime, phase: Phase | None) -> list[str]:
    """What keeps ``record`` from STAGING or PRODUCTION for its artifact ([] when it has a valid signed manifest).

    ``store`` None (a reader without the system trust store, e.g. ``model status`` without keys): the
    manifest recorded (and verified when recorded) is taken as it is; the consumer always passes its store.
    """
    where = f"{record.model}@{record.version}"
    artifact = record.artifact
    if artifact is None:
        return [f"[6.3] {where} has no registered artifact: sign it (`shadowgate sign FILE`) and record it with "
                "`model propose --artifact FILE`"]
    if artifact.manifest is None:
        return [f"[6.3] the artifact of {where} (sha256 {artifact.sha256[:16]}...) has no signed manifest: "
                "`shadowgate sign FILE`, then `model propose --artifact FILE` (the same file)"]
    if store is None or phase is None:
        return []
    try:
        verify_manifest(artifact.manifest, artifact.sha256, store, now, phase)
    except VerificationError as exc:
        return [f"[6.3] the artifact manifest of {where} does not verify now: {exc}"]
    return []
