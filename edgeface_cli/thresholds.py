"""Which similarity threshold belongs to which model: eval records bound to a model fingerprint.

A threshold decides who gets in, and it is only right for the model and preprocessing it was measured with:
another checkpoint (even of the same run), another image size, other preprocessing (aligned crops or centre
crops) or flip on/off all move the similarities. ``eval`` therefore records what it measured (the weights
file's SHA-256, image size, preprocessing, flip) beside its threshold, and ``verify``, ``identify``, ``enroll``
and ``export`` use a recorded threshold only for the same fingerprint; otherwise they say why there is none.

Where a record lives: a run's ``best.pt`` (the model a run directory stands for) -> ``RUN/eval.json``; another
file of a run -> ``RUN/eval-<stem>.json``; a checkpoint outside a run -> ``<file>.eval.json`` beside it.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, read_json_object
from .errors import DataError
from .rundir import EVAL_RESULT

_hashes: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for an unchanged file (size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if key in _hashes:
            return _hashes[key]
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    with _lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


@dataclass(frozen=True)
class ModelFingerprint:
    """What a similarity depends on: the weights and how images become the model's input."""

    file: str  # the weights file, resolved
    sha256: str
    image_size: int
    preprocessing: str  # ImageSettings.recipe: center_crop | stretch | mtcnn-arcface-best | ...
    flip: bool
    # An fp32 export computes its source checkpoint's embeddings (export checked it, min cosine >= 0.9999):
    # the source's SHA-256, so that a gallery enrolled with the run is matched with the file deployed from it.
    same_as_sha256: str | None = None

    @classmethod
    def of(cls, model_file: Path, image_size: int, preprocessing: str, flip: bool,
           same_as_sha256: str | None = None) -> "ModelFingerprint":
        return cls(str(model_file.resolve()), file_sha256(model_file), image_size, preprocessing, flip, same_as_sha256)

    @classmethod
    def from_json(cls, data: Any) -> "ModelFingerprint | None":
        try:
            same_as = data.get("same_as_sha256")
            return cls(str(data["file"]), str(data["sha256"]), int(data["image_size"]), str(data["preprocessing"]),
                       bool(data["flip"]), str(same_as) if same_as else None)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None

    def weights(self) -> set[str]:
        """The weights whose embeddings these are: the file's own, and its source's for an fp32 export."""
        return {self.sha256} | ({self.same_as_sha256} if self.same_as_sha256 else set())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: "ModelFingerprint") -> list[str]:
        """How ``other`` differs, in words (empty: the same model and preprocessing)."""
        found = []
        if not self.weights() & other.weights():
            found.append(f"other weights ({Path(self.file).name} {self.sha256[:12]} vs {Path(other.file).name} "
                         f"{other.sha256[:12]})")
        if self.image_size != other.image_size:
            found.append(f"image size {self.image_size} vs {other.image_size}")
        if self.preprocessing != other.preprocessing:
            found.append(f"preprocessing {self.preprocessing} vs {other.preprocessing}")
        if self.flip != other.flip:
            found.append(f"flip {'on' if self.flip else 'off'} vs {'on' if other.flip else 'off'}")
        return found


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # where it comes from, for the user
    far: float | None = None  # the false-accept rate it was chosen for, when it comes from an eval
    tar: float | None = None  # the true-accept rate measured there


def eval_record_path(model_file: Path, run_dir: Path | None) -> Path:
    """Where the eval of ``model_file`` is recorded (see the module docstring)."""
    if run_dir is not None and model_file.resolve().parent == run_dir.resolve():
        return run_dir / (EVAL_RESULT if model_file.name == "best.pt" else f"eval-{model_file.stem}.json")
    return model_file.with_name(model_file.name + ".eval.json")


def write_eval_record(path: Path, metrics: dict[str, Any], fingerprint: ModelFingerprint, val_dir: Path) -> Path:
    record = {"evaluated_at": datetime.now().isoformat(timespec="seconds"), "val_dir": str(val_dir.resolve()),
              "model": fingerprint.to_json(), **metrics}
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_eval_record(path: Path) -> dict[str, Any]:
    return read_json_object(path, "an eval record", "run edgeface eval again to rewrite it", DataError)


def recorded_threshold(fingerprint: ModelFingerprint, run_dir: Path | None) -> tuple[Threshold | None, str]:
    """(the threshold eval recorded for exactly this model and preprocessing, its source) or (None, why none)."""
    path = eval_record_path(Path(fingerprint.file), run_dir)
    how = f"edgeface eval --checkpoint {fingerprint.file} --val-dir DIR" + (" --flip" if fingerprint.flip else "")
    if not path.is_file():
        return None, f"{Path(fingerprint.file).name} has not been evaluated ({path.name} not found): run `{how}`"
    record = read_eval_record(path)
    measured = ModelFingerprint.from_json(record.get("model"))
    if measured is None:
        return None, f"{path} does not say which model it measured (an older edgeface wrote it): run `{how}`"
    differences = measured.differences(fingerprint)
    if differences:
        return None, (f"{path} was measured with {'; '.join(differences)} (recorded vs now): its threshold does not "
                      f"apply; run `{how}` with the same settings")
    value = record.get("operating_threshold")
    if not isinstance(value, (int, float)):
        return None, f"{path}: {record.get('threshold_reason') or 'eval found no usable threshold'}"
    far, tar = record.get("operating_far"), record.get("operating_tar")
    detail = f"FAR {far:g}, TAR {tar:.1%}" if isinstance(far, (int, float)) and isinstance(tar, (int, float)) else "eval"
    return Threshold(float(value), f"eval at {detail} ({path})", far, tar), str(path)
