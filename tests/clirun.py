"""Running a command in-process, as the tests of several stages do."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from edgeface_cli.cli import app

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def invoke_json(*args: str) -> dict:
    """The command with --json, which must succeed: its one JSON object."""
    code, output = invoke(*args, "--json")
    assert code == 0, output
    return json.loads(output[output.index("{"):output.rindex("}") + 1])
