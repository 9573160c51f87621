"""``shadowgate config show``: the effective configuration, secrets masked, and where each value came from."""

from __future__ import annotations

import os

import click
import orjson

__all__ = ["config"]


@click.group()
def config() -> None:
    """Inspect shadowgate's configuration (SHADOWGATE_* environment variables)."""


def _flatten(doc: dict[str, object], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in doc.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}__"))
        else:
            out[name] = value
    return out


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {variable: {value, source, meaning}}.")
def show(as_json: bool) -> None:
    """Print every setting's effective value (secrets masked), its source (env or default) and meaning.

    Refuses to run, naming the nearest valid name, when a SHADOWGATE_* variable is not a setting.
    """
    from governance.contract.settings import PROCESS_VARIABLES, describe, known_variables, load_settings

    settings = load_settings()
    meaning = known_variables()
    rows: dict[str, dict[str, object]] = {}
    for key, value in _flatten(describe(settings)).items():
        variable = f"SHADOWGATE_{key}"
        source = "env" if variable in {k.upper() for k in os.environ} else "default"
        rows[variable] = {"value": value, "source": source, "meaning": meaning.get(variable, "")}
    for variable, what in PROCESS_VARIABLES.items():
        if variable in os.environ:
            rows[variable] = {"value": os.environ[variable], "source": "env", "meaning": what}
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    width = max(len(v) for v in rows)
    for variable, row in rows.items():
        value = "(unset)" if row["value"] is None else row["value"]
        click.echo(f"{variable:<{width}}  {value!s:<28} {row['source']:<7}  {row['meaning']}")
