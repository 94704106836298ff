"""`edgeface align` removes only the crops it wrote, inside OUT, and leaves none of photos that are gone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.data.alignment.folder import PHOTO_GONE, RECORDS, crop_stems, read_records

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
FACE = SHARED / "images" / "face0.jpg"  # 112x131, one face: MTCNN finds it in a few ms
needs_photos = pytest.mark.skipif(not FACE.is_file(), reason=f"the MTCNN example photos are not at {SHARED}")
runner = CliRunner()


def _align(src: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["align", str(src), str(out), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


def _face(path: Path, mirrored: bool = False) -> Path:
    """A real face photo at ``path``; mirrored, its crop differs from the original's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(FACE).convert("RGB")
    (ImageOps.mirror(image) if mirrored else image).save(path)
    return path


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("victim_name", ["relative", "absolute", "through a link"])
def test_a_crafted_manifest_removes_nothing_outside_out(tmp_path: Path, victim_name: str) -> None:
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 150)).save(src / "p.png")  # no face needed: nothing is detected
    victim = elsewhere / "victim.png"
    victim.write_bytes(b"the user's file")
    out.mkdir()
    entry = {"relative": "../elsewhere/victim.png", "absolute": str(victim), "through a link": "link/victim.png"}[victim_name]
    if victim_name == "through a link":
        (out / "link").symlink_to(elsewhere, target_is_directory=True)
    # A record of a photo that exists, with another stamp: the photo is aligned again and its old "crops" are
    # stale, which an align that trusted the manifest removed.
    manifest = json.dumps({"source": "p.png", "stamp": [0, 0, 0], "choice": "best", "format": "png",
                           "detector": "mtcnn", "outputs": [entry]}) + "\n"
    (out / RECORDS).write_text(manifest)
    result = runner.invoke(app, ["align", str(src), str(out)])
    assert result.exit_code == 2, result.output
    assert victim.read_bytes() == b"the user's file"
    assert "line 1" in result.output and repr(entry) in " ".join(result.output.split()) and "Traceback" not in result.output
    assert (out / RECORDS).read_text() == manifest  # nothing written either
    assert not (out / "p.png").exists()


def test_a_manifest_photo_outside_in_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    Image.new("RGB", (64, 64)).save(src / "p.png")
    (out / RECORDS).write_text(json.dumps({"source": "../p.png", "outputs": []}) + "\n")
    result = runner.invoke(app, ["align", str(src), str(out)])
    assert result.exit_code == 2 and "'../p.png'" in result.output and "photo" in result.output


@needs_photos
def test_a_photo_moved_to_another_folder_leaves_no_crop_behind(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "train" / "ann" / "a.jpg")
    _face(src / "train" / "ann" / "c.jpg", mirrored=True)
    assert _align(src, out)["aligned"] == 2
    (src / "val" / "ann").mkdir(parents=True)
    (src / "train" / "ann" / "a.jpg").rename(src / "val" / "ann" / "a.jpg")
    moved = runner.invoke(app, ["align", str(src), str(out)])
    assert moved.exit_code == 0, moved.output
    assert not (out / "train" / "ann" / "a.png").exists() and (out / "val" / "ann" / "a.png").is_file()
    assert "removed: train/ann/a.png" in moved.output  # said, not silent
    assert (out / "train" / "ann" / "c.png").is_file()  # the other crop of that folder is untouched

    (src / "train" / "ann" / "c.jpg").unlink()
    summary = _align(src, out)
    assert summary["removed"] == [{"crop": "train/ann/c.png", "source": "train/ann/c.jpg", "why": PHOTO_GONE}]
    assert not (out / "train").exists()  # no empty identity folder left for training to trip on
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["val/ann/a.png"]
    assert set(read_records(out)) == {"val/ann/a.jpg"}


@needs_photos
def test_a_crop_changed_since_align_wrote_it_is_kept_and_said(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "a.jpg")
    _face(src / "b.jpg", mirrored=True)
    _align(src, out)
    retouched = Image.fromarray(np.full((112, 112, 3), 200, dtype=np.uint8))
    retouched.save(out / "b.png")  # the user edited the crop
    user_bytes = (out / "b.png").read_bytes()
    (src / "b.jpg").unlink()
    (src / "a.jpg").unlink()
    _face(src / "d.jpg")
    summary = _align(src, out)
    assert (out / "b.png").read_bytes() == user_bytes
    assert [item["crop"] for item in summary["kept"]] == ["b.png"] and "changed" in summary["kept"][0]["why"]
    assert [item["crop"] for item in summary["removed"]] == ["a.png"]  # unchanged: align's own, removed
    assert not (out / "a.png").exists()


@needs_photos
def test_photos_whose_names_differ_only_after_the_stem_get_their_own_crops(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "x.png")
    _face(src / "x.jpg", mirrored=True)
    assert _align(src, out)["aligned"] == 2
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    # x.png's crop is x.png.png (its stem clashes with x.jpg's); x.png.jpg's stem is x.png: a third crop, not x.png's.
    Image.open(src / "x.png").rotate(10).save(src / "x.png.jpg")
    summary = _align(src, out)
    assert summary["aligned"] == 1 and summary["reused"] == 2  # the existing crops keep their names
    records = read_records(out)
    outputs = [records[name]["outputs"] for name in ("x.png", "x.jpg", "x.png.jpg")]
    assert [len(names) for names in outputs] == [1, 1, 1] and len({names[0] for names in outputs}) == 3
    assert all(out.joinpath(names[0]).read_bytes() == before[names[0]] for names in outputs[:2])
    crops = [_pixels(out / names[0]) for names in outputs]
    assert all(np.abs(crops[i] - crops[j]).mean() > 1.0 for i in range(3) for j in range(i))  # three different faces


