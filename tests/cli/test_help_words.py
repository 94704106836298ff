"""--help in plain words: no ``{IN}``, no ``<list[Path]>`` or ``<path>``, for every command."""

from __future__ import annotations

import re

import typer.main

from edgeface_cli.cli import app
from edgeface_cli.cli.help_words import use_plain_words, value_word

# Typer's own labels: a required argument in braces, a value by its Python type in angle brackets.
# (``<file>.json`` in export's text is a name pattern, not a label: a label is followed by a space or the end.)
ODD = re.compile(r"\{[A-Za-z_]+\}|<(?:list\[\w+\]|path|str|int|float|bool|file|dir|int range|float range)>(?![.\w])")


def _every_help() -> dict[str, str]:
    root = use_plain_words(typer.main.get_command(app))
    helps: dict[str, str] = {}

    def collect(command: object, name: str) -> None:
        context = command.context_class(command, info_name=name, terminal_width=100)  # type: ignore[attr-defined]
        helps[name] = command.get_help(context)  # type: ignore[attr-defined]
        for sub_name, sub in getattr(command, "commands", {}).items():
            collect(sub, f"{name} {sub_name}")

    collect(root, "edgeface")
    return helps


def test_every_command_help_is_in_plain_words() -> None:
    helps = _every_help()
    assert {"edgeface align", "edgeface plot", "edgeface config init", "edgeface enroll"} <= set(helps)
    odd = {name: ODD.findall(text) for name, text in helps.items() if ODD.search(text)}
    assert not odd, odd
    assert "Usage: edgeface align [OPTIONS] IN OUT" in helps["edgeface align"]
    assert "Usage: edgeface plot [OPTIONS] [RUN]..." in helps["edgeface plot"]  # optional with --augment
    assert "Usage: edgeface enroll [OPTIONS] [GALLERY_DIR]" in helps["edgeface enroll"]
    assert re.search(r"--val-bin PATH\s", helps["edgeface train"])
    assert re.search(r"--epochs INTEGER\s", helps["edgeface train"])
    assert re.search(r"--set KEY=VALUE\s", helps["edgeface train"])  # a metavar given stays as given


def test_value_words() -> None:
    assert [value_word(label) for label in ("<path>", "<list[Path]>", "<str>", "<int range>", "<float range>",
                                            "<list[str]>", "<png|jpg>")] == \
        ["PATH", "PATH", "TEXT", "INTEGER", "NUMBER", "TEXT", "[png|jpg]"]
