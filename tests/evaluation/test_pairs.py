"""Pairs files as people have them: LFW's pairs.txt in both line forms, deepface-style CSVs, every label spelling."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edgeface_cli.errors import DataError
from edgeface_cli.evaluation.pairs import read_pairs


@pytest.fixture
def lfw_root(tmp_path: Path) -> Path:
    root = tmp_path / "lfw"
    for name in ("Aaron_Peirsol", "Abel_Pacheco"):
        (root / name).mkdir(parents=True)
        for number in (1, 2, 4):
            (root / name / f"{name}_{number:04d}.jpg").write_bytes(b"x")
    return root


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    root = tmp_path / "flat"
    root.mkdir()
    for name in ("img1.jpg", "img2.jpg", "img3.png"):
        (root / name).write_bytes(b"x")
    return root


@pytest.mark.parametrize("header", ["10 300\n", "1100\n", ""])
def test_lfw_pairs_txt_both_line_forms_with_or_without_header(header: str, lfw_root: Path, tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text(header + "Aaron_Peirsol\t1\t2\nAbel_Pacheco 1 4\nAaron_Peirsol\t4\tAbel_Pacheco\t2\n\n")
    pairs = read_pairs(pairs_file, lfw_root)
    assert pairs.same == [True, True, False] and pairs.kind == "lfw"
    assert pairs.first[0] == lfw_root / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    assert pairs.second[2] == lfw_root / "Abel_Pacheco" / "Abel_Pacheco_0002.jpg"
    assert pairs.sha256 == hashlib.sha256(pairs_file.read_bytes()).hexdigest()


@pytest.mark.parametrize("same, different", [("1", "0"), ("same", "different"), ("Yes", "No"), ("TRUE", "false"),
                                             ("y", "n")])
def test_every_label_spelling_reads(same: str, different: str, flat_root: Path, tmp_path: Path) -> None:
    pairs_file = tmp_path / "pairs.csv"
    pairs_file.write_text(f"img1.jpg,img2.jpg,{same}\nimg1.jpg,img3.png,{different}\n")
    assert read_pairs(pairs_file, flat_root).same == [True, False]


@pytest.mark.parametrize("text", [
    "img1,img2,decision\nimg1.jpg,img2.jpg,Yes\nimg2.jpg,img3.png,No\n",  # deepface's
    "file_x,file_y,decision,distance\nimg1.jpg,img2.jpg,Yes,0.3\nimg2.jpg,img3.png,No,0.9\n",  # extra columns
    ",img1,img2,label\n0,img1.jpg,img2.jpg,1\n1,img2.jpg,img3.png,0\n",  # a pandas index column
    "path1,path2,same\nimg1.jpg,img2.jpg,1\nimg2.jpg,img3.png,0\n",
    "q,r,same\nimg1.jpg,img2.jpg,1\nimg2.jpg,img3.png,0\n",  # three columns: the label's two neighbours are the images
    "Image 1\tImage 2\tSame\nimg1.jpg\timg2.jpg\ttrue\nimg2.jpg\timg3.png\tfalse\n",  # tab-separated
    "\ufeffimg1;img2;label\nimg1.jpg;img2.jpg;same\nimg2.jpg;img3.png;different\n",  # a spreadsheet's export
])
def test_pair_csvs_with_headers_read_by_column_name(text: str, flat_root: Path, tmp_path: Path) -> None:
    pairs_file = tmp_path / ("pairs.tsv" if "\t" in text else "pairs.csv")
    pairs_file.write_text(text, encoding="utf-8")
    pairs = read_pairs(pairs_file, flat_root)
    assert pairs.same == [True, False] and pairs.kind == "csv"
    assert pairs.first == [flat_root / "img1.jpg", flat_root / "img2.jpg"]
    assert pairs.second == [flat_root / "img2.jpg", flat_root / "img3.png"]


@pytest.mark.parametrize("text, message", [
    ("img1.jpg,img2.jpg,1\nimg1.jpg,img3.png,maybe\n", "line 2: the label must be 1/0, same/different, yes/no"),
    ("left,right,score\nimg1.jpg,img2.jpg,0.3\n", "no label column"),
    ("id,q,r,same\n1,img1.jpg,img2.jpg,1\n", "cannot tell which"),
    ("img1,img2,label\nimg1.jpg,1\n", "line 2: 2 columns, expected 3"),
    ("img1.jpg,../secret.jpg,1\n", "outside"),
    ("img1.jpg,ghost.jpg,1\n", "do not exist: "),
    ("Aaron 1 x2\n", "digits"),
    ("Aaron 1\nAaron 1 2\n", "line 1: expected"),
])
def test_a_bad_pairs_file_is_one_line_naming_the_line(text: str, message: str, flat_root: Path, tmp_path: Path) -> None:
    pairs_file = tmp_path / ("pairs.txt" if "," not in text else "pairs.csv")
    pairs_file.write_text(text)
    with pytest.raises(DataError, match=message):
        read_pairs(pairs_file, flat_root)