def test_crop_stems_are_unique_whatever_the_names(tmp_path: Path) -> None:
    names = ["x.png", "x.jpg", "x.png.jpg", "X.JPG", "x~2.jpg", "y.jpg", "sub/y.jpg"]
    photos = [tmp_path / name for name in names]
    stems = crop_stems(sorted(photos), tmp_path)
    assert len({stem.lower() for stem in stems.values()}) == len(names)  # one file each, even on a case-blind disk
    assert stems[tmp_path / "y.jpg"] == "y" and stems[tmp_path / "sub" / "y.jpg"] == "sub/y"  # no clash: the stem
    for faces in (1, 3):  # --faces all: <stem>_<k> stays unique too
        crops = [f"{stem}_{k}" for stem in stems.values() for k in range(faces)]
        assert len({crop.lower() for crop in crops}) == len(crops)


@needs_photos
def test_an_older_manifest_without_hashes_is_migrated_and_its_crops_never_guessed_at(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "a.jpg")
    _face(src / "b.jpg", mirrored=True)
    _align(src, out)
    old = [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]
    (out / RECORDS).write_text("".join(json.dumps({k: v for k, v in record.items() if k not in ("sha256", "crop_stem")})
                                       + "\n" for record in old))  # as an align before hashes wrote it
    (src / "b.jpg").unlink()
    summary = _align(src, out)
    assert summary["aligned"] == 1  # a.jpg done again, once: now its crop's bytes are known
    assert (out / "b.png").is_file() and "no hash" in summary["kept"][0]["why"] and summary["removed"] == []
    assert read_records(out)["a.jpg"]["sha256"] == [hashlib.sha256((out / "a.png").read_bytes()).hexdigest()]
    assert _align(src, out)["reused"] == 1


@needs_photos
def test_a_run_killed_before_its_removals_removes_them_next_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeface_cli.data.alignment.folder import AlignJob
    from edgeface_cli.data.alignment.photos import shared_detector

    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "a.jpg")
    _face(src / "b.jpg", mirrored=True)
    AlignJob(src, out, shared_detector("cpu")).run()
    shutil.copy(src / "a.jpg", src / "b.jpg")  # b changed: aligned again, same crop name
    (src / "a.jpg").unlink()

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(AlignJob, "_remove_unclaimed", killed)
    with pytest.raises(KeyboardInterrupt):
        AlignJob(src, out, shared_detector("cpu")).run()
    assert (out / "a.png").is_file()
    monkeypatch.undo()
    summary = AlignJob(src, out, shared_detector("cpu")).run()
    assert [crop for crop, _, _ in summary.removed] == ["a.png"] and summary.reused == 1


@needs_photos
def test_every_file_align_writes_has_its_final_mode_and_no_temp_file_is_left(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "ann" / "a.jpg")
    previous = os.umask(0o027)
    try:
        _align(src, out)
        _face(src / "ann" / "b.jpg", mirrored=True)
        _align(src, out)  # the manifest appended to, then rewritten
    finally:
        os.umask(previous)
    written = sorted(path.relative_to(out).as_posix() for path in out.rglob("*") if path.is_file())
    assert written == ["align.jsonl", "ann/a.png", "ann/b.png"]  # no temp file beside them
    assert {(out / name).stat().st_mode & 0o777 for name in written} == {0o640}  # the umask's, like any tool's


@needs_photos
def test_a_folder_of_out_that_links_elsewhere_gets_no_crop(tmp_path: Path) -> None:
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    _face(src / "ann" / "a.jpg")
    elsewhere.mkdir()
    out.mkdir()
    (out / "ann").symlink_to(elsewhere, target_is_directory=True)
    result = runner.invoke(app, ["align", str(src), str(out)])
    assert result.exit_code == 2 and "link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == []


@needs_photos
def test_a_crop_changed_since_align_wrote_it_is_not_overwritten_when_its_photo_changes(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "a.jpg")
    _align(src, out)
    Image.fromarray(np.full((112, 112, 3), 200, dtype=np.uint8)).save(out / "a.png")  # the user's edit
    user_bytes = (out / "a.png").read_bytes()
    _face(src / "a.jpg", mirrored=True)  # and the photo changes
    summary = _align(src, out)
    assert (out / "a.png").read_bytes() == user_bytes and summary["aligned"] == 0
    assert [item["crop"] for item in summary["kept"]] == ["a.png"] and "a.jpg" in summary["kept"][0]["why"]
    (out / "a.png").rename(tmp_path / "mine.png")  # moved away: the photo's new crop is written
    assert _align(src, out)["aligned"] == 1 and (out / "a.png").read_bytes() != user_bytes


@needs_photos
def test_a_renamed_photo_does_not_overwrite_the_changed_crop_of_its_old_name(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _face(src / "x.jpg")
    _align(src, out)
    Image.fromarray(np.full((112, 112, 3), 200, dtype=np.uint8)).save(out / "x.png")  # the user's edit
    user_bytes = (out / "x.png").read_bytes()
    (src / "x.jpg").rename(src / "x.jpeg")  # the same stem: its crop would be x.png again
    for _ in range(2):  # said on every run until the user decides
        summary = _align(src, out)
        assert (out / "x.png").read_bytes() == user_bytes and summary["removed"] == []
        assert [item["crop"] for item in summary["kept"]] == ["x.png"] and "x.jpeg" in summary["kept"][0]["why"]
    (out / "x.png").unlink()
    summary = _align(src, out)
    assert summary["aligned"] == 1 and summary["kept"] == [] and set(read_records(out)) == {"x.jpeg"}
