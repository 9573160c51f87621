"""The ``shadowgate`` console script: the command line, or one line naming the extra a light install lacks.

``pip install shadowgate`` is the publisher SDK alone (confluent-kafka, pydantic, pydantic-settings, orjson). The
command line and the processes come with extras: ``shadowgate[governance]`` (the CLI, the governance consumer, the alert
forwarder, ``serve``, ``report``), ``shadowgate[worker]`` (also the Faust worker and replay), ``shadowgate[all]``.
A command whose dependency is missing says which extra brings it instead of printing a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["EXTRA_OF", "main"]

#: Third-party packages of the extras (import name -> the smallest extra that installs it).
EXTRA_OF: dict[str, str] = {
    "pqcrypto": "routing",
    "cryptography": "routing",
    "rfc8785": "routing",
    "numpy": "routing",
    "scipy": "governance",
    "redis": "governance",
    "hiredis": "governance",
    "pydantic_settings": "governance",
    "prometheus_client": "governance",
    "yaml": "routing",
    "click": "governance",
    "rich": "governance",
    "aiohttp": "governance",
    "matplotlib": "governance",
    "faust": "worker",
    "mode": "worker",
    "cramjam": "worker",
    "msgspec": "worker",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module ``exc`` names, or None when it is not one of the extras' packages."""
    root = (exc.name or "").partition(".")[0]
    return EXTRA_OF.get(root)


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; a missing optional dependency exits 2 with the ``pip install`` line that brings it."""
    try:
        from shadowgate.cli import main as run

        return run(argv)
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(
            f"shadowgate: error: this needs the Python package {exc.name!r}, which the light SDK install leaves "
            f"out: pip install 'shadowgate[{extra}]' (or 'shadowgate[all]')",
            file=sys.stderr,
        )
        sys.exit(2)
