"""Pairs files for ``eval --pairs``: which two images, and whether they show the same person.

Every listed image must lie inside the --val-dir root (``_inside``): a pairs file is data, and data never
leads the tool to read files elsewhere.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..data.folder import IMAGE_EXTENSIONS
from ..errors import DataError


@dataclass
class PairList:
    first: list[Path]
    second: list[Path]
    same: list[bool]


def _inside(root: Path, path: Path, pairs_file: Path, line: int) -> Path:
    """A listed image, refused when it is absolute or leads out of the --val-dir root (``../``)."""
    if "\x00" in str(path):
        raise DataError(f"{pairs_file} line {line}: a path holds a NUL byte; is this a pairs file?")
    if path.is_absolute() or not (root / path).resolve().is_relative_to(root.resolve()):
        raise DataError(f"{pairs_file} line {line}: {path} is outside {root}; pairs name images inside --val-dir")
    return root / path


def _lfw_image(root: Path, name: str, number: str) -> Path:
    stem = f"{name}_{int(number):04d}"
    for extension in sorted(IMAGE_EXTENSIONS):
        candidate = root / name / f"{stem}{extension}"
        if candidate.exists():
            return candidate
    return root / name / f"{stem}.jpg"


def read_pairs(pairs_file: Path, root: Path) -> PairList:
    """LFW ``pairs.txt`` (``name i j`` / ``name1 i name2 j``) or CSV ``path1,path2,same``."""
    if not pairs_file.is_file():
        raise DataError(f"pairs file not found: {pairs_file}")
    text = pairs_file.read_text(encoding="utf-8", errors="replace")
    pairs = PairList([], [], [])
    if pairs_file.suffix.lower() == ".csv":
        try:
            rows = list(csv.reader(text.splitlines()))
        except csv.Error as exc:
            raise DataError(f"{pairs_file} is not a valid CSV file ({exc}); expected path1,path2,same") from None
        for row_number, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise DataError(f"{pairs_file} line {row_number}: expected path1,path2,same")
            flag = row[2].strip().lower()
            if flag not in {"0", "1", "true", "false"}:
                if row_number == 1:
                    continue  # a header
                raise DataError(f"{pairs_file} line {row_number}: 'same' must be 1/0 or true/false, not {row[2]!r}")
            first, second = (_inside(root, Path(cell.strip()), pairs_file, row_number) for cell in row[:2])
            pairs.first.append(first)
            pairs.second.append(second)
            pairs.same.append(flag in {"1", "true"})
    else:
        for line_number, line in enumerate(text.splitlines(), 1):
            tokens = line.split()
            if not tokens or all(token.isdigit() for token in tokens):
                continue  # blank line or the "10 300" header
            numbers = tokens[1:] if len(tokens) == 3 else tokens[1::2]
            if len(tokens) in (3, 4) and not all(number.isdigit() for number in numbers):
                raise DataError(f"{pairs_file} line {line_number}: image numbers must be digits, not {' '.join(numbers)!r}")
            if len(tokens) in (3, 4):
                for name in tokens[::2] if len(tokens) == 4 else tokens[:1]:
                    _inside(root, Path(name), pairs_file, line_number)
            if len(tokens) == 3:
                name, first, second = tokens
                pairs.first.append(_lfw_image(root, name, first))
                pairs.second.append(_lfw_image(root, name, second))
                pairs.same.append(True)
            elif len(tokens) == 4:
                pairs.first.append(_lfw_image(root, tokens[0], tokens[1]))
                pairs.second.append(_lfw_image(root, tokens[2], tokens[3]))
                pairs.same.append(False)
            else:
                raise DataError(f"{pairs_file} line {line_number}: expected 'name i j' or 'name1 i name2 j'")
    if not pairs.same:
        raise DataError(f"{pairs_file} lists no pairs")
    missing = sorted({str(path) for path in pairs.first + pairs.second if not path.is_file()})
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{len(missing)} images named in {pairs_file} do not exist: {', '.join(missing[:5])}{more}")
    return pairs
