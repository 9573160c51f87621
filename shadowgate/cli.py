"""The ``shadowgate`` command line.

Subcommands live in their own modules and are imported only when invoked, so ``shadowgate --help``
stays fast and a broken optional dependency of one command cannot break the others. To add one, write
a click command or group and list it in ``_COMMANDS`` as ``name: "module:attribute"``.

Errors from shadowgate (:class:`governance.errors.ShadowgateError`) are printed as one line on stderr
with exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from governance.errors import ShadowgateError

__all__ = ["cli", "main"]

_COMMANDS: dict[str, str] = {
    "up": "shadowgate.commands.infra:up",
    "topics": "shadowgate.commands.infra:topics",
    "down": "shadowgate.commands.infra:down",
    "demo": "shadowgate.commands.demo:demo",
    "publish": "shadowgate.commands.publish:publish",
    "consume": "shadowgate.commands.publish:consume",
    "schemas": "shadowgate.commands.publish:schemas",
    "worker": "shadowgate.commands.streams:worker",
    "windows": "shadowgate.commands.streams:windows",
    "replay": "shadowgate.commands.streams:replay",
    "keys": "shadowgate.commands.crypto:keys",
    "sign": "shadowgate.commands.crypto:sign",
    "verify": "shadowgate.commands.crypto:verify",
    "encrypt": "shadowgate.commands.crypto:encrypt",
    "decrypt": "shadowgate.commands.crypto:decrypt",
    "crypto": "shadowgate.commands.crypto:crypto",
    "governance": "shadowgate.commands.governance:governance",
    "audit": "shadowgate.commands.governance:audit",
    "model": "shadowgate.commands.model:model",
    "config": "shadowgate.commands.config:config",
    "alerts": "shadowgate.commands.alerts:alerts",
    "serve": "shadowgate.commands.serve:serve",
    "report": "shadowgate.commands.report:report",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{_COMMANDS[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shadowgate")
def cli() -> None:
    """shadowgate: shadow-mode evaluation and model-lifecycle governance on Kafka and Redis."""


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning shadowgate errors into one line and exit code 2."""
    try:
        return cli.main(args=argv, prog_name="shadowgate", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ShadowgateError as exc:
        click.echo(f"shadowgate: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
