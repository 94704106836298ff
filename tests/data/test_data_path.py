"""The fast data path: decoded-image cache, draft decoding, batch augmentation, cached stage 1."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import edgeface_cli.data.folder as data_module
from edgeface_cli.cli import app
from edgeface_cli.data.augment import augment_batch, plan_epoch, to_model_input
from edgeface_cli.data.folder import ImageSettings, decode_image, load_image, scan_image_folder
from edgeface_cli.data.loaders import CachedBatches, face_dataset, make_loader, set_loader_epoch
from edgeface_cli.model.backbones import EdgeFace

from ..conftest import FAST

runner = CliRunner()


def cached_settings(tmp_path: Path, size: int = 32) -> ImageSettings:
    return ImageSettings(image_size=size, cache="on", cache_dir=tmp_path / "cache")


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    decoded: list[Path] = []
    original = data_module.load_image

    def counting(path: Path, *args, **kwargs):
        decoded.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(data_module, "load_image", counting)
    return decoded


def cache_folders(settings: ImageSettings) -> list[Path]:
    assert settings.cache_dir is not None
    return sorted(path for path in settings.cache_dir.iterdir() if path.is_dir() and path.name != "lineage")


def test_cached_batches_equal_the_direct_decode(sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = cached_settings(tmp_path)
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    assert scan.cached is not None and not scan.cache_hit
    dataset = face_dataset(scan.samples, scan, settings)
    assert isinstance(dataset, CachedBatches)
    indices = [7, 0, 29, 3, 3]
    images, labels, identities, returned = dataset[indices]
    assert returned.tolist() == indices
    for position, index in enumerate(indices):
        sample = scan.samples[index]
        assert torch.equal(images[position], decode_image(sample.path, 32))
        assert (labels[position], identities[position]) == (sample.label, sample.identity)
    # A second scan of unchanged files decodes nothing: every row comes from the cache.
    decoded = count_decodes(monkeypatch)
    again = scan_image_folder(sample_dataset / "train", settings=settings)
    assert again.cache_hit and decoded == []
    assert again.cached is not None and again.cached.directory == scan.cached.directory


def test_loader_over_the_cache_matches_the_per_file_loader(sample_dataset: Path, tmp_path: Path) -> None:
    settings = cached_settings(tmp_path)
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    cached = make_loader(face_dataset(scan.samples, scan, settings), 8, True, 0, False, seed=3)
    plain = make_loader(face_dataset(scan.samples, None, settings), 8, True, 0, False, seed=3)
    for loader in (cached, plain):
        set_loader_epoch(loader, 2)
    for (a_images, a_labels, _, a_index), (b_images, b_labels, _, b_index) in zip(cached, plain, strict=True):
        assert torch.equal(a_index, b_index) and torch.equal(a_labels, b_labels)
        assert torch.equal(a_images, b_images)


def test_prefetching_stops_cleanly_and_passes_errors_on(sample_dataset: Path, tmp_path: Path) -> None:
    import threading

    settings = cached_settings(tmp_path)
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    loader = make_loader(face_dataset(scan.samples, scan, settings), 4, True, 0, False, seed=0)
    for _ in zip(range(2), loader):  # the consumer leaves early: the thread must end, not hang
        pass
    assert not any(thread.name == "edgeface-prefetch" for thread in threading.enumerate())
    loader.dataset.rows[:] = 10**9  # a row past the memory map: the thread's error reaches the consumer
    with pytest.raises(IndexError):
        list(loader)


def test_changed_added_and_removed_files_update_the_cache(sample_dataset: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(sample_dataset / "train", data)
    settings = cached_settings(tmp_path)
    first = scan_image_folder(data, settings=settings)
    changed = data / "id_001" / "0002.png"
    Image.new("RGB", (32, 32), (250, 10, 10)).save(changed)
    os.utime(changed, ns=(1, 1))  # a distinct mtime even on coarse file-system clocks
    decoded = count_decodes(monkeypatch)
    second = scan_image_folder(data, settings=settings)
    assert decoded == [changed]  # the other 29 rows were copied from the previous cache
    assert second.cached is not None and first.cached is not None
    assert second.cached.directory != first.cached.directory
    # The superseded cache stays while a running train or a second build may still map it, then is reclaimed.
    assert (first.cached.directory / "superseded").is_file() and first.cached.array().shape[0] == 30
    from edgeface_cli.data.cache import RECLAIM_AFTER_S, _reclaim_superseded

    _reclaim_superseded(second.cached.directory.parent)
    assert first.cached.directory.exists()
    _reclaim_superseded(second.cached.directory.parent, now=time.time() + RECLAIM_AFTER_S + 1)
    assert not first.cached.directory.exists() and second.cached.directory.exists()
    row = next(sample.row for sample in second.samples if sample.path == changed)
    assert torch.equal(torch.from_numpy(np.array(second.cached.array()[row])), decode_image(changed, 32))
    shutil.copy(changed, data / "id_000" / "new.png")
    (data / "id_002" / "0000.png").unlink()
    third = scan_image_folder(data, settings=settings)
    assert len(third.samples) == len(second.samples)  # one added, one removed
    assert {sample.path for sample in third.samples} == {sample.path for sample in second.samples} - {
        data / "id_002" / "0000.png"} | {data / "id_000" / "new.png"}
    dataset = face_dataset(third.samples, third, settings)
    images, *_ = dataset[list(range(len(third.samples)))]
    for image, sample in zip(images, third.samples):
        assert torch.equal(image, decode_image(sample.path, 32))
    current = [folder for folder in cache_folders(settings) if not (folder / "superseded").exists()]
    assert current == [third.cached.directory]  # one current cache; the superseded one waits to be reclaimed


def test_each_image_size_gets_its_own_cache(sample_dataset: Path, tmp_path: Path) -> None:
    small = scan_image_folder(sample_dataset / "train", settings=cached_settings(tmp_path, 32))
    large = scan_image_folder(sample_dataset / "train", settings=cached_settings(tmp_path, 48))
    assert small.cached is not None and large.cached is not None
    assert small.cached.directory != large.cached.directory
    assert small.cached.array().shape[1:] == (3, 32, 32) and large.cached.array().shape[1:] == (3, 48, 48)
    assert torch.equal(torch.from_numpy(np.array(large.cached.array()[0])), decode_image(large.samples[0].path, 48))


def test_a_killed_build_is_never_trusted(sample_dataset: Path, tmp_path: Path) -> None:
    settings = cached_settings(tmp_path)

    def killed(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan_image_folder(sample_dataset / "train", settings=settings, progress=killed)
    assert cache_folders(settings) == [] and not list(settings.cache_dir.glob(".build-*"))
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    assert not scan.cache_hit and scan.cached is not None
    images, *_ = face_dataset(scan.samples, scan, settings)[list(range(len(scan.samples)))]
    assert all(torch.equal(image, decode_image(sample.path, 32)) for image, sample in zip(images, scan.samples))


def test_a_damaged_cache_is_rebuilt(sample_dataset: Path, tmp_path: Path) -> None:
    settings = cached_settings(tmp_path)
    scan = scan_image_folder(sample_dataset / "train", settings=settings)
    assert scan.cached is not None
    (scan.cached.directory / "meta.json").write_text("{not json")
    again = scan_image_folder(sample_dataset / "train", settings=settings)
    assert not again.cache_hit and again.cached is not None


def test_auto_falls_back_when_the_disk_is_too_small(sample_dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeface_cli.data.cache as cache

    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 0))
    auto = ImageSettings(image_size=32, cache="auto", cache_dir=tmp_path / "cache")
    scan = scan_image_folder(sample_dataset / "train", settings=auto)
    assert scan.cached is None and scan.cache_note and "decoded every epoch" in scan.cache_note
    assert not isinstance(face_dataset(scan.samples, scan, auto), CachedBatches)
    with pytest.raises(data_module.DataError, match="data.cache=off"):
        scan_image_folder(sample_dataset / "train", settings=cached_settings(tmp_path))


def test_draft_decode_stays_close_to_the_full_decode(tmp_path: Path) -> None:
    """Measured on this generated 1024 px face: mean absolute difference 0.19 grey levels at 112 px."""
    from edgeface_cli.data.sample_data import write_sample_dataset

    write_sample_dataset(tmp_path / "big", identities=2, per_identity=1, size=1024, seed=3, val_per_identity=1)
    source = sorted((tmp_path / "big" / "train").rglob("*.png"))[0]
    photo = tmp_path / "photo.jpg"
    Image.open(source).convert("RGB").save(photo, quality=92)
    drafted, _ = load_image(photo, 112)
    with Image.open(photo) as image:
        full = np.asarray(image.convert("RGB").resize((112, 112), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    difference = np.abs(drafted.astype(np.int16) - full.astype(np.int16))
    assert difference.mean() < 1.0, difference.mean()
    with Image.open(photo) as image:
        image.draft("RGB", (112, 112))
        assert image.size[0] < 1024  # draft mode did engage (the decoder scaled down itself)


def test_batch_augmentation_equals_per_sample_and_is_a_function_of_seed_epoch_index() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=generator)
    indices = torch.tensor([5, 0, 17, 3, 9, 12])
    plan = plan_epoch(20, seed=4, epoch=3, hflip=True, color_jitter=0.3)
    batch = augment_batch(images, indices, plan)
    for position, index in enumerate(indices):
        single = augment_batch(images[position:position + 1], indices[position:position + 1], plan)
        assert torch.allclose(batch[position:position + 1], single)
    flips_only = augment_batch(images, indices, plan_epoch(20, seed=4, epoch=3, hflip=True, color_jitter=0.0))
    for position, index in enumerate(indices):
        expected = images[position].flip(-1) if plan.flip[index] else images[position]
        assert torch.equal(flips_only[position], expected.float())
    # The same (seed, epoch) plans the same choices; another epoch or seed plans others.
    again = plan_epoch(20, seed=4, epoch=3, hflip=True, color_jitter=0.3)
    assert torch.equal(again.flip, plan.flip) and torch.equal(again.brightness, plan.brightness)
    assert not torch.equal(plan_epoch(20, 4, 4, True, 0.3).flip, plan.flip)
    assert not torch.equal(plan_epoch(20, 5, 3, True, 0.3).flip, plan.flip)
    assert 0 < int(plan.flip.sum()) < 20
    normalized = to_model_input(images, torch.device("cpu"), indices, plan)
    assert normalized.min() >= -1 and normalized.max() <= 1


def run_train(data: Path, out: Path, *extra: str):
    args = ["train", "--train-dir", str(data / "train"), "--out", str(out), *FAST, *extra]
    return runner.invoke(app, args)


def count_backbone_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    original = EdgeFace.forward

    def counting(self, images):
        seen.append(len(images))
        return original(self, images)

    monkeypatch.setattr(EdgeFace, "forward", counting)
    return seen


@pytest.mark.parametrize("jitter", [0.0, 0.2])
def test_cached_stage_1_equals_the_uncached_head_and_costs_two_passes(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jitter: float
) -> None:
    common = ["--stage1-epochs", "5", "--epochs", "5", "--set", "optim.head_lr=0.05", "--set", f"data.color_jitter={jitter}"]
    seen = count_backbone_images(monkeypatch)
    cached = run_train(sample_dataset, tmp_path / "cached", *common)
    assert cached.exit_code == 0, cached.output
    cached_images = sum(seen)
    seen.clear()
    plain = run_train(sample_dataset, tmp_path / "plain", *common, "--set", "optim.stage1_cache=false")
    assert plain.exit_code == 0, plain.output
    images = 30
    assert sum(seen) == 5 * images  # the frozen backbone runs every stage-1 epoch
    if jitter:
        assert cached_images == 5 * images and "cannot be computed once" in cached.output
        return
    assert cached_images == 2 * images  # each image and its mirror, once
    head_cached = torch.load(tmp_path / "cached" / "last.pt", weights_only=True)["head"]["weight"]
    head_plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=True)["head"]["weight"]
    assert torch.allclose(head_cached, head_plain, atol=1e-5)
    rows = [[json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("cached", "plain")]
    for a, b in zip(*rows):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["train_acc"] == pytest.approx(b["train_acc"], abs=1e-6)


def test_resume_inside_a_cached_stage_1_equals_an_uninterrupted_run(sample_dataset: Path, tmp_path: Path) -> None:
    from edgeface_cli.config import build_config
    from edgeface_cli.events import BatchEnded
    from edgeface_cli.training.run import train

    overrides = ["data.image_size=32", "data.batch_size=8", "data.workers=0", "optim.warmup_epochs=0", "optim.head_lr=0.05"]
    flags = {"data.train_dir": sample_dataset / "train", "data.val_dir": sample_dataset / "val", "runtime.device": "cpu",
             "optim.stage1_epochs": 2, "optim.epochs": 3}
    straight = train(build_config(None, {**flags, "runtime.out": tmp_path / "straight"}, overrides), lambda event: None)
    assert straight.status == "finished"

    def ctrl_c_in_epoch_2(event: object) -> None:
        if isinstance(event, BatchEnded) and event.epoch == 2:
            raise KeyboardInterrupt

    interrupted_dir = tmp_path / "interrupted"
    config = build_config(None, {**flags, "runtime.out": interrupted_dir}, overrides)
    assert train(config, ctrl_c_in_epoch_2).status == "interrupted"
    resumed = runner.invoke(app, ["train", "--resume", str(interrupted_dir)])
    assert resumed.exit_code == 0, resumed.output
    first = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (interrupted_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in second] == [1, 2, 3]
    for a, b in zip(first, second):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_sim_pos", "lr_head"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["epoch"], key)


def test_a_failing_torch_compile_falls_back_to_eager_with_one_warning(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_compile(module):
        def compiled(inputs):
            raise RuntimeError("inductor: no C++ compiler found\nlong backtrace")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    run_dir = tmp_path / "run"
    result = run_train(sample_dataset, run_dir, "--stage1-epochs", "1", "--epochs", "2", "--set", "runtime.compile=true")
    assert result.exit_code == 0, result.output
    text = result.output.replace("\n", " ")
    assert text.count("torch.compile failed (inductor: no C++ compiler found)") == 1
    assert "the backbone runs eagerly" in text and (run_dir / "best.pt").is_file()
