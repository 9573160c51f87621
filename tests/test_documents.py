"""Stage documentation (spec 9): required documents per stage, required sections found as Markdown headings."""

from __future__ import annotations

import pytest

from governance.contract.stages import Stage
from governance.errors import EventValidationError
from governance.lifecycle.documents import REQUIRED_DOCUMENTS, check_documents, find_gaps, heading_key, section_status
from tests.lifecycle_samples import HEADINGS, SPEC_SECTIONS, complete_documents, markdown

# Spec 9.1 items per stage; each must be covered by a required document or a required section.
SPEC_91 = {
    "PROPOSAL": ["objective", "technical_approach", "risk_assessment"],  # goals, approach, risks
    "PROTOTYPE": ["feature_analysis", "baseline_metrics"],
    "TRAINING": ["training_config", "hyperparameters", "training_data_description"],  # data summary
    "SHADOW": ["drift_analysis", "statistical_tests"],  # drift report, statistical significance analysis
    "STAGING": ["canary_results", "performance_report"],
    "PRODUCTION": ["monitoring_dashboard_link", "deployment_runbook"],  # metrics dashboard, runbook
    "RETIRED": ["retirement_justification", "migration_notes"],
}
PRINCIPAL = {"PROPOSAL": "proposal", "TRAINING": "training", "SHADOW": "shadow", "PRODUCTION": "production"}


def test_every_stage_has_rules_and_covers_spec_9_1() -> None:
    assert set(REQUIRED_DOCUMENTS) == {s.value for s in Stage}
    for stage, items in SPEC_91.items():
        covered = {spec.name for spec in REQUIRED_DOCUMENTS[stage]}
        covered |= {section for spec in REQUIRED_DOCUMENTS[stage] for section in spec.sections}
        assert set(items) <= covered, stage


@pytest.mark.parametrize("stage", list(PRINCIPAL))
def test_required_sections_are_spec_9_2(stage: str) -> None:
    spec = next(d for d in REQUIRED_DOCUMENTS[stage] if d.name == PRINCIPAL[stage])
    assert list(spec.sections) == SPEC_SECTIONS[PRINCIPAL[stage]]


@pytest.mark.parametrize("stage", [s.value for s in Stage])
def test_complete_documentation_passes(stage: str) -> None:
    assert check_documents(stage, complete_documents()[stage]) == (True, [])


@pytest.mark.parametrize(
    ("stage", "section"),
    [(stage, section) for stage, name in PRINCIPAL.items() for section in SPEC_SECTIONS[name]],
)
def test_each_missing_section_is_named(stage: str, section: str) -> None:
    documents = complete_documents()[stage]
    documents[PRINCIPAL[stage]] = markdown("Doc", SPEC_SECTIONS[PRINCIPAL[stage]], skip=section)
    ok, messages = check_documents(stage, documents)
    assert not ok and len(messages) == 1
    assert messages[0] == (
        f"{stage} document {PRINCIPAL[stage]!r} ({messages[0].split('(')[1].split(')')[0]}) has no section "
        f"{section!r}; add a heading such as '## {section.replace('_', ' ').title()}'"
    )
    (gap,) = find_gaps(stage, documents)
    assert (gap.stage, gap.document, gap.section, gap.problem) == (stage, PRINCIPAL[stage], section, "missing")


@pytest.mark.parametrize("stage", [s.value for s in Stage])
def test_each_missing_document_is_named(stage: str) -> None:
    documents = complete_documents()[stage]
    for name in list(documents):
        partial = {k: v for k, v in documents.items() if k != name}
        gaps = find_gaps(stage, partial)
        assert [(g.document, g.section, g.problem) for g in gaps] == [(name, None, "missing")]
        assert f"document {name!r}" in gaps[0].message() and "is missing" in gaps[0].message()


def test_nothing_at_all_lists_every_document() -> None:
    assert [g.document for g in find_gaps("STAGING", {})] == ["canary_results", "performance_report"]
    assert [g.document for g in find_gaps(Stage.RETIRED, {})] == ["retirement_justification", "migration_notes"]


@pytest.mark.parametrize(
    "heading",
    [
        "## Objective",
        "# OBJECTIVE",
        "###### objective",
        "## Objective ##",
        "  ## 1. Objective",
        "## objective:",
        "## `Objective`",
        "### IV. Objective",
    ],
)
def test_headings_match_case_insensitively(heading: str) -> None:
    assert section_status(f"{heading}\n\nReduce fraud losses by 20 %.\n") == {"objective": True}


@pytest.mark.parametrize(
    ("title", "key"),
    [
        ("Business Justification", "business_justification"),
        ("Business-Justification", "business_justification"),
        ("business_justification", "business_justification"),
        ("  On-Call   Contacts ", "on_call_contacts"),
        ("2.1 Risk Assessment", "risk_assessment"),
    ],
)
def test_heading_key(title: str, key: str) -> None:
    assert heading_key(title) == key


def test_not_headings() -> None:
    text = "#Objective\n\ntext\n\n```markdown\n## Risk Assessment\nrisky\n```\n    ## Indented code\n"
    assert section_status(text) == {}


def test_fence_closes_only_with_its_own_marker() -> None:
    text = "~~~\n```\n## Hidden\n~~~\n## Shown\n\nbody\n"
    assert section_status(text) == {"shown": True}


def test_empty_and_placeholder_sections() -> None:
    text = "\n".join(
        [
            "# Proposal",
            "## Objective",
            "## Business Justification",
            "TODO",
            "## Technical Approach",
            "<!-- write me -->",
            "## Risk Assessment",
            "### Model risk",
            "Drift in merchant mix.",
            "## Success Criteria",
            "TBD.",
        ]
    )
    status = section_status(text)
    assert status == {
        "proposal": True,
        "objective": False,
        "business_justification": False,
        "technical_approach": False,
        "risk_assessment": True,  # written in its subsection
        "model_risk": True,
        "success_criteria": False,
    }
    gaps = find_gaps("PROPOSAL", {"proposal": text})
    assert [(g.section, g.problem) for g in gaps] == [
        ("objective", "empty"),
        ("business_justification", "empty"),
        ("technical_approach", "empty"),
        ("success_criteria", "empty"),
    ]
    assert "section 'objective' is empty" in gaps[0].message()


@pytest.mark.parametrize("text", ["", "   \n\n", "# Feature analysis\n\n## Details\n", "TODO\n"])
def test_empty_documents(text: str) -> None:
    gaps = find_gaps("PROTOTYPE", {"feature_analysis": text, "baseline_metrics": "AUC 0.8"})
    assert [(g.document, g.section, g.problem) for g in gaps] == [("feature_analysis", None, "empty")]
    assert gaps[0].message().endswith("is empty; write its content")


def test_extra_documents_are_ignored() -> None:
    documents = complete_documents()["SHADOW"] | {"notes": ""}
    assert check_documents("SHADOW", documents) == (True, [])


def test_unknown_stage() -> None:
    with pytest.raises(EventValidationError, match="'CANARY'"):
        find_gaps("CANARY", {})


def test_samples_use_spec_headings() -> None:
    # Guard for the samples themselves: every heading they write maps back to its section key.
    assert all(heading_key(title) == key for key, title in HEADINGS.items())
