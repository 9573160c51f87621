"""PQC migration schedule (spec 6.1/6.4): phases by date and pinned, enforcement, dual-mode record rules."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import yaml

from governance.crypto import (
    DEFAULT_SCHEDULE,
    Context,
    KeyPolicy,
    MigrationSchedule,
    Phase,
    Signer,
    TrustStore,
    generate_key,
    sign_record,
    verify_record,
)
from governance.crypto.algorithms import Algorithm
from governance.crypto.schedule import ClassicalOnly, parse_phase
from governance.errors import ConfigError, CryptoError, VerificationError

SPEC_6_4 = """
pqc_migration:
  current_phase: "Phase 0"
  target_completion: "2026-Q4"
  enforcement:
    phase_0:
      - audit_all_crypto_usage
      - document_migration_plan
    phase_1:
      - dual_mode_required_for_new_code
      - classical_allowed_as_fallback
    phase_2:
      - pqc_primary_for_new_code
      - classical_fallback_only
    phase_3:
      - pqc_only_enforced
      - classical_blocked_in_ci
  model_signing:
    algorithm: "Dilithium-3"
    key_rotation: "90 days"
    signature_verification: "MANDATORY"
"""

PAYLOAD = {"event": "LifecycleTransition", "to": "canary"}


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "phase"),
    [
        ("2025-06-01T00:00:00", Phase.ASSESSMENT),
        ("2026-02-15T00:00:00", Phase.ASSESSMENT),
        ("2026-03-31T23:59:59.999999", Phase.ASSESSMENT),
        ("2026-04-01T00:00:00", Phase.DUAL_MODE),
        ("2026-06-30T23:59:59", Phase.DUAL_MODE),
        ("2026-07-01T00:00:00", Phase.PRIMARY_PQC),
        ("2026-09-30T23:59:59", Phase.PRIMARY_PQC),
        ("2026-10-01T00:00:00", Phase.PQC_ONLY),
        ("2026-11-26T12:00:00", Phase.PQC_ONLY),  # today: PQC only
        ("2031-01-01T00:00:00", Phase.PQC_ONLY),
    ],
)
def test_phase_follows_the_date(when: str, phase: Phase) -> None:
    assert DEFAULT_SCHEDULE.phase_at(_at(when)) is phase


def test_pin_overrides_the_date_and_reports_both() -> None:
    pinned = DEFAULT_SCHEDULE.pinned(Phase.DUAL_MODE)
    today = _at("2026-11-26T12:00:00")
    assert pinned.phase_at(today) is Phase.DUAL_MODE
    assert pinned.date_phase(today) is Phase.PQC_ONLY
    assert pinned.pinned(None).phase_at(today) is Phase.PQC_ONLY


def test_spec_block_loads_with_quarter_starts_and_current_phase_does_not_pin() -> None:
    schedule = MigrationSchedule.from_spec(yaml.safe_load(SPEC_6_4))
    assert schedule == DEFAULT_SCHEDULE
    assert schedule.phase_starts == {
        Phase.DUAL_MODE: date(2026, 4, 1),
        Phase.PRIMARY_PQC: date(2026, 7, 1),
        Phase.PQC_ONLY: date(2026, 10, 1),
    }
    later = MigrationSchedule.from_spec({"target_completion": "2027-Q1", "pinned_phase": "Phase 2"})
    assert later.phase_starts[Phase.DUAL_MODE] == date(2026, 7, 1)
    assert later.phase_starts[Phase.PQC_ONLY] == date(2027, 1, 1)
    assert later.phase_at(_at("2030-01-01T00:00:00")) is Phase.PRIMARY_PQC


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"enforcement": {"phase_3": ["pqc_only_enforced", "trust_everyone"]}}, "unknown rules"),
        ({"target_completion": "soon"}, "not like '2026-Q4'"),
        ({"current_phase": "Phase 9"}, "unknown PQC migration phase"),
        ({"pinned_phase": "latest"}, "unknown PQC migration phase"),
        ({"enforcement": {"phase_1": "classical_allowed_as_fallback"}}, "list of rule names"),
    ],
)
def test_bad_configuration_fails_closed(block: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MigrationSchedule.from_spec({"pqc_migration": block})


def test_enforcement_by_phase() -> None:
    flags = {
        phase: (e.classical_signing_allowed, e.classical_only, e.audit_blocks)
        for phase in Phase
        for e in [DEFAULT_SCHEDULE.enforcement(phase)]
    }
    assert flags == {
        Phase.ASSESSMENT: (True, ClassicalOnly.ACCEPT, False),
        Phase.DUAL_MODE: (True, ClassicalOnly.ACCEPT, False),
        Phase.PRIMARY_PQC: (True, ClassicalOnly.LEGACY, False),
        Phase.PQC_ONLY: (False, ClassicalOnly.REFUSE, True),
    }
    assert parse_phase("phase_2") is parse_phase(2) is parse_phase("Phase 2") is Phase.PRIMARY_PQC


# ---------------------------------------------------------------- dual mode


@pytest.fixture(scope="module")
def signers() -> dict[str, Any]:
    created = _at("2026-03-01T00:00:00")
    policy = KeyPolicy(rotation_days=365)
    pqc_info, pqc_secret = generate_key(Algorithm.ML_DSA_65, created, policy)
    classic_info, classic_secret = generate_key(Algorithm.CLASSICAL, created, policy)
    return {
        "pqc": Signer(pqc_info, pqc_secret),
        "classical": Signer(classic_info, classic_secret),
        "store": TrustStore([pqc_info, classic_info]),
        "pqc_only_store": TrustStore([pqc_info]),
    }


def _classical_only(record: dict[str, Any]) -> dict[str, Any]:
    return {"payload": record["payload"], "classical": record["classical"]}


def test_phase_1_dual_records_and_classical_only_fallback(signers: dict[str, Any]) -> None:
    when = _at("2026-05-01T00:00:00")
    record = sign_record(
        PAYLOAD, Context.EVENT, signers["pqc"], when, classical=signers["classical"], phase=Phase.DUAL_MODE
    )
    assert record["classical"]["alg"] == Algorithm.CLASSICAL.value
    assert verify_record(record, Context.EVENT, signers["store"], when, Phase.DUAL_MODE) == PAYLOAD
    assert verify_record(_classical_only(record), Context.EVENT, signers["store"], when, Phase.DUAL_MODE) == PAYLOAD
    broken = {**record, "classical": {**record["classical"], "sig": record["signature"]["sig"]}}
    with pytest.raises(VerificationError, match=signers["classical"].key_id):
        verify_record(broken, Context.EVENT, signers["store"], when, Phase.DUAL_MODE)  # present => must verify


def test_phase_2_accepts_classical_only_records_only_from_before_phase_2(signers: dict[str, Any]) -> None:
    legacy_time, new_time = _at("2026-06-15T00:00:00"), _at("2026-08-01T00:00:00")
    legacy = sign_record(
        PAYLOAD, Context.EVENT, signers["pqc"], legacy_time, classical=signers["classical"], phase=Phase.DUAL_MODE
    )
    fresh = sign_record(
        PAYLOAD, Context.EVENT, signers["pqc"], new_time, classical=signers["classical"], phase=Phase.PRIMARY_PQC
    )
    assert (
        verify_record(_classical_only(legacy), Context.EVENT, signers["store"], new_time, Phase.PRIMARY_PQC) == PAYLOAD
    )
    with pytest.raises(VerificationError, match="only for records signed before 2026-07-01"):
        verify_record(_classical_only(fresh), Context.EVENT, signers["store"], new_time, Phase.PRIMARY_PQC)
    assert verify_record(fresh, Context.EVENT, signers["store"], new_time, Phase.PRIMARY_PQC) == PAYLOAD


def test_phase_3_refuses_classical_only_and_ignores_the_classical_block(signers: dict[str, Any]) -> None:
    signed, today = _at("2026-06-01T00:00:00"), _at("2026-11-26T12:00:00")
    record = sign_record(
        PAYLOAD, Context.EVENT, signers["pqc"], signed, classical=signers["classical"], phase=Phase.DUAL_MODE
    )
    with pytest.raises(VerificationError, match="Phase 3: PQC-Only refuses classical-only records"):
        verify_record(_classical_only(record), Context.EVENT, signers["store"], today, Phase.PQC_ONLY)
    # The classical block is never trusted in phase 3: neither its key nor its validity matters.
    garbled = {**record, "classical": {**record["classical"], "sig": record["classical"]["sig"][::-1]}}
    assert verify_record(garbled, Context.EVENT, signers["pqc_only_store"], today, Phase.PQC_ONLY) == PAYLOAD
    # ...and it cannot rescue a bad PQC signature.
    bad_pqc = {**record, "payload": {**PAYLOAD, "to": "production"}}
    with pytest.raises(VerificationError, match=signers["pqc"].key_id):
        verify_record(bad_pqc, Context.EVENT, signers["store"], today, Phase.PQC_ONLY)


def test_signing_rules(signers: dict[str, Any]) -> None:
    today = _at("2026-11-26T12:00:00")
    with pytest.raises(CryptoError, match="classical signatures are blocked in Phase 3"):
        sign_record(PAYLOAD, Context.EVENT, signers["pqc"], today, classical=signers["classical"], phase=Phase.PQC_ONLY)
    with pytest.raises(CryptoError, match="must be post-quantum"):
        sign_record(PAYLOAD, Context.EVENT, signers["classical"], today)
    with pytest.raises(CryptoError, match="needs the migration phase"):
        sign_record(PAYLOAD, Context.EVENT, signers["pqc"], today, classical=signers["classical"])
    record = sign_record(PAYLOAD, Context.EVENT, signers["pqc"], today)
    swapped = {
        "payload": PAYLOAD,
        "signature": sign_record(
            PAYLOAD,
            Context.EVENT,
            signers["pqc"],
            _at("2026-05-01T00:00:00"),
            classical=signers["classical"],
            phase=Phase.DUAL_MODE,
        )["classical"],
    }
    with pytest.raises(VerificationError, match="not post-quantum"):
        verify_record(swapped, Context.EVENT, signers["store"], today, Phase.DUAL_MODE)
    assert "classical" not in record
