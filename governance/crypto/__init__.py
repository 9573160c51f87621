"""Post-quantum signing and provenance (spec section 6): signatures, keys, manifests, encryption, migration.

Use it like this::

    from governance.crypto import Context, Keyring, TrustStore, sign_record, verify_record

    keyring = Keyring(Path("~/.config/shadowgate/keys").expanduser())
    signer = keyring.signer(now)                                   # the active ML-DSA-65 key
    record = sign_record({"event": "GateReady", ...}, Context.EVENT, signer, now)
    ...                                                            # record is JSON: send it anywhere
    payload = verify_record(record, Context.EVENT, trust_store, now, schedule.phase_at(now))

Signed record format (governance events, approvals, audit entries, artifact manifests)::

    {"payload": {...any JSON object...},
     "signature": {"alg": "ML-DSA-65", "key_id": "mldsa65-<16 hex>", "context": "shadowgate/event/v1",
                   "sig": "<base64>", "signed_at": "2026-11-26T12:00:00.000000+00:00"},
     "classical": {...same shape...}}          # optional second signature, dual mode, phases 0-2 only

API (details in each module):

* ``sign_record(payload, context, signer, now, *, classical=None, phase=None) -> dict`` and
  ``await sign_record_async(..., executor=None)``; ``verify_record(record, context, trust_store, now, phase)
  -> payload`` raises :class:`~governance.errors.VerificationError` naming the key and the reason.
* :class:`Context`: ``ARTIFACT``, ``EVENT``, ``APPROVAL``, ``AUDIT_ENTRY``, ``PROOFPACK``. A signature made
  under one context never verifies under another (FIPS 204/205 context string).
* :class:`Signer` / :class:`Verifier` for raw bytes; :class:`Keyring` (disk, 0600 secrets, rotation,
  revocation); :class:`TrustStore` (public keys); :class:`KeyPolicy` (algorithm, 90-day rotation);
  :class:`LiveKeyring`: the active signer and trust store of a running process, reloaded when the files
  change (``keys rotate`` / ``keys revoke`` reach it without a restart).
* ``sign_artifact(path, signer, now)`` / ``verify_artifact(path, trust_store, now)``: manifests with
  SHA-256 and SHA3-256 (re-exported by the scoring-service SDK).
* ``encrypt(data, recipient, now)`` / ``decrypt(envelope, secret)``: ML-KEM-768 + AES-256-GCM.
* :class:`MigrationSchedule` / :class:`Phase`: spec 6.1 phases by date or pinned, with 6.4 enforcement.
* ``audit(root, allowlist)``: inventory of quantum-vulnerable public-key crypto.

Not here: event ids and replay protection (the governance consumer drops replays).
Importing this package loads no native code; pqcrypto loads on the first key operation.
"""

from __future__ import annotations

from governance.crypto.algorithms import Algorithm, parse_algorithm
from governance.crypto.audit import Allowlist, AuditReport, Finding, audit
from governance.crypto.canonical import canonical_bytes
from governance.crypto.hybrid import decrypt, encrypt, envelope_key_id
from governance.crypto.keyring import Keyring, default_keys_dir
from governance.crypto.keys import KeyInfo, KeyPolicy, KeyStatus, TrustStore, generate_key
from governance.crypto.live import LiveKeyring
from governance.crypto.manifest import (
    VerifiedArtifact,
    manifest_path_for,
    sign_artifact,
    verify_artifact,
    verify_artifact_bytes,
)
from governance.crypto.record import sign_record, sign_record_async, verify_record
from governance.crypto.schedule import DEFAULT_SCHEDULE, Enforcement, MigrationSchedule, Phase
from governance.crypto.signing import Context, Signature, Signer, Verifier

__all__ = [
    "DEFAULT_SCHEDULE",
    "Algorithm",
    "Allowlist",
    "AuditReport",
    "Context",
    "Enforcement",
    "Finding",
    "KeyInfo",
    "KeyPolicy",
    "KeyStatus",
    "Keyring",
    "LiveKeyring",
    "MigrationSchedule",
    "Phase",
    "Signature",
    "Signer",
    "TrustStore",
    "VerifiedArtifact",
    "Verifier",
    "audit",
    "canonical_bytes",
    "decrypt",
    "default_keys_dir",
    "encrypt",
    "envelope_key_id",
    "generate_key",
    "manifest_path_for",
    "parse_algorithm",
    "sign_artifact",
    "sign_record",
    "sign_record_async",
    "verify_artifact",
    "verify_artifact_bytes",
    "verify_record",
]
