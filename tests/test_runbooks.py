"""Runbooks exist for everything that can page, and tell on-call to run only commands that exist.

Slugs come from: the shipped policies (rollback triggers, the stale-source alert), the production checks the
evaluator alerts on (``production-<check>``), the literal ``runbook=`` arguments in the code (the governance
consumer's alerts), the alert forwarder's own notices, and the ``runbook_url`` of every Prometheus rule.
"""

from __future__ import annotations

import ast
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
import yaml

from governance.policy.document import load_policy
from governance.policy.production import evaluate_production
from governance.service.alerting.notices import RUNBOOKS as FORWARDER_RUNBOOKS
from shadowgate.cli import cli
from tests.governance_factory import snapshot

REPO = Path(__file__).resolve().parent.parent
RUNBOOK_DIR = REPO / "docs" / "runbooks"
POLICIES = [None, REPO / "deploy" / "demo-policy.yaml"]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def _policy_slugs() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in POLICIES:
        policy = load_policy(path)
        where = str(path or "default policy")
        for name in type(policy.triggers).model_fields:
            trigger = getattr(policy.triggers, name)
            if hasattr(trigger, "runbook"):
                out[trigger.runbook] = f"{where}: triggers.{name}"
        out[policy.source.runbook] = f"{where}: source"
        # The evaluator alerts as production-<check> on a production check turning WARN or FAIL, except
        # source_fresh (the SOURCE_UNHEALTHY trigger's alert says it) and RECALIBRATE checks (an event instead),
        # whose enforcement a policy may change: every check but source_fresh can alert.
        result = evaluate_production(policy, snapshot(), [], None, datetime(2026, 11, 2, tzinfo=UTC))
        for check in result.checks:
            if check.name != "source_fresh":
                out[f"production-{check.name}"] = f"{where}: production.{check.name}"
    return out


def _literal_slugs() -> dict[str, str]:
    """``runbook="..."`` keyword arguments with a literal value anywhere in the packages."""
    out: dict[str, str] = {}
    for package in ("governance", "streams", "shadowgate"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.keyword) and node.arg == "runbook" and isinstance(node.value, ast.Constant):
                    out[str(node.value.value)] = f"{path.relative_to(REPO)}:{node.value.lineno}"
    return out


def _rules() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_every_slug_the_code_or_a_policy_can_emit_has_a_runbook() -> None:
    slugs = {**_policy_slugs(), **_literal_slugs(),
             **{slug: f"forwarder: {kind}" for kind, slug in FORWARDER_RUNBOOKS.items()}}
    assert {"review-score-shift", "page-on-call", "rollback-procedure", "governance-rejected-input",
            "source-unhealthy", "production-staleness_limit_days"} <= set(slugs)
    missing = {slug: where for slug, where in slugs.items() if not (RUNBOOK_DIR / f"{slug}.md").is_file()}
    assert not missing, f"no docs/runbooks/<slug>.md for {missing}"


def test_every_rule_has_a_runbook_that_exists() -> None:
    for rule in _rules():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        url = str(annotations.get("runbook_url", ""))
        assert re.fullmatch(r"docs/runbooks/[a-z0-9_-]+\.md", url), f"{rule['alert']}: runbook_url {url!r}"
        assert (REPO / url).is_file(), f"{rule['alert']}: {url} does not exist"


def test_every_runbook_is_in_the_index_with_its_title_slug() -> None:
    index = (RUNBOOK_DIR / "README.md").read_text()
    for page in sorted(RUNBOOK_DIR.glob("*.md")):
        if page.name == "README.md":
            continue
        assert f"]({page.name})" in index, f"{page.name} is not listed in docs/runbooks/README.md"
        title = page.read_text().splitlines()[0]
        assert title.startswith(f"# {page.stem}: "), f"{page.name}: the title must start with '# {page.stem}: '"
        assert "**Raised by:**" in page.read_text(), f"{page.name} does not say what raises it"


def _commands(text: str) -> list[str]:
    """Every ``shadowgate ...`` invocation in code spans and in the lines of fenced code blocks."""
    found = [span for span in CODE_SPAN.findall(text) if span.startswith("shadowgate ")]
    in_block = False
    lines = iter(text.splitlines())
    for line in lines:
        if line.strip().startswith("```"):
            in_block = not in_block
        elif in_block and line.strip().startswith("shadowgate "):
            command = line.split("  #")[0].strip()
            while command.endswith("\\"):  # a shell line continued on the next
                command = command[:-1] + " " + next(lines, "").split("  #")[0].strip()
            found.append(command)
    return found


def _check_command(command: str) -> str | None:
    """None when ``command`` names an existing (sub)command with existing options, else why not."""
    tokens = shlex.split(command)[1:]
    current: click.Command = cli
    path = ["shadowgate"]
    ctx = click.Context(cli)
    while isinstance(current, click.Group) and tokens and not tokens[0].startswith("-"):
        name = tokens.pop(0)
        if name == "...":  # prose: "shadowgate model ..." names the group
            return None
        if "|" in name:  # prose: "shadowgate up|down" names both
            return next((why for alt in name.split("|")
                         if (why := _check_command(" ".join(["shadowgate", *path[1:], alt, *tokens])))), None)
        sub = current.get_command(ctx, name)
        if sub is None:
            return f"{' '.join(path)} has no command {name!r} (it has {', '.join(current.list_commands(ctx))})"
        current, path = sub, [*path, name]
    if isinstance(current, click.Group) and not set(tokens) <= {"-h", "--help", "--version"}:
        return f"{' '.join(path)} needs a subcommand ({', '.join(current.list_commands(ctx))})"
    if isinstance(current, click.Group):
        return None
    known = {opt for param in current.params for opt in (*param.opts, *param.secondary_opts)} | {"-h", "--help"}
    for token in tokens:
        option = token.split("=", 1)[0]
        if option.startswith("-") and option not in known:
            return f"{' '.join(path)} has no option {option} (it has {', '.join(sorted(known))})"
    return None


def test_the_command_checker_catches_what_the_old_rule_said() -> None:
    assert _check_command("shadowgate audit show") is not None
    assert _check_command("shadowgate model status --from-log fraud") is None
    assert _check_command("shadowgate model rollback m v --reasn x") is not None
    assert _check_command("shadowgate consume scores --latest") is None
    continued = "```sh\nshadowgate model register m 1.0.0 \\\n  --metadat x.yaml\n```"
    assert [_check_command(c) is not None for c in _commands(continued)] == [True]


@pytest.mark.parametrize("path", [*sorted(RUNBOOK_DIR.glob("*.md")), RULES, REPO / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_shadowgate_command_on_call_is_told_to_run_exists(path: Path) -> None:
    text = path.read_text()
    if path == RULES:
        text = "\n".join(str(rule["annotations"]) for rule in _rules())  # type: ignore[index]
    problems = [f"`{c}`: {why}" for c in _commands(text) if (why := _check_command(c)) is not None]
    assert not problems, "\n".join(problems)
