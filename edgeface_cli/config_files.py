"""Reading config sources: YAML files, ``--set section.field=value`` overrides, merging them, and anchoring the
relative paths a file names at the file's folder. Torch-free, and free of the schema itself (``config`` passes
its models in), so that the schema module holds only what the settings are."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, get_args

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml_file(path: Path) -> dict[str, Any]:
    """Read a config file with the safe loader; every failure is a ConfigError."""
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = exc.problem or exc.context or "not valid YAML"
        raise ConfigError(f"cannot read config file {path}: {what}{where}") from None
    except Exception as exc:  # noqa: BLE001 - YAMLError, bad encodings, impossible dates ("2026-13-45"), ...
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot read config file {path}: {first_line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def parse_set_override(text: str) -> tuple[list[str], Any]:
    """``optim.head_lr=5e-5`` -> (["optim", "head_lr"], 5e-5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.field=value")
    dotted, raw_value = text.split("=", 1)
    path = [part for part in dotted.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set {text!r}: missing the field name before '='")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    # YAML reads 1e-4 (no dot) as a string; users mean a number.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return path, value


def nest(path: list[str], value: Any) -> dict[str, Any]:
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return nested


def leaf_paths(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Every dotted name a nested mapping sets (``{"optim": {"epochs": 3}}`` -> ["optim.epochs"])."""
    paths: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        paths += leaf_paths(value, dotted + ".") if isinstance(value, dict) else [dotted]
    return paths


def source_of(sources: dict[str, str], field: str) -> str | None:
    """Who set ``field`` (or, for a section-level problem, a field inside it): the highest-precedence source."""
    if field in sources:
        return sources[field]
    inside = [source for dotted, source in sources.items() if dotted.startswith(field + ".")]
    return inside[-1] if inside else None


def model_setting_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted setting name of a (nested) pydantic model (``optim.head_lr``, ...)."""
    names: list[str] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += model_setting_names(annotation, f"{prefix}{name}.")
        else:
            names.append(f"{prefix}{name}")
    return names


def format_validation_error(error: ValidationError, sources: dict[str, str] | None = None,
                            known_names: Iterable[str] = ()) -> str:
    """One line per problem, each naming the field and, when known, where its value came from."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "config"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(field, list(known_names), n=1, cutoff=0.6)
            message = (f"unknown setting; did you mean {close[0]}?" if close
                       else "unknown setting (see `edgeface config show` for the valid ones)")
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        given = problem.get("input")
        if problem["type"] != "extra_forbidden" and not isinstance(given, (dict, list)) and given is not None:
            message += f" (got {given!r})"
        source = source_of(sources or {}, field)
        lines.append(f"{field}: {message}" + (f"; set by {source}" if source else ""))
    return "\n".join(lines)


def model_path_fields(model: type[BaseModel]) -> list[tuple[str, str, bool]]:
    """(section, field, is a list) of every Path setting in the sections of ``model``."""
    found = []
    for section_name, section_field in model.model_fields.items():
        section = section_field.annotation
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue
        for name, info in section.model_fields.items():
            annotation = info.annotation
            if annotation == list[Path]:
                found.append((section_name, name, True))
            elif annotation is Path or Path in get_args(annotation):
                found.append((section_name, name, False))
    return found


def paths_relative_to(data: dict[str, Any], folder: Path, fields: list[tuple[str, str, bool]]) -> dict[str, Any]:
    """``data`` (a config file's mapping) with its relative path settings (``fields``) anchored at ``folder``;
    values of the wrong type are left for validation to report."""
    anchored = copy.deepcopy(data)

    def anchor(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else os.path.normpath(folder / path))  # no ../ left in config.yaml

    for section, name, is_list in fields:
        values = anchored.get(section)
        if not isinstance(values, dict) or values.get(name) is None:
            continue
        values[name] = [anchor(item) for item in values[name]] if is_list and isinstance(values[name], list) \
            else anchor(values[name])
    return anchored


def commented_yaml(defaults: BaseModel, header: list[str]) -> str:
    """``defaults`` as YAML with each field's description as a comment above it."""
    lines = list(header)
    for section_name, section_field in type(defaults).model_fields.items():
        value = getattr(defaults, section_name)
        if not isinstance(value, BaseModel):
            lines.append(f"# {section_field.description}")
            lines.append(yaml.safe_dump({section_name: value}, sort_keys=False).rstrip())
            continue
        lines.append(f"{section_name}:")
        for field_name, field in type(value).model_fields.items():
            field_value = value.model_dump(mode="json")[field_name]
            lines.append(f"  # {field.description}")
            rendered = yaml.safe_dump({field_name: field_value}, default_flow_style=True, sort_keys=False).strip()
            lines.append("  " + rendered.strip("{}"))
        lines.append("")
    return "\n".join(lines) + "\n"


def annotated_yaml(data: dict[str, Any], sources: dict[str, str]) -> str:
    """``data`` (sections of settings) as YAML, each setting named in ``sources`` followed by ``# <source>``."""
    lines = []
    for section, values in data.items():
        if not isinstance(values, dict):
            lines.append(_line(section, values, sources.get(section), ""))
            continue
        lines.append(f"{section}:")
        lines += [_line(name, value, sources.get(f"{section}.{name}"), "  ") for name, value in values.items()]
    return "\n".join(lines) + "\n"


def _line(name: str, value: Any, source: str | None, indent: str) -> str:
    rendered = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False, width=10**6).strip()[1:-1]
    return f"{indent}{rendered}" + (f"  # {source}" if source else "")
