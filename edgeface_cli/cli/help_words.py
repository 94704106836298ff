"""Plain words in --help: ``align IN OUT``, ``--out PATH``, ``plot RUN...``.

Typer 0.29 writes a required argument as ``{IN}`` in the usage line and every value as its Python type
(``<path>``, ``<list[Path]>``, ``<int range>``), which reads like a template nobody filled in. Commands keep
their Typer parameters; ``use_plain_words`` gives each the classic words instead: an argument by its name
(``[NAME]`` when optional, ``NAME...`` when it takes several), an option by its metavar or by the kind of
value (PATH, TEXT, INTEGER, NUMBER, or the choices).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

# Typer's type labels (``display_type``: ``<path>``, ``<int range>``, ``<list[Path]>``, ``<a|b>``) -> words.
TYPE_WORDS = {"path": "PATH", "file": "FILE", "dir": "DIR", "directory": "DIR", "str": "TEXT", "int": "INTEGER",
              "float": "NUMBER", "bool": "BOOLEAN"}


def _argument_name(argument: Any) -> str:
    return argument.metavar or (argument.name or "value").upper()


class PlainArgument(TyperArgument):
    def _usage_display_name(self) -> str:
        name = _argument_name(self)
        name = name if self.required else f"[{name}]"
        return f"{name}..." if self.nargs != 1 else name

    def _rich_display_name(self) -> str:
        name = _argument_name(self)
        return f"{name}..." if self.nargs != 1 else name

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the help text says what the argument is; its Python type says nothing more


def value_word(label: str) -> str:
    """The plain word for a Typer type label: ``<path>`` PATH, ``<int range>`` INTEGER, ``<list[Path]>`` PATH
    (a repeatable option takes one value each time), ``<a|b>`` [a|b]."""
    inner = label.strip().removeprefix("<").removesuffix(">")
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[len("list["):-1]
    if "|" in inner:
        return f"[{inner}]"
    kind = inner.removesuffix(" range").strip()
    return TYPE_WORDS.get(kind.lower(), kind.upper() or "VALUE")


class PlainOption(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        return value_word(self.display_type(ctx)) + ("..." if self.nargs != 1 else "")


def use_plain_words(command: Any) -> Any:
    """``command`` (and, for a group, every subcommand) with plain-word parameters; returned for chaining."""
    for param in command.params:
        if type(param) is TyperArgument:
            param.__class__ = PlainArgument  # the same object and state: only how it is shown changes
        elif type(param) is TyperOption:
            param.__class__ = PlainOption
    for sub in getattr(command, "commands", {}).values():  # a group: every subcommand too
        use_plain_words(sub)
    return command
