"""Rehearsal: public identities mixed into every batch at the configured share, in their own appended classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.loaders import face_dataset, make_loader
from edgeface_cli.data.rehearsal import PREFIX, RehearsalBatches, RehearsalScan, user_classes, with_rehearsal

from ..clirun import invoke
from ..conftest import FAST


@pytest.fixture(scope="module")
def public_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four public identities whose folder names are the same as the user's (the clash must not merge them)."""
    from edgeface_cli.data.sample_data import write_sample_dataset

    root = tmp_path_factory.mktemp("public")
    write_sample_dataset(root, identities=4, per_identity=5, size=32, seed=7, val_per_identity=0)
    return root / "train"


@pytest.mark.parametrize("world", [1, 2])
def test_each_batch_carries_the_share_and_an_epoch_covers_the_user_data_once(world: int) -> None:
    user_size, public_size, batch = 30, 7, 8
    seen: list[int] = []
    for rank in range(world):
        sampler = RehearsalBatches(user_size, public_size, batch, 0.25, seed=3, rank=rank, world=world)
        sampler.set_epoch(1)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        # Stage 1's walk over the frozen embeddings splits the flat shard: the same batches, public draws included.
        assert [part.tolist() for part in sampler.shard().split(batch)] == batches
        for index, indices in enumerate(batches):
            public = [i for i in indices if i >= user_size]
            assert all(user_size <= i < user_size + public_size for i in public)
            if index < len(batches) - 1:
                assert len(indices) == batch and len(public) == round(0.25 * batch)
        seen += [i for indices in batches for i in indices if i < user_size]
    assert sorted(set(seen)) == list(range(user_size))  # every user sample once (DDP pads by wrapping, as before)
    assert len(seen) == -(-user_size // world) * world


def test_public_labels_land_in_the_appended_classes(sample_dataset: Path, public_dataset: Path) -> None:
    settings = ImageSettings(image_size=32, cache="off")
    user = scan_image_folder(sample_dataset / "train", "train", settings=settings)

    class Data:
        rehearsal_dir, rehearsal_rec, rehearsal_share, rehearsal_target = public_dataset, None, 0.25, "classes"

    scan = with_rehearsal(user, Data, settings)
    assert isinstance(scan, RehearsalScan)
    assert scan.classes[:5] == user.classes and user_classes(scan.classes) == user.classes
    assert scan.classes[5:] == [PREFIX + name for name in sorted(p.name for p in public_dataset.iterdir())]
    assert set(user.classes) & {name[len(PREFIX):] for name in scan.classes[5:]}  # same folder names, not merged
    loader = make_loader(face_dataset(scan.samples, scan, settings), 8, True, 0, False, 0)
    labels = torch.cat([batch[1] for batch in loader])
    user_labels, public_labels = labels[labels < 5], labels[labels >= 5]
    assert len(user_labels) == 30 and int(public_labels.max()) < 9 and len(public_labels) == 2 * len(loader)
    assert sorted(user_labels.tolist()) == sorted(sample.label for sample in user.samples)


@pytest.mark.slow
@pytest.mark.parametrize("source", ["dir", "rec"])
def test_train_with_rehearsal_keeps_the_users_classes(source: str, sample_dataset: Path, public_dataset: Path,
                                                       tmp_path: Path) -> None:
    if source == "rec":
        public = tmp_path / "public.rec"
        code, output = invoke("pack", str(public_dataset), str(public))
        assert code == 0, output
        # Stage 1 alone, without its embedding cache: the shuffled loader reads the records (the cheapest such epoch).
        flag = ["--rehearsal-rec", str(public), "--epochs", "1", "--set", "optim.stage1_cache=false"]
    else:
        flag = ["--rehearsal-dir", str(public_dataset), "--epochs", "2"]
    run_dir = tmp_path / "run"
    code, output = invoke("train", "--train-dir", str(sample_dataset / "train"), "--val-dir", str(sample_dataset / "val"),
                          "--out", str(run_dir), "--stage1-epochs", "1", *flag, *FAST)
    assert code == 0, output
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    names = sorted(path.name for path in (sample_dataset / "train").iterdir())
    assert user_classes(last["class_names"]) == names
    assert len(last["class_names"]) == len(names) + 4 and all(n.startswith(PREFIX) for n in last["class_names"][5:])
    if source == "dir":  # eval of the run says that its head also holds the public identities
        code, output = invoke("eval", "--val-dir", str(sample_dataset / "val"), "--checkpoint", str(run_dir),
                              "--device", "cpu")
        assert code == 0 and "also holds 4 rehearsal identities" in output, output


def test_rehearsal_user_errors_exit_2(sample_dataset: Path, tmp_path: Path) -> None:
    base = ["train", "--train-dir", str(sample_dataset / "train"), "--out", str(tmp_path / "r"), *FAST]
    code, output = invoke(*base, "--rehearsal-dir", str(tmp_path / "missing"))
    assert code == 2 and "--rehearsal-dir" in output and "not a folder" in output, output
    code, output = invoke(*base, "--rehearsal-dir", str(sample_dataset / "train"), "--rehearsal-share", "1.5")
    assert code == 2 and "--rehearsal-share" in output, output
    bad = tmp_path / "bad.rec"
    bad.write_bytes(b"not a record file")
    bad.with_suffix(".idx").write_text("0\t0\n")
    code, output = invoke(*base, "--rehearsal-rec", str(bad))
    assert code == 2 and "bad.rec" in output, output
