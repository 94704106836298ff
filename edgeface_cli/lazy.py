"""A package's public names, imported on first use (PEP 562), so that importing one light module of a package
(the torch-free troubleshoot ladder, say) never loads its heavy siblings. Torch-free."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, ``__getattr__``) for ``package``; ``exports`` maps each name to its module (relative)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name], package), name)

    return sorted(exports), __getattr__
