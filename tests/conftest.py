"""Shared fixtures: zoo checkpoints in the published layout and a tiny generated dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgeface_cli.model.backbones import ZOO, EdgeFace

from .built_once import built_once, private_copy

SEED_KEYS = [
    "model.stages.2.blocks.5.pos_embd.token_projection.weight",
    "model.stages.2.blocks.5.pos_embd.token_projection.bias",
    "model.stages.3.blocks.1.pos_embd.token_projection.weight",
    "model.stages.3.blocks.1.pos_embd.token_projection.bias",
]


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Decoded-image caches go to a temporary folder, never the user's ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("xdg-cache")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def zoo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint per zoo variant, saved as a plain state_dict in the published layout."""
    folder = tmp_path_factory.mktemp("zoo")
    paths = {}
    torch.manual_seed(0)
    for arch in ZOO:
        path = folder / f"{arch}.pt"
        torch.save(EdgeFace(arch).state_dict(), path)
        paths[arch] = path
    return paths


@pytest.fixture(scope="session")
def xxs_checkpoint(zoo_checkpoints: dict[str, Path]) -> Path:
    return zoo_checkpoints["edgeface_xxs"]


# Small and fast: 32 px images, a few identities, no worker processes.
FAST = [
    "--set", "data.image_size=32", "--set", "data.batch_size=8", "--set", "data.workers=0",
    "--set", "optim.warmup_epochs=0", "--device", "cpu",
]


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeface_cli.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp("sample")
    write_sample_dataset(root, identities=5, per_identity=6, size=32, seed=1, val_per_identity=3)
    return root


@pytest.fixture(scope="session")
def recognition_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six identities (10 train, 4 val images each, 32 px) for the tests that need a model that recognises."""
    from edgeface_cli.data.sample_data import write_sample_dataset

    def build(root: Path) -> None:
        write_sample_dataset(root, identities=6, per_identity=10, size=32, seed=3, val_per_identity=4)

    return built_once(tmp_path_factory, "recognition-data", build)  # read-only: shared by the workers


# The recognition run's recipe (besides its data, epochs and batch): rates raised to learn in a few CPU epochs.
RECOGNITION_RECIPE = [
    "--set", "data.image_size=32", "--set", "data.workers=0", "--set", "optim.warmup_epochs=0",
    "--set", "optim.head_lr=3e-3", "--set", "optim.backbone_lr=3e-3", "--set", "optim.head_lr_stage2=3e-3",
    "--set", "arcface.scale=16", "--set", "arcface.margin=0.1",
]


@pytest.fixture(scope="session")
def recognition_run(recognition_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model good enough to recognise the sample identities (about 95% val accuracy; ~15 s on 2 cores), trained
    from random weights once per session and copied to each worker that asks (tests write eval.json into it)."""
    from typer.testing import CliRunner

    from edgeface_cli.cli import app

    def build(run: Path) -> None:
        result = CliRunner().invoke(app, [
            "train", "--train-dir", str(recognition_data / "train"), "--val-dir", str(recognition_data / "val"),
            "--device", "cpu", "--out", str(run), "--stage1-epochs", "1", "--epochs", "6", "--batch-size", "8",
            *RECOGNITION_RECIPE,
        ])
        assert result.exit_code == 0, result.output

    return private_copy(built_once(tmp_path_factory, "recognition-run", build), tmp_path_factory)


# `make test-fast` runs what trains no model and spawns no multi-process scenario (pytest -m "not slow").
SLOW_FOLDERS = {"training", "deploy"}
SLOW_FILES = {"test_reliability.py", "test_api.py", "test_layout.py"}
TRAINED_FIXTURES = {"recognition_run", "troubled_runs", "trained_run"}
TRAINS = ("run_train(", '"train",', "import train", "train_command(", '"train"]')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    import inspect

    for item in items:
        path = Path(str(item.fspath))
        source = inspect.getsource(item.function) if hasattr(item, "function") else ""
        trains = bool(TRAINED_FIXTURES & set(getattr(item, "fixturenames", ()))) or any(word in source for word in TRAINS)
        if path.parent.name in SLOW_FOLDERS or path.name in SLOW_FILES or trains:
            item.add_marker(pytest.mark.slow)
