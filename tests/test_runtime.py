"""Process tuning of the worker and the settings table of the README."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from governance.contract.settings import Settings
from streams.worker.runtime import tune_gc

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.set_threshold(*before)


def test_tune_gc_sets_only_the_young_threshold(thresholds: tuple[int, int, int]) -> None:
    tune_gc(12_345)
    assert gc.get_threshold() == (12_345, thresholds[1], thresholds[2])
    tune_gc(0)  # 0 leaves what is set
    assert gc.get_threshold() == (12_345, thresholds[1], thresholds[2])
    with pytest.raises(ValueError, match="must be >= 0"):
        tune_gc(-1)


def test_gc_threshold_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().gc_young_threshold == 50_000
    monkeypatch.setenv("SHADOWGATE_GC_YOUNG_THRESHOLD", "0")
    assert Settings().gc_young_threshold == 0


def test_readme_lists_every_setting_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `SHADOWGATE_([A-Z0-9_<>]+)` \| ([^|]+) \|", README.read_text(), flags=re.M))
    named = set(re.findall(r"`SHADOWGATE_([A-Z0-9_]+)`", "\n".join(
        line for line in README.read_text().splitlines() if line.startswith("| `SHADOWGATE_"))))
    for name, info in Settings.model_fields.items():
        if name == "topics":
            assert "TOPICS__<NAME>" in rows
            continue
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):  # a group: SHADOWGATE_KAFKA__X, in some row
            for member in group.model_fields:
                variable = f"{name}__{member}".upper()
                assert variable in named, f"README settings table lacks SHADOWGATE_{variable}"
            continue
        assert name.upper() in rows, f"README settings table lacks SHADOWGATE_{name.upper()}"
        default = info.default
        shown = rows[name.upper()].strip().strip("`")
        if isinstance(default, bool | int | float) and not isinstance(default, bool):
            assert float(shown) == float(default), f"SHADOWGATE_{name.upper()}: README says {shown}, code {default}"
