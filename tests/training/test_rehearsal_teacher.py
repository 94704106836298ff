"""Rehearsal kept close to the frozen teacher (data.rehearsal_target teacher): public samples carry no class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.loaders import face_dataset, make_loader
from edgeface_cli.data.rehearsal import RehearsalScan, with_rehearsal

from ..clirun import invoke
from ..conftest import FAST


@pytest.fixture(scope="module")
def public_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeface_cli.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp("public-teacher")
    write_sample_dataset(root, identities=4, per_identity=5, size=32, seed=7, val_per_identity=0)
    return root / "train"


class _Data:
    rehearsal_rec, rehearsal_share, rehearsal_target = None, 0.25, "teacher"

    def __init__(self, public: Path) -> None:
        self.rehearsal_dir = public


def test_teacher_mode_gives_public_samples_label_minus_one_and_appends_no_class(sample_dataset: Path,
                                                                               public_dataset: Path) -> None:
    settings = ImageSettings(image_size=32, cache="off")
    user = scan_image_folder(sample_dataset / "train", "train", settings=settings)
    scan = with_rehearsal(user, _Data(public_dataset), settings)
    assert isinstance(scan, RehearsalScan) and scan.target == "teacher"
    assert scan.classes == user.classes  # nothing appended: the head has the user's identities only
    public = [sample for sample in scan.samples if sample.label < 0]
    assert len(public) == 20 and all(sample.identity == -1 for sample in public)
    assert [s.label for s in scan.samples if s.label >= 0] == [s.label for s in user.samples]
    loader = make_loader(face_dataset(scan.samples, scan, settings), 8, True, 0, False, 0)
    batches = [batch[1] for batch in loader]
    assert all(int((labels == -1).sum()) == 2 for labels in batches[:-1])  # round(0.25 * 8) per full batch
    labels = torch.cat(batches)
    assert sorted(labels[labels >= 0].tolist()) == sorted(s.label for s in user.samples)  # every user sample once


def test_loaders_does_not_import_rehearsal() -> None:
    """One direction only: rehearsal builds on loaders (ComposedScan/ComposedDataset), never the reverse."""
    import edgeface_cli.data.loaders as loaders

    tree = ast.parse(Path(loaders.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name and name.endswith("rehearsal") for name in imported), imported


def test_teacher_without_distillation_is_refused_naming_the_flag(sample_dataset: Path, public_dataset: Path,
                                                                 tmp_path: Path) -> None:
    code, output = invoke("train", "--train-dir", str(sample_dataset / "train"), "--out", str(tmp_path / "r"),
                          "--rehearsal-dir", str(public_dataset), "--rehearsal-target", "teacher", *FAST)
    assert code == 2 and "--set distill.weight=" in output and "--rehearsal-target" in output, output
    assert "Traceback" not in output
    code, output = invoke("train", "--train-dir", str(sample_dataset / "train"), "--out", str(tmp_path / "r"),
                          "--rehearsal-dir", str(public_dataset), "--rehearsal-target", "parents", *FAST)
    assert code == 2 and "--rehearsal-target" in output and "teacher" in output, output


@pytest.mark.slow
def test_train_with_teacher_rehearsal_keeps_only_the_users_classes(sample_dataset: Path, public_dataset: Path,
                                                                   xxs_checkpoint: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, output = invoke("train", "--edgeface", str(xxs_checkpoint), "--train-dir", str(sample_dataset / "train"),
                          "--val-dir", str(sample_dataset / "val"), "--out", str(run_dir), "--stage1-epochs", "1",
                          "--epochs", "2", "--rehearsal-dir", str(public_dataset), "--rehearsal-target", "teacher",
                          "--set", "distill.weight=10", "--quiet", *FAST)
    assert code == 0, output
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    names = sorted(path.name for path in (sample_dataset / "train").iterdir())
    assert last["class_names"] == names  # no rehearsal class: the public identities live in the teacher only
    assert last["head"]["weight"].shape[0] == len(names)
    assert last["anchor"] is not None  # the frozen teacher the public samples were kept close to
    moved = [key for key, value in last["backbone"].items()
             if value.is_floating_point() and not torch.equal(value, last["anchor"][key])]
    assert moved  # stage 2 trained the backbone, away from (and pulled toward) the teacher
