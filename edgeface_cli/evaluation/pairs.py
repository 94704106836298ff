"""Pairs files for ``eval --pairs``: which two images, and whether they show the same person.

Read as people have them:

* LFW's ``pairs.txt`` (and pairsDevTrain/Test): ``name n1 n2`` (same person) and ``name1 n1 name2 n2``
  (different people), with or without the header line (``10 300``); images are ``ROOT/name/name_0001.jpg``
  (any image suffix).
* CSV (or tab- or semicolon-separated) pair lists: ``path1,path2,label`` without a header, or with a header
  naming the columns as deepface and others do (``img1,img2,decision``; ``file_x,file_y,label``;
  ``path1,path2,same``; extra columns are ignored). Paths are relative to ROOT (a flat folder will do).
* Labels spelt 1/0, same/different, yes/no, true/false (any case; also y/n, match/mismatch,
  genuine/impostor).

Every error is a DataError naming the line, raised before any model is loaded. Every listed image must lie
inside the ROOT (``_inside``): a pairs file is data, and data never leads the tool to read files elsewhere.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..data.folder import IMAGE_EXTENSIONS
from ..errors import DataError

SAME_LABELS = frozenset({"1", "1.0", "true", "t", "yes", "y", "same", "match", "matched", "genuine", "positive"})
DIFFERENT_LABELS = frozenset({"0", "0.0", "-1", "false", "f", "no", "n", "different", "diff", "mismatch", "mismatched",
                              "impostor", "imposter", "negative"})
LABEL_SPELLINGS = "1/0, same/different, yes/no or true/false"
# Header names of the label column (lower case, spaces and dashes as underscores), most specific first.
LABEL_COLUMNS = ("same", "is_same", "issame", "label", "decision", "match", "is_match", "genuine", "target", "y")
# A header cell naming an image column contains one of these.
IMAGE_COLUMN_WORDS = ("img", "image", "path", "file", "face", "photo", "picture", "pic")
IMAGE_COLUMN_NAMES = frozenset({"a", "b", "left", "right", "first", "second", "x", "p1", "p2", "probe", "reference"})
DIGITS = re.compile(r"[0-9]{1,9}")


@dataclass
class PairList:
    first: list[Path]
    second: list[Path]
    same: list[bool]
    kind: str = "csv"  # "lfw" (pairs.txt) or "csv"
    sha256: str = ""  # of the file's bytes: which list the figures were measured on


def _inside(root: Path, path: Path, pairs_file: Path, line: int) -> Path:
    """A listed image, refused when it is absolute or leads out of the --val-dir root (``../``)."""
    if "\x00" in str(path):
        raise DataError(f"{pairs_file} line {line}: a path holds a NUL byte; is this a pairs file?")
    try:
        outside = path.is_absolute() or not (root / path).resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # a name the file system cannot even resolve (too long, a loop)
        raise DataError(f"{pairs_file} line {line}: {str(path)[:80]!r} is not a usable path") from None
    if outside:
        raise DataError(f"{pairs_file} line {line}: {path} is outside {root}; pairs name images inside --val-dir")
    return root / path


def _lfw_image(root: Path, name: str, number: str) -> Path:
    stem = f"{name}_{int(number):04d}"
    for extension in sorted(IMAGE_EXTENSIONS):
        candidate = root / name / f"{stem}{extension}"
        if candidate.exists():
            return candidate
    return root / name / f"{stem}.jpg"


def parse_label(cell: str) -> bool | None:
    """True (same person), False (different people), or None: not a label."""
    word = cell.strip().strip('"').lower()
    return True if word in SAME_LABELS else False if word in DIFFERENT_LABELS else None


def _column_name(cell: str) -> str:
    return re.sub(r"[\s\-]+", "_", cell.strip().strip('"').lower())


def _header_columns(header: list[str], pairs_file: Path) -> tuple[int, int, int]:
    """(first image, second image, label) column indices named by a header row."""
    names = [_column_name(cell) for cell in header]
    label = next((names.index(name) for name in LABEL_COLUMNS if name in names), None)
    if label is None:
        raise DataError(f"{pairs_file} line 1: no label column among {', '.join(header)}; name it same, label or "
                        f"decision ({LABEL_SPELLINGS})")
    images = [index for index, name in enumerate(names) if index != label and
              (name in IMAGE_COLUMN_NAMES or any(word in name for word in IMAGE_COLUMN_WORDS))]
    if len(images) < 2 and len(names) == 3:
        images = [index for index in range(3) if index != label]
    if len(images) < 2:
        raise DataError(f"{pairs_file} line 1: cannot tell which of {', '.join(header)} are the two images; name them "
                        "img1,img2 (or path1,path2)")
    return images[0], images[1], label


def _names_columns(row: list[str]) -> bool:
    """A first row such as ``path1,path2,same``: its last cell reads as a label, yet it names columns (its first
    cell is no image file)."""
    return (_column_name(row[2]) in LABEL_COLUMNS
            and Path(row[0].strip()).suffix.lower() not in IMAGE_EXTENSIONS)


def _delimiter(first_line: str) -> str:
    return next((mark for mark in (",", "\t", ";") if mark in first_line), ",")


def _read_table(text: str, pairs_file: Path, root: Path, pairs: PairList) -> None:
    lines = text.splitlines()
    first_line = next((line for line in lines if line.strip()), "")
    try:
        rows = list(csv.reader(lines, delimiter=_delimiter(first_line)))
    except csv.Error as exc:
        raise DataError(f"{pairs_file} is not a valid CSV file ({exc}); expected img1,img2,label") from None
    columns: tuple[int, int, int] | None = None
    for row_number, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if columns is None:
            if len(row) == 3 and parse_label(row[2]) is not None and not _names_columns(row):
                columns = (0, 1, 2)  # no header: path1,path2,label
            else:
                columns = _header_columns(row, pairs_file)
                continue
        if len(row) <= max(columns):
            raise DataError(f"{pairs_file} line {row_number}: {len(row)} columns, expected {max(columns) + 1} "
                            "(img1,img2,label)")
        same = parse_label(row[columns[2]])
        if same is None:
            raise DataError(f"{pairs_file} line {row_number}: the label must be {LABEL_SPELLINGS}, not "
                            f"{row[columns[2]][:40]!r}")
        first, second = (_inside(root, Path(row[column].strip()), pairs_file, row_number) for column in columns[:2])
        pairs.first.append(first)
        pairs.second.append(second)
        pairs.same.append(same)


def _read_lfw(text: str, pairs_file: Path, root: Path, pairs: PairList) -> None:
    lines = text.splitlines()
    first_line = next((number for number, line in enumerate(lines, 1) if line.split()), 0)
    for line_number, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens or (line_number == first_line and len(tokens) <= 2
                          and all(DIGITS.fullmatch(token) for token in tokens)):
            continue  # a blank line, or the header ("10 300": sets and pairs per set; "1100" in pairsDevTrain)
        if len(tokens) not in (3, 4):
            raise DataError(f"{pairs_file} line {line_number}: expected 'name n1 n2' or 'name1 n1 name2 n2'")
        numbers = tokens[1:] if len(tokens) == 3 else tokens[1::2]
        if not all(DIGITS.fullmatch(number) for number in numbers):
            raise DataError(f"{pairs_file} line {line_number}: image numbers must be digits, not {' '.join(numbers)!r}")
        names = tokens[:1] if len(tokens) == 3 else tokens[::2]
        for name in names:
            _inside(root, Path(name), pairs_file, line_number)
        if len(tokens) == 3:
            pairs.first.append(_lfw_image(root, tokens[0], tokens[1]))
            pairs.second.append(_lfw_image(root, tokens[0], tokens[2]))
            pairs.same.append(True)
        else:
            pairs.first.append(_lfw_image(root, tokens[0], tokens[1]))
            pairs.second.append(_lfw_image(root, tokens[2], tokens[3]))
            pairs.same.append(tokens[0] == tokens[2])  # LFW's mismatched lines name two people


def _is_table(pairs_file: Path, text: str) -> bool:
    """A CSV/TSV by its suffix; a .txt whose first line is comma- or semicolon-separated is one too."""
    if pairs_file.suffix.lower() in {".csv", ".tsv"}:
        return True
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    return "," in first_line or ";" in first_line


def read_pairs(pairs_file: Path, root: Path) -> PairList:
    """The pairs ``pairs_file`` lists (module docstring), every image checked to exist inside ``root``."""
    if not pairs_file.is_file():
        raise DataError(f"pairs file not found: {pairs_file}")
    data = pairs_file.read_bytes()
    if b"\x00" in data:
        raise DataError(f"{pairs_file} holds binary data; a pairs file is text (LFW pairs.txt or a CSV)")
    text = data.decode("utf-8", errors="replace").lstrip("\ufeff")  # a spreadsheet's byte-order mark
    table = _is_table(pairs_file, text)
    pairs = PairList([], [], [], "csv" if table else "lfw", hashlib.sha256(data).hexdigest())
    (_read_table if table else _read_lfw)(text, pairs_file, root, pairs)
    if not pairs.same:
        raise DataError(f"{pairs_file} lists no pairs")
    missing = sorted({str(path) for path in pairs.first + pairs.second if not path.is_file()})
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} images named in {pairs_file} do not exist: {', '.join(missing[:5])}{more}")
    return pairs
