"""Driving the status page in a real browser: the system's Chromium through Playwright, and `shadowgate serve`.

Chromium comes from Debian (`chromium`, installed by `.ci/run`); Playwright never downloads a browser here. A
missing browser fails the test (never a skip). Screenshots go to ``.local/artifacts/screenshots/`` (kept by CI);
``tests/conftest.py`` lists the ones a run wrote.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("SHADOWGATE_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / ".local" / "artifacts" / "screenshots"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's), closed afterwards; the test fails when there is none."""
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (.ci/run does); a missing browser is a "
                    "failure, never a skip")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class LineReader:
    """Lines of a child's pipe as they come, without Python's buffering hiding them from ``select``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd = proc, proc.stdout.fileno()
        self.buffer, self.lines = b"", []  # type: tuple[bytes, list[str]]

    def until(self, wanted: str, timeout_s: float) -> str:
        """The first line that starts with ``wanted`` (AssertionError with the output so far if none comes)."""
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\n" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                self.lines.append(line)
                if line.startswith(wanted):
                    return line
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no line starting {wanted!r} within {timeout_s:.0f} s (exit "
                                     f"{self.proc.returncode}):\n" + "\n".join(self.lines)[-6000:])
            if select.select([self.fd], [], [], 0.5)[0]:
                self.buffer += os.read(self.fd, 65536)


@contextmanager
def serving(env: dict[str, str], log: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """``shadowgate serve --port 0`` as a process; yields its base URL; SIGTERM (then SIGKILL) afterwards."""
    with log.open("wb") as err:
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "shadowgate", "serve", "--port", "0"], env=env, cwd=str(REPO),
            stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    try:
        try:
            line = LineReader(proc).until("status page: ", timeout_s)
        except AssertionError as exc:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"shadowgate serve did not start: {exc}\n{tail}") from None
        yield line.split("status page: ", 1)[1].split()[0].rstrip("/")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
