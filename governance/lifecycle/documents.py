"""Stage documentation of spec section 9: the documents each stage needs and the sections they must have.

A document is Markdown text recorded under a name for one stage. A required section is found by its
heading, at any level (``#`` to ``######``), case-insensitively, with spaces, hyphens and punctuation
equivalent to underscores and a leading section number ignored: ``## Business Justification``,
``# business-justification`` and ``### 2. BUSINESS JUSTIFICATION`` all satisfy ``business_justification``.
Headings inside fenced code blocks do not count. A section is *written* only when a line under it (up to
the next heading of the same or a higher level) holds something other than a placeholder
(``TODO``, ``TBD``, ``N/A``, ``...``, an HTML comment): a template with headings only does not pass,
and a document with no such line at all counts as empty.

How the spec's two tables map onto documents. Section 9.1 lists the documents of every stage; section 9.2
gives the required sections of four of them, and those sections are the 9.1 items of that stage in
structured form (the shadow "drift report" is the ``drift_analysis`` section, the production "runbook" is
``deployment_runbook``), so each of those four stages has one principal document named after its 9.2 key:

==========  ======================================  =========================================
stage       documents (name)                        required sections (9.2)
==========  ======================================  =========================================
PROPOSAL    proposal                                objective, business_justification,
                                                    technical_approach, risk_assessment,
                                                    success_criteria
PROTOTYPE   feature_analysis, baseline_metrics      --
TRAINING    training, training_config               training: training_data_description,
                                                    feature_list, hyperparameters,
                                                    validation_strategy, training_metrics
SHADOW      shadow                                  drift_analysis, statistical_tests,
                                                    integrity_violations_review, recommendation
STAGING     canary_results, performance_report      --
PRODUCTION  production                              deployment_runbook, monitoring_dashboard_link,
                                                    rollback_procedure, on_call_contacts
RETIRED     retirement_justification,               --
            migration_notes
==========  ======================================  =========================================

Stages are given by name (``"SHADOW"``; :class:`governance.lifecycle.machine.Stage` is a ``str`` enum and can
be passed directly), which keeps this module free of an import cycle with the lifecycle.

Guarantees: pure functions of their arguments; gaps are reported in table order (document, then
section), so the same input always gives the same list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from governance.errors import EventValidationError

__all__ = [
    "REQUIRED_DOCUMENTS",
    "DocumentSpec",
    "Gap",
    "check_documents",
    "find_gaps",
    "heading_key",
    "section_status",
]


@dataclass(frozen=True)
class DocumentSpec:
    """One required document: its name, the spec's words for it, and its required sections."""

    name: str
    title: str
    sections: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gap:
    """One thing missing from a stage's documentation; ``section`` is None for the whole document."""

    stage: str
    document: str
    title: str
    section: str | None
    problem: Literal["missing", "empty"]

    def message(self) -> str:
        """One line naming the stage, document and section, and saying what to add."""
        where = f"{self.stage} document {self.document!r} ({self.title})"
        if self.section is None:
            if self.problem == "missing":
                return f"{where} is missing; record it as Markdown"
            return f"{where} is empty; write its content"
        heading = "## " + self.section.replace("_", " ").title()
        if self.problem == "missing":
            return f"{where} has no section {self.section!r}; add a heading such as {heading!r}"
        return f"{where} section {self.section!r} is empty; write its content under the heading"


REQUIRED_DOCUMENTS: Mapping[str, tuple[DocumentSpec, ...]] = MappingProxyType(
    {
        "PROPOSAL": (
            DocumentSpec(
                "proposal",
                "model proposal: goals, approach, risks",
                (
                    "objective",
                    "business_justification",
                    "technical_approach",
                    "risk_assessment",
                    "success_criteria",
                ),
            ),
        ),
        "PROTOTYPE": (
            DocumentSpec("feature_analysis", "feature analysis"),
            DocumentSpec("baseline_metrics", "baseline metrics"),
        ),
        "TRAINING": (
            DocumentSpec(
                "training",
                "training report: data summary, hyperparameters",
                (
                    "training_data_description",
                    "feature_list",
                    "hyperparameters",
                    "validation_strategy",
                    "training_metrics",
                ),
            ),
            DocumentSpec("training_config", "training config"),
        ),
        "SHADOW": (
            DocumentSpec(
                "shadow",
                "shadow report: drift report, statistical significance analysis",
                ("drift_analysis", "statistical_tests", "integrity_violations_review", "recommendation"),
            ),
        ),
        "STAGING": (
            DocumentSpec("canary_results", "canary results"),
            DocumentSpec("performance_report", "performance report"),
        ),
        "PRODUCTION": (
            DocumentSpec(
                "production",
                "production report: metrics dashboard, runbook",
                ("deployment_runbook", "monitoring_dashboard_link", "rollback_procedure", "on_call_contacts"),
            ),
        ),
        "RETIRED": (
            DocumentSpec("retirement_justification", "retirement justification"),
            DocumentSpec("migration_notes", "migration notes"),
        ),
    }
)

