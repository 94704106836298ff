"""`edgeface config show|init`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import FLAG_NAMES, ConfigOpt, SetOpt, config_app, console, print_json, user_errors


@config_app.command("show")
@user_errors
def config_show(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML (with a \"sources\" map)."),
) -> None:
    """Print the resolved configuration (defaults < recipe < file < --set), each value that is not a default
    followed by where it came from (the file, --set, the recipe)."""
    from ..config import build_config_with_sources, yaml_with_sources

    resolved, sources = build_config_with_sources(config, {}, set_ or [], flag_names=FLAG_NAMES)
    if as_json:
        from ..atomic import finite_or_none

        # YAML has .inf and .nan, strict JSON has neither: such a value is null here, its field named.
        shown, nonfinite = finite_or_none(resolved.to_yaml_dict())
        shown = {**shown, "sources": sources}
        print_json(shown if not nonfinite else {**shown, "nonfinite": [path[2:] for path in nonfinite]})
    else:
        typer.echo(yaml_with_sources(resolved, sources), nl=False)


@config_app.command("init")
@user_errors
def config_init(
    file: Path = typer.Argument(..., metavar="FILE", help="Where to write the commented default config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write a commented default config file."""
    from ..atomic import atomic_write_text, created_folder_note, missing_folder, output_file
    from ..config import commented_default_yaml

    output_file(file, force=force)
    new_folder = missing_folder(file)
    atomic_write_text(file, commented_default_yaml())
    console.print(f"wrote {file}")
    if new_folder is not None:
        console.print(created_folder_note(new_folder) or "")
