"""Mistakes a person makes with their folders: a dataset root given where a split was meant, align's manifest
inside the crops, photos that are not photos; and check-data listing what it counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeface_cli.cli import app
from edgeface_cli.errors import DataError
from edgeface_cli.preflight import check_image_folder, split_folders

from ..fresh_cli import run_cli_fresh

runner = CliRunner()


def _image(path: Path, shade: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (shade, 90, 200 - shade)).save(path)


@pytest.fixture()
def dataset_root(tmp_path: Path) -> Path:
    """crops/ as align or a download leaves it: crops/train/<identity>/ and crops/val/<identity>/."""
    root = tmp_path / "crops"
    for split in ("train", "val"):
        for number, person in enumerate(("alice", "bob")):
            _image(root / split / person / "0.png", 40 + 60 * number)
    return root


def _probe(args: list[str], cwd: Path) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, output) of the CLI run in a fresh interpreter."""
    done = run_cli_fresh(args, cwd)
    return done.code, "torch" in done.imported, done.stdout + done.stderr


@pytest.mark.parametrize("command", [
    ["train", "--train-dir", "{root}", "--device", "cpu"],
    ["check-data", "--train-dir", "{root}"],
    ["enroll", "{root}", "--checkpoint", "{tmp}/model.pt", "--out", "{tmp}/staff.npz"],
])
def test_a_dataset_root_given_as_identities_is_refused_before_torch_naming_the_splits(
        command: list[str], dataset_root: Path, tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not read: the folder is refused first")
    args = [arg.replace("{root}", str(dataset_root)).replace("{tmp}", str(tmp_path)) for arg in command]
    code, imported_torch, output = _probe(args, tmp_path)
    assert code == 2 and not imported_torch, output
    assert "Traceback" not in output and output.count("error:") == 1
    assert "split folder(s) train, val" in output
    if command[0] == "enroll":
        assert f"{dataset_root / 'train'} as GALLERY_DIR" in output
    else:  # the flags that take them, with the right folders
        assert f"--train-dir {dataset_root / 'train'} --val-dir {dataset_root / 'val'}" in output


def test_a_person_called_train_is_an_identity_not_a_split(tmp_path: Path) -> None:
    root = tmp_path / "people"
    _image(root / "train" / "0.png")  # someone's name (or nickname) is "train": images directly inside
    _image(root / "val" / "holiday" / "1.png")  # named like a split and holding only folders: taken for one
    _image(root / "carol" / "2.png")
    assert [path.name for path in split_folders(root)] == ["val"]
    (root / "val" / "3.png").write_bytes((root / "carol" / "2.png").read_bytes())
    assert split_folders(root) == []  # an image directly inside: one person's folder
    check_image_folder(root, "train")  # no error

    validation = tmp_path / "data"
    _image(validation / "validation" / "dan" / "0.png")
    _image(validation / "Train" / "erin" / "0.png")
    with pytest.raises(DataError, match="--val-dir .*validation"):
        check_image_folder(validation, "val")


def test_check_data_skips_the_manifest_align_writes_in_its_output(dataset_root: Path) -> None:
    train = dataset_root / "train"
    (train / "align.jsonl").write_text('{"source": "a.jpg"}\n')  # align OUT is the identity tree itself
    result = runner.invoke(app, ["check-data", "--train-dir", str(train), "--json"])
    report = json.loads(result.output[result.output.index("{"):])
    assert not [item for finding in report["findings"] for item in finding["items"]
                if "align.jsonl" in json.dumps(item)], report["findings"]
    assert "unreadable train files" not in [finding["check"] for finding in report["findings"]]
    (train / "notes.txt").write_text("a stray file of the user's is still reported")
    again = runner.invoke(app, ["check-data", "--train-dir", str(train), "--json"])
    assert again.exit_code == 1
    stray = json.loads(again.output[again.output.index("{"):])
    unreadable = next(finding for finding in stray["findings"] if finding["check"] == "unreadable train files")
    assert [Path(item["file"]).name for item in unreadable["items"]] == ["notes.txt"]


def test_align_on_files_that_are_not_photos_exits_2_saying_none_could_be_read(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "ann").mkdir(parents=True)
    (photos / "ann" / "a.jpg").write_text("this is text saved as .jpg")
    (photos / "ann" / "b.png").write_text("so is this")
    result = runner.invoke(app, ["align", str(photos), str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "no photo in" in result.output and "could be read" in result.output and "ann/a.jpg" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "out").rglob("*.png"))


def test_check_data_all_lists_every_file_it_counts(tmp_path: Path) -> None:
    train = tmp_path / "train"
    for person in range(8):  # eight identities of one image: "small train identities" counts 8
        _image(train / f"p{person}" / "0.png", 20 + 25 * person)
    result = runner.invoke(app, ["check-data", "--train-dir", str(train)])
    assert "... 3 more (--all lists them)" in result.output, result.output
    every = runner.invoke(app, ["check-data", "--train-dir", str(train), "--all"])
    listed = [line.strip() for line in every.output.splitlines() if line.strip().startswith("p") and "images 1" in line]
    assert sorted(listed) == [f"p{person}, images 1" for person in range(8)], every.output
    assert "more" not in every.output


def test_check_data_all_keeps_every_item_in_json(tmp_path: Path) -> None:
    train = tmp_path / "train"
    for person in range(25):  # more than the 20 --json keeps by default
        _image(train / f"p{person:02d}" / "0.png", 5 + 9 * person)
    default = runner.invoke(app, ["check-data", "--train-dir", str(train), "--json"])
    small = next(item for item in json.loads(default.output[default.output.index("{"):])["findings"]
                 if item["check"] == "small train identities")
    assert small["count"] == 25 and len(small["items"]) == 20
    every = runner.invoke(app, ["check-data", "--train-dir", str(train), "--json", "--all"])
    small = next(item for item in json.loads(every.output[every.output.index("{"):])["findings"]
                 if item["check"] == "small train identities")
    assert small["count"] == 25 and len(small["items"]) == 25


SHARED = Path(__file__).resolve().parents[3] / "shared" / "mtcnn"


@pytest.mark.skipif(not (SHARED / "images").is_dir(), reason=f"the MTCNN example photos are not at {SHARED}")
def test_the_align_summary_names_every_photo_it_gave_no_single_crop(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(SHARED / "images" / "office3.jpg", photos / "group.jpg")
    Image.new("RGB", (160, 120), (90, 120, 150)).save(photos / "wall.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (photos / "notes.txt").write_text("not a photo: skipped, and said so (not called unreadable)")
    result = runner.invoke(app, ["align", str(photos), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("no face found: wall.png") for line in lines), result.output
    assert any(line.startswith("unreadable: broken.jpg") for line in lines), result.output
    assert any(line.startswith("several faces: group.jpg") for line in lines), result.output
    assert "skipped: notes.txt: not an image file (.txt)" in lines, result.output
    again = runner.invoke(app, ["align", str(photos), str(tmp_path / "out"), "--json"]).output
    summary = json.loads(again[again.index("{"):])
    assert [item["file"] for item in summary["unreadable"]] == ["broken.jpg"]
    assert summary["skipped"] == [{"file": "notes.txt", "why": "not an image file (.txt)"}]


def test_check_data_out_says_which_folder_it_created(dataset_root: Path, tmp_path: Path) -> None:
    report = tmp_path / "reports" / "today" / "train.json"
    result = runner.invoke(app, ["check-data", "--train-dir", str(dataset_root / "train"), "--out", str(report)])
    assert f"created folder {report.parent}" in result.output, result.output
    assert json.loads(report.read_text())["stats"]["train"]["identities"] == 2


def test_each_flag_is_offered_the_split_it_takes(dataset_root: Path) -> None:
    _image(dataset_root / "test" / "carl" / "0.png")  # train/, val/ and test/
    with pytest.raises(DataError) as train:
        check_image_folder(dataset_root, "train")
    assert "split folder(s) train, val, test" in str(train.value)
    assert f"--train-dir {dataset_root / 'train'} --val-dir {dataset_root / 'val'})" in str(train.value)
    with pytest.raises(DataError, match=r"\(--holdout-dir .*test\)"):  # held-out identities: the test split
        check_image_folder(dataset_root, "holdout")
