"""The package reads like the pipeline: layered stages, small modules and classes, a wheel that holds it all."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeface_cli"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def test_imports_follow_the_pipeline_layers_and_the_top_level_stays_torch_free() -> None:
    """pyproject's import-linter contracts: no stage imports a later one; config, preflight & co. need no torch."""
    done = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; "
                           "raise SystemExit(lint_imports(config_filename='pyproject.toml'))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_modules_and_classes_fit_in_one_read() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path.relative_to(ROOT)}: class {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long


def test_every_stage_package_says_what_lives_there() -> None:
    for stage in ("model", "data", "training", "evaluation", "deploy", "serve", "cli", "data/alignment"):
        docstring = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert docstring and "import" in docstring, stage  # what it holds and what it may import


def test_the_wheel_holds_every_subpackage_the_weights_and_py_typed(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "Could not find a version that satisfies the requirement setuptools" in done.stderr:
        pytest.skip("no package index reachable to fetch the build backend")
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("edgeface_cli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {path.parent.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names
    for data in ("edgeface_cli/py.typed", "edgeface_cli/data/alignment/weights/pnet.npz",
                 "edgeface_cli/data/alignment/weights/rnet.npz", "edgeface_cli/data/alignment/weights/onet.npz",
                 "edgeface_cli/data/alignment/weights/NOTICE"):
        assert data in names
    assert not [name for name in names if name.startswith("tests/") or "__pycache__" in name]
    metadata = next(name for name in names if name.endswith("METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if line.startswith("Requires-Dist: torch")]
    assert requires and not any("<" in line for line in requires)  # never an upper cap on torch
