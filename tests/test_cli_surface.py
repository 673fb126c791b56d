"""The command line's surface is a contract: every command, its help line and each option
(spelling, default, help, environment variable) stay as recorded in cli_surface.jsonl
(one line per command and per parameter, so a change reads as a one-line diff).

After an intended change, regenerate the record with ``python -m tests.test_cli_surface``
and review the diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from saedb.cli import app

RECORD = Path(__file__).with_name("cli_surface.jsonl")


def parameter(param: Any) -> dict[str, Any]:
    default = param.default
    return {
        "name": param.name, "kind": type(param).__name__, "options": [*param.opts, *param.secondary_opts],
        "type": str(param.type_descriptor.annotation), "required": param.required, "multiple": param.multiple,
        "range": [param.min, param.max], "flag": getattr(param, "is_flag", False),
        "default": None if default is None or callable(default) else str(default),
        "help": getattr(param, "help", None), "envvar": param.envvar,
        "prompt": getattr(param, "prompt", None), "hide_input": getattr(param, "hide_input", False),
    }


def surface() -> list[str]:
    """The group's help, then per command (by name) its help and each of its parameters."""
    group = typer.main.get_command(app)
    lines = [{"saedb": group.help}]
    for name, command in sorted(group.commands.items()):  # type: ignore[attr-defined]
        lines.append({"command": name, "help": command.help})
        lines.extend({"command": name, **parameter(p)} for p in command.params)
    return [json.dumps(line, ensure_ascii=False) for line in lines]


def test_every_command_and_option_is_as_recorded() -> None:
    assert surface() == RECORD.read_text().splitlines()


def test_saedb_help_lists_every_command() -> None:
    shown = CliRunner().invoke(app, ["--help"], terminal_width=200)
    recorded = [json.loads(line) for line in RECORD.read_text().splitlines()]
    commands = [line["command"] for line in recorded if "help" in line and "name" not in line and "command" in line]
    assert shown.exit_code == 0 and len(commands) == 28
    assert all(f" {name} " in shown.output for name in commands)


if __name__ == "__main__":
    RECORD.write_text("\n".join(surface()) + "\n")
    print(f"wrote {RECORD}")
