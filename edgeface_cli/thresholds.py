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
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .atomic import read_json_object, write_json
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


# Precisions whose similarities agree to about 1e-3 (a float model run in fp32 or under autocast): a threshold
# carries across them. An int8 model's similarities move by more; it is measured on its own.
FLOAT_PRECISIONS = {"fp32", "fp16", "bf16"}


@dataclass(frozen=True)
class ModelFingerprint:
    """The one identity of a model in use: what every similarity it gives depends on.

    The weights (the SHA-256 of the bytes that were loaded, and the architecture), the whole preprocessing
    recipe (``ImageSettings.recipe``: normalisation, squaring or the aligner with its version; and the size),
    flip, and how it runs (precision, runtime or format). Thresholds, galleries and eval records are keyed by
    it: ``differences`` says what stands between two of them.
    """

    file: str  # the model file, resolved (where it was; the SHA-256 is what identifies it)
    sha256: str  # of the bytes loaded
    image_size: int
    preprocessing: str  # ImageSettings.recipe, e.g. "rgb/127.5-1 center_crop" or "rgb/127.5-1 mtcnn-v1 arcface112 best"
    flip: bool
    # An fp32 export computes its source checkpoint's embeddings (export checked it, min cosine >= 0.9999):
    # the source's SHA-256, so that a gallery enrolled with the run is matched with the file deployed from it.
    same_as_sha256: str | None = None
    arch: str | None = None  # the zoo variant, when known (an exported program says it in its sidecar)
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8
    runtime: str = "pytorch"  # pytorch | onnx | pt2 | torchscript

    @classmethod
    def of(cls, model_file: Path, sha256: str, image_size: int, preprocessing: str, flip: bool,
           same_as_sha256: str | None = None, arch: str | None = None, precision: str = "fp32",
           runtime: str = "pytorch") -> "ModelFingerprint":
        return cls(str(model_file.resolve()), sha256, image_size, preprocessing, flip, same_as_sha256, arch,
                   precision, runtime)

    @classmethod
    def from_json(cls, data: Any) -> "ModelFingerprint | None":
        try:
            same_as = data.get("same_as_sha256")
            return cls(str(data["file"]), str(data["sha256"]), int(data["image_size"]), str(data["preprocessing"]),
                       bool(data["flip"]), str(same_as) if same_as else None,
                       str(data["arch"]) if data.get("arch") else None, str(data.get("precision", "fp32")),
                       str(data.get("runtime", "pytorch")))
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
        if self.arch and other.arch and self.arch != other.arch:
            found.append(f"architecture {self.arch} vs {other.arch}")
        if self.preprocessing != other.preprocessing:
            found.append(f"preprocessing {self.preprocessing!r} vs {other.preprocessing!r}")
        if self.flip != other.flip:
            found.append(f"flip {'on' if self.flip else 'off'} vs {'on' if other.flip else 'off'}")
        if self.precision != other.precision and not {self.precision, other.precision} <= FLOAT_PRECISIONS:
            found.append(f"precision {self.precision} vs {other.precision}")
        return found


@dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # where it comes from, for the user
    far: float | None = None  # the false-accept rate it was chosen for, when it comes from an eval
    tar: float | None = None  # the true-accept rate measured there
    # Where it came from, for --explain and --json: the data (kind, path, SHA-256), the pairs it was chosen
    # from, the FAR asked for and the FAR those pairs resolve (about 1 / negatives).
    provenance: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "far": self.far, "tar": self.tar,
                "provenance": self.provenance}


def eval_record_path(model_file: Path, run_dir: Path | None) -> Path:
    """Where the eval of ``model_file`` is recorded (see the module docstring)."""
    if run_dir is not None and model_file.resolve().parent == run_dir.resolve():
        return run_dir / (EVAL_RESULT if model_file.name == "best.pt" else f"eval-{model_file.stem}.json")
    return model_file.with_name(model_file.name + ".eval.json")


def write_eval_record(path: Path, metrics: dict[str, Any], fingerprint: ModelFingerprint, val_dir: Path) -> Path:
    record = {"evaluated_at": datetime.now().isoformat(timespec="seconds"), "val_dir": str(val_dir.resolve()),
              "model": fingerprint.to_json(), **metrics}
    write_json(path, record)
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
    point = record.get("operating_point") if isinstance(record.get("operating_point"), dict) else {}
    detail = f"FAR {far:.3g}, TAR {tar:.1%}" if isinstance(far, (int, float)) and isinstance(tar, (int, float)) else "eval"
    if point.get("measurable") is False and point.get("note"):
        detail += f"; {point['note']}"  # the FAR asked for was not resolvable: the one used is named, never it
    provenance = {"eval_record": str(path), "evaluated_at": record.get("evaluated_at"),
                  "data": record.get("val_data") or {"path": record.get("val_dir")},
                  **{key: point.get(key) for key in ("positives", "negatives", "target_far", "far", "resolvable_far",
                                                     "measurable", "note")}}
    return Threshold(float(value), f"eval at {detail} ({path})", far, tar, provenance), str(path)
