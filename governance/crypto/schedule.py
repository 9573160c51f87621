"""The PQC migration schedule of spec 6.1 as configuration, with the enforcement rules of spec 6.4.

=====  ====================  ==========  =====================================================
phase  name                  starts      enforcement (spec 6.4 rule names)
=====  ====================  ==========  =====================================================
0      Assessment            2026-01-01  audit_all_crypto_usage, document_migration_plan
1      Dual-Mode             2026-04-01  dual_mode_required_for_new_code, classical_allowed_as_fallback
2      Primary PQC           2026-07-01  pqc_primary_for_new_code, classical_fallback_only
3      PQC-Only              2026-10-01  pqc_only_enforced, classical_blocked_in_ci
=====  ====================  ==========  =====================================================

The phase follows the date (quarter starts, UTC; before 2026-01-01 is phase 0) unless ``pinned_phase`` is
set. What each rule does here:

* ``classical_allowed_as_fallback``: a record signed only classically is accepted.
* ``classical_fallback_only``: a classical-only record is accepted only if its classical signature
  predates the start of phase 2 (a legacy record); new records must carry a PQC signature.
* ``pqc_only_enforced``: no classical signature may be made, classical-only records are refused, and a
  classical signature beside a PQC one is ignored (never trusted).
* ``classical_blocked_in_ci``: ``shadowgate crypto audit`` exits non-zero on any non-allowlisted finding.
* The others are process duties; shadowgate always signs with a post-quantum key, which satisfies
  ``dual_mode_required_for_new_code`` and ``pqc_primary_for_new_code`` by construction.

Unknown rule names or phases fail closed with :class:`ConfigError`. The schedule is a pure value: the
time is always passed in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import IntEnum, StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from governance.errors import ConfigError

__all__ = [
    "DEFAULT_SCHEDULE",
    "ClassicalOnly",
    "Enforcement",
    "MigrationSchedule",
    "Phase",
    "parse_phase",
]


class Phase(IntEnum):
    ASSESSMENT = 0
    DUAL_MODE = 1
    PRIMARY_PQC = 2
    PQC_ONLY = 3

    @property
    def label(self) -> str:
        return f"Phase {self.value}: {_LABELS[self]}"


_LABELS = {
    Phase.ASSESSMENT: "Assessment",
    Phase.DUAL_MODE: "Dual-Mode",
    Phase.PRIMARY_PQC: "Primary PQC",
    Phase.PQC_ONLY: "PQC-Only",
}

_RULES: dict[Phase, tuple[str, ...]] = {
    Phase.ASSESSMENT: ("audit_all_crypto_usage", "document_migration_plan"),
    Phase.DUAL_MODE: ("dual_mode_required_for_new_code", "classical_allowed_as_fallback"),
    Phase.PRIMARY_PQC: ("pqc_primary_for_new_code", "classical_fallback_only"),
    Phase.PQC_ONLY: ("pqc_only_enforced", "classical_blocked_in_ci"),
}
_KNOWN_RULES = frozenset(rule for rules in _RULES.values() for rule in rules)


class ClassicalOnly(StrEnum):
    """What verification does with a record that carries only a classical signature."""

    ACCEPT = "accept"
    LEGACY = "legacy"  # only if signed before phase 2 started
    REFUSE = "refuse"


@dataclass(frozen=True)
class Enforcement:
    """The rules in force in one phase and what they mean for signing, verification and the audit."""

    phase: Phase
    rules: tuple[str, ...]

    @property
    def classical_signing_allowed(self) -> bool:
        return "pqc_only_enforced" not in self.rules

    @property
    def classical_only(self) -> ClassicalOnly:
        if "pqc_only_enforced" in self.rules:
            return ClassicalOnly.REFUSE
        if "classical_fallback_only" in self.rules:
            return ClassicalOnly.LEGACY
        return ClassicalOnly.ACCEPT

    @property
    def audit_blocks(self) -> bool:
        return "classical_blocked_in_ci" in self.rules


_PHASE_RE = re.compile(r"^\s*(?:phase[\s_]*)?([0-3])\s*$", re.IGNORECASE)
_QUARTER_RE = re.compile(r"^\s*(\d{4})-Q([1-4])\s*$", re.IGNORECASE)


def parse_phase(value: object) -> Phase:
    """``3``, ``"3"``, ``"Phase 3"`` or ``"phase_3"`` as a :class:`Phase`; :class:`ConfigError` otherwise."""
    if isinstance(value, Phase):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        return Phase(value)
    if isinstance(value, str) and (match := _PHASE_RE.match(value)):
        return Phase(int(match.group(1)))
    raise ConfigError(f"unknown PQC migration phase {value!r}; use 0-3 or 'Phase 0'..'Phase 3'")


def _quarter_start(year: int, quarter: int) -> date:
    return date(year, 3 * (quarter - 1) + 1, 1)


class MigrationSchedule(BaseModel):
    """Start dates of phases 1-3 (UTC midnight), an optional pin, and the rules of each phase."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    phase_starts: dict[Phase, date] = {
        Phase.DUAL_MODE: date(2026, 4, 1),
        Phase.PRIMARY_PQC: date(2026, 7, 1),
        Phase.PQC_ONLY: date(2026, 10, 1),
    }
    pinned_phase: Phase | None = None
    rules: dict[Phase, tuple[str, ...]] = dict(_RULES)

    @field_validator("pinned_phase", mode="before")
    @classmethod
    def _parse_pin(cls, value: object) -> Phase | None:
        return None if value is None else parse_phase(value)

    @model_validator(mode="after")
    def _check(self) -> MigrationSchedule:
        wanted = {Phase.DUAL_MODE, Phase.PRIMARY_PQC, Phase.PQC_ONLY}
        if set(self.phase_starts) != wanted:
            raise ConfigError(f"phase_starts must give phases 1, 2 and 3, got {sorted(self.phase_starts)}")
        starts = [self.phase_starts[p] for p in sorted(wanted)]
        if starts != sorted(starts) or len(set(starts)) != 3:
            raise ConfigError(f"phase start dates must strictly increase, got {[d.isoformat() for d in starts]}")
        if set(self.rules) != set(Phase):
            raise ConfigError(f"enforcement must list phases 0-3, got {sorted(self.rules)}")
        for phase, rules in self.rules.items():
            unknown = sorted(set(rules) - _KNOWN_RULES)
            if unknown:
                raise ConfigError(
                    f"enforcement phase_{phase.value} has unknown rules {unknown}; known: {sorted(_KNOWN_RULES)}"
                )
        return self

    def start_of(self, phase: Phase) -> datetime | None:
        """When ``phase`` starts by the calendar (``None`` for phase 0, which has no start)."""
        if phase is Phase.ASSESSMENT:
            return None
        day = self.phase_starts[phase]
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    def date_phase(self, now: datetime) -> Phase:
        """The phase the calendar says at ``now``, ignoring any pin."""
        if now.tzinfo is None:
            raise ConfigError(f"naive datetime {now.isoformat()}; pass a timezone-aware UTC time")
        current = Phase.ASSESSMENT
        for phase in (Phase.DUAL_MODE, Phase.PRIMARY_PQC, Phase.PQC_ONLY):
            start = self.start_of(phase)
            if start is not None and now >= start:
                current = phase
        return current

    def phase_at(self, now: datetime) -> Phase:
        """The phase in force at ``now``: the pin if set, else the calendar phase."""
        return self.pinned_phase if self.pinned_phase is not None else self.date_phase(now)

    def enforcement(self, phase: Phase) -> Enforcement:
        return Enforcement(phase, self.rules[phase])

    def pinned(self, phase: Phase | None) -> MigrationSchedule:
        """A copy pinned to ``phase`` (``None`` removes the pin)."""
        return self.model_copy(update={"pinned_phase": phase})

    @classmethod
    def from_spec(cls, config: Mapping[str, Any]) -> MigrationSchedule:
        """Build from the spec 6.4 ``pqc_migration`` block (or a mapping that contains it).

        ``target_completion: "2026-Q4"`` places phase 3 in that quarter and phases 2, 1 in the quarters
        before. ``enforcement: {phase_N: [rules]}`` replaces the rules of the phases it lists. The spec's
        ``current_phase`` records the status when the spec was written; it is validated but does not pin,
        because the phase follows the date. ``pinned_phase`` pins. Other keys of the block
        (``model_signing``, ``affected_services``) belong to other readers and are ignored here.
        """
        block = config.get("pqc_migration", config)
        if not isinstance(block, Mapping):
            raise ConfigError("pqc_migration must be a mapping")
        if "current_phase" in block:
            parse_phase(block["current_phase"])
        updates: dict[str, Any] = {}
        if "target_completion" in block:
            match = _QUARTER_RE.match(str(block["target_completion"]))
            if match is None:
                raise ConfigError(
                    f"pqc_migration.target_completion {block['target_completion']!r} is not like '2026-Q4'"
                )
            year, quarter = int(match.group(1)), int(match.group(2))
            starts: dict[Phase, date] = {}
            for phase in (Phase.PQC_ONLY, Phase.PRIMARY_PQC, Phase.DUAL_MODE):
                starts[phase] = _quarter_start(year, quarter)
                year, quarter = (year, quarter - 1) if quarter > 1 else (year - 1, 4)
            updates["phase_starts"] = starts
        if "enforcement" in block:
            rules = dict(_RULES)
            enforcement = block["enforcement"]
            if not isinstance(enforcement, Mapping):
                raise ConfigError("pqc_migration.enforcement must map phase_N to a list of rules")
            for key, listed in enforcement.items():
                if not isinstance(listed, list | tuple) or not all(isinstance(r, str) for r in listed):
                    raise ConfigError(f"pqc_migration.enforcement.{key} must be a list of rule names")
                rules[parse_phase(str(key))] = tuple(listed)
            updates["rules"] = rules
        if block.get("pinned_phase") is not None:
            updates["pinned_phase"] = parse_phase(block["pinned_phase"])
        try:
            return cls(**updates)
        except ValueError as exc:
            raise ConfigError(f"pqc_migration: {exc}") from exc


DEFAULT_SCHEDULE = MigrationSchedule()
