"""Named presets of settings (``recipe: edgeface-paper``), and the settings' old names.

A recipe fills each setting it names that the config's sources (file, flags, --set) leave unset: the user's
own values always win. Torch-free; it works on the raw mapping before validation, so the values a recipe
gives are checked like any other.
"""

from __future__ import annotations

import copy
from typing import Any

# The EdgeFace paper's training recipe (George et al., "EdgeFace: Efficient Face Recognition Model for Edge
# Devices", 2024): CosFace m=0.4 s=64, Partial FC at 0.3, AdamW with weight decay 0.05, and its degradations.
RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    "edgeface-paper": {
        "loss.kind": "cosface",
        "arcface.scale": 64.0,
        "arcface.margin": 0.4,
        "loss.partial_fc_sample_rate": 0.3,
        "optim.optimizer": "adamw",
        "optim.weight_decay": 0.05,
        "augment.downscale_p": 0.1,
        "augment.downscale_min": 56,
        "augment.downscale_max": 89,
        "augment.blur_p": 0.2,
        "augment.hsv_p": 0.2,
        "augment.grayscale_p": 0.1,
        "data.hflip": True,
    },
}
RECIPE_NAMES = tuple(RECIPES)
RECIPE_SUMMARIES = {
    "edgeface-paper": "CosFace s=64 m=0.4, Partial FC 0.3, AdamW wd 0.05, downscale p 0.1, blur p 0.2, HSV p 0.2, "
                      "grayscale p 0.1, flip",
}

# Settings that moved: old dotted name -> new one.
ALIASES = {"arcface.kind": "loss.kind"}


def _lookup(data: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    """(whether ``data`` sets ``dotted``, its value)."""
    section, name = dotted.split(".")
    values = data.get(section)
    if isinstance(values, dict) and name in values:
        return True, values[name]
    return False, None


def moved_aliases(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with each old name's value under its new name; both given and different is an error."""
    moved = data
    for old, new in ALIASES.items():
        has_old, old_value = _lookup(data, old)
        if not has_old:
            continue
        has_new, new_value = _lookup(data, new)
        if has_new and new_value != old_value:
            raise ValueError(f"{old} ({old_value}) and {new} ({new_value}) disagree: {old} is the old name of {new}; "
                             f"set {new} only")
        moved = copy.deepcopy(moved) if moved is data else moved
        old_section, old_name = old.split(".")
        new_section, new_name = new.split(".")
        moved[old_section].pop(old_name)
        if not isinstance(moved.get(new_section), dict):
            moved[new_section] = {}
        moved[new_section][new_name] = old_value
    return moved


def recipe_values(name: Any) -> dict[str, Any]:
    """The dotted settings recipe ``name`` gives (none for an unknown name: validation reports it)."""
    return RECIPES.get(name, {}) if isinstance(name, str) else {}


def with_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its recipe's values filled in wherever ``data`` sets nothing."""
    values = recipe_values(data.get("recipe"))
    if not values:
        return data
    filled = copy.deepcopy(data)
    for dotted, value in values.items():
        if _lookup(filled, dotted)[0]:
            continue
        section, name = dotted.split(".")
        if not isinstance(filled.get(section), dict):
            if section in filled:  # a section that is not a mapping: validation says so
                continue
            filled[section] = {}
        filled[section][name] = value
    return filled


def provenance(sources: dict[str, str], recipe: str) -> dict[str, str]:
    """Who set each dotted setting: the config's sources (old names under their new ones), then the recipe."""
    named = {ALIASES.get(dotted, dotted): source for dotted, source in sources.items()}
    for dotted in recipe_values(recipe):
        named.setdefault(dotted, f"recipe {recipe}")
    return named