# CommonMark ATX heading: up to 3 spaces, 1-6 '#', then a space or the end; optional closing '#'s.
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NUMBERING = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|[ivxlc]+\.)\s+", re.IGNORECASE)
_NON_WORD = re.compile(r"[^0-9a-z]+")
_PLACEHOLDER = re.compile(r"^(?:todo|tbd|tbc|fixme|n/?a|-+|\.\.\.|…)[.:!]?$", re.IGNORECASE)
_COMMENT = re.compile(r"^<!--.*-->$")


def heading_key(title: str) -> str:
    """The section key a heading title stands for: ``"2. Risk-Assessment"`` -> ``"risk_assessment"``."""
    text = _NUMBERING.sub("", title.strip().lower())
    return _NON_WORD.sub("_", text).strip("_")


def _is_content(line: str) -> bool:
    text = line.strip()
    return bool(text) and not _PLACEHOLDER.match(text) and not _COMMENT.match(text)


def _scan(markdown: str) -> tuple[list[tuple[int, int, str]], list[int], int]:
    """(headings as (line, level, key), indices of content lines, line count) of one document."""
    lines = markdown.splitlines()
    headings: list[tuple[int, int, str]] = []
    content: list[int] = []
    fence: str | None = None
    for index, line in enumerate(lines):
        opener = _FENCE.match(line)
        if fence is not None:
            # A fence closes only with the same character, at least as long as the opener.
            if opener and opener.group(1)[0] == fence[0] and len(opener.group(1)) >= len(fence):
                fence = None
            elif line.strip():
                content.append(index)
            continue
        if opener:
            fence = opener.group(1)
            continue
        match = _HEADING.match(line)
        if match:
            headings.append((index, len(match.group(1)), heading_key(match.group(2) or "")))
        elif _is_content(line):
            content.append(index)
    return headings, content, len(lines)


def section_status(markdown: str) -> Mapping[str, bool]:
    """Every heading's key mapped to whether its section is written (see the module docstring).

    A key that appears under several headings is written when any of them is.
    """
    headings, content, line_count = _scan(markdown)
    status: dict[str, bool] = {}
    for position, (start, level, key) in enumerate(headings):
        end = next((i for i, lvl, _ in headings[position + 1 :] if lvl <= level), line_count)
        written = any(start < i < end for i in content)
        if key:
            status[key] = status.get(key, False) or written
    return status


def find_gaps(stage: str, documents: Mapping[str, str]) -> list[Gap]:
    """What ``stage``'s documentation lacks: missing or empty documents, missing or empty sections.

    ``documents`` maps document name to Markdown text for that one stage; extra documents are ignored.
    Raises :class:`EventValidationError` for a stage name that is not one of the seven stages.
    """
    specs = REQUIRED_DOCUMENTS.get(str(stage))
    if specs is None:
        raise EventValidationError(
            f"stage {stage!r} has no documentation rules; use one of {sorted(REQUIRED_DOCUMENTS)}",
            field="stage",
        )
    gaps: list[Gap] = []
    for spec in specs:
        text = documents.get(spec.name)
        if text is None:
            gaps.append(Gap(str(stage), spec.name, spec.title, None, "missing"))
            continue
        if not _scan(text)[1]:
            gaps.append(Gap(str(stage), spec.name, spec.title, None, "empty"))
            continue
        status = section_status(text)
        for section in spec.sections:
            if section not in status:
                gaps.append(Gap(str(stage), spec.name, spec.title, section, "missing"))
            elif not status[section]:
                gaps.append(Gap(str(stage), spec.name, spec.title, section, "empty"))
    return gaps


def check_documents(stage: str, documents: Mapping[str, str]) -> tuple[bool, list[str]]:
    """``(complete, messages)`` for ``stage``'s documentation, one message per :class:`Gap`."""
    messages = [gap.message() for gap in find_gaps(stage, documents)]
    return not messages, messages
