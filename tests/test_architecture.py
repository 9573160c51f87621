"""The layers of docs/architecture.md hold: import directions (import-linter) and what a worker process loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_import_directions_hold() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")  # import-linter's script, beside this Python
    done = subprocess.run(  # noqa: S603 - import-linter, with the contracts of pyproject.toml
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _loaded_by(*modules: str) -> list[str]:
    """The shadowgate modules a fresh interpreter has loaded after importing ``modules``."""
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('governance', 'streams', 'shadowgate'))))"
    )
    done = subprocess.run(  # noqa: S603 - our own modules
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(done.stdout))


def test_the_worker_process_loads_none_of_the_lifecycle() -> None:
    loaded = _loaded_by("shadowgate.cli", "shadowgate.commands.streams", "streams.worker.app", "streams.worker.replay")
    assert "streams.worker.app" in loaded and "governance.policy.evaluator" in loaded  # the probe probes
    assert [m for m in loaded if m.startswith(("governance.lifecycle", "governance.service"))] == []


def test_the_governance_consumer_loads_no_streams_code() -> None:
    loaded = _loaded_by("governance.service.consumer")
    assert "governance.service.consumer" in loaded
    assert [m for m in loaded if m.startswith(("streams", "shadowgate"))] == []
