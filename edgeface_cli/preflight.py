"""Checks that need no model: run before torch is imported, so a wrong path is answered at once.

Each raises the same typed error the deeper code would, naming the problem and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

from .errors import CheckpointError, DataError, MissingExtraError, RunDirError

HEIF_EXTENSIONS = {".heic", ".heif"}  # phone photos: read through the optional pillow-heif plugin
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", *HEIF_EXTENSIONS}
IMAGE_KINDS = ", ".join(sorted(extension[1:] for extension in IMAGE_EXTENSIONS))  # for messages
SYSTEM_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}  # written by file browsers, never photos


def is_system_file(path: Path) -> bool:
    """Hidden files (.DS_Store, ._x.jpg) and the files Windows and macOS leave in photo folders."""
    return path.name.startswith(".") or path.name.lower() in SYSTEM_FILES


EXPORT_SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts", "safetensors": ".safetensors",
                   "openvino": ".xml", "tflite": ".tflite", "ncnn": ".ncnn.param", "coreml": ".mlpackage"}
# The optional extra each format needs and the packages it brings: found (not imported: litert-torch takes
# seconds) before any model loads, so that a missing one is one line at once.
EXPORT_EXTRAS = {"onnx": ("export", ("onnx", "onnxscript", "onnxruntime")), "openvino": ("openvino", ("openvino",)),
                 "tflite": ("tflite", ("litert_torch", "ai_edge_litert")), "ncnn": ("ncnn", ("pnnx", "ncnn")),
                 "coreml": ("coreml", ("coremltools",))}
# --int8: static int8 from calibration images, and what each needs beyond its format's own packages.
INT8_FORMATS = ("onnx", "openvino", "tflite")
INT8_EXTRAS = {"openvino": ("nncf",), "tflite": ("ai_edge_quantizer",)}
STATIC_BATCH_FORMATS = ("onnx", "openvino", "tflite")  # any fixed N; pt2 only 1; the others take any batch as written


def module_installed(name: str) -> bool:
    """``name`` can be imported here, found without importing it (a module set to None in ``sys.modules``, as an
    environment that hides one does, counts as absent)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_export_request(fmt: str, int8: bool, static_batch: int | None = None) -> None:
    """A format export writes, its extra installed, int8 only for ONNX, OpenVINO and LiteRT, a static batch the
    format can have (checked before any model is loaded)."""
    if fmt not in EXPORT_SUFFIXES:
        raise DataError(f"--format {fmt}: use one of {', '.join(EXPORT_SUFFIXES)}")
    if int8 and fmt not in INT8_FORMATS:
        raise DataError(f"--int8 quantises onnx, openvino and tflite models, not {fmt}: pass --format onnx, openvino "
                        "or tflite")
    extra, modules = EXPORT_EXTRAS.get(fmt, ("", ()))
    missing = next((module for module in (*modules, *(INT8_EXTRAS.get(fmt, ()) if int8 else ()))
                    if not module_installed(module)), None)
    if missing is not None:
        raise MissingExtraError(f"--format {fmt}{' --int8' if int8 else ''}", extra, missing)
    if static_batch is not None and not (static_batch >= 1 and fmt in STATIC_BATCH_FORMATS
                                         or (fmt == "pt2" and static_batch == 1)):
        raise DataError(f"--static-batch {static_batch}: an onnx, openvino or tflite file takes any static batch, a "
                        "pt2 archive only 1 (its runner cannot pad a last, smaller batch); "
                        + ("an ncnn file has no batch axis (one image per extractor)" if fmt == "ncnn"
                           else f"{fmt} files take any batch"))


def int8_path(out: Path) -> Path:
    """Where ``--int8`` writes the quantised model: beside the fp32 one (``model.onnx`` -> ``model.int8.onnx``,
    ``model.xml`` -> ``model.int8.xml`` with its ``model.int8.bin``)."""
    return out.with_name(f"{out.stem}.int8{out.suffix}")


# Folder names that mean a split of a dataset, never a person: a "train" folder that holds identity folders
# is a split given where its parent was expected.
SPLIT_NAMES = ("train", "val", "valid", "validation", "test", "gallery", "probe")
_SPLIT_FLAGS = {"train": "--train-dir", "val": "--val-dir", "valid": "--val-dir", "validation": "--val-dir",
                "test": "--val-dir", "gallery": "GALLERY_DIR", "probe": "--val-dir"}


def _holds_identity_folders(folder: Path) -> bool:
    """``folder`` holds folders and no image directly: a tree of identities, not one person's photos."""
    try:
        entries = [entry for entry in folder.iterdir() if not is_system_file(entry)]
    except OSError:
        return False
    return (any(entry.is_dir() for entry in entries)
            and not any(entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS for entry in entries))


def split_folders(root: Path) -> list[Path]:
    """The folders of ``root`` that are dataset splits (named like one, and holding identity folders
    themselves), not identities; empty for an ordinary identity tree, even one with a person called "train"."""
    found = [entry for entry in root.iterdir()
             if not is_system_file(entry) and entry.is_dir() and entry.name.lower() in SPLIT_NAMES
             and _holds_identity_folders(entry)]
    return sorted(found, key=lambda entry: (SPLIT_NAMES.index(entry.name.lower()), entry.name))  # train, val, test


def _split_advice(splits: list[Path], role: str) -> str:
    """The flags that take these splits: the one of ``role`` first, then the others this command has."""
    flag_of_role = {"train": "--train-dir", "val": "--val-dir", "holdout": "--holdout-dir", "gallery": "GALLERY_DIR"}
    wanted = flag_of_role.get(role)
    command_flags = ({"--train-dir", "--val-dir"} if role in ("train", "val")
                     else {wanted} if wanted else set())
    advice: dict[str, Path] = {}
    for split in splits:  # in SPLIT_NAMES order: val before test; the first split per flag is the one named
        flag = _SPLIT_FLAGS[split.name.lower()]
        if flag in command_flags and flag not in advice:
            advice[flag] = split
    if wanted is not None and wanted not in advice:  # held-out identities are a test split's, a gallery its own
        preferred = {"holdout": ("test", "probe"), "gallery": ("gallery", "train")}.get(role, ())
        named = {split.name.lower(): split for split in splits}
        advice = {wanted: next((named[name] for name in preferred if name in named), splits[0])} | advice
    ordered = sorted(advice.items(), key=lambda item: item[0] != wanted)
    return " ".join(f"{path} as GALLERY_DIR" if flag == "GALLERY_DIR" else f"{flag} {path}" for flag, path in ordered)


def check_image_folder(root: Path, role: str) -> None:
    """An existing folder of identity folders: the scan's first check, shared with preflight."""
    if not root.exists():
        flag = f" with --{role}-dir" if role in ("train", "val") else ""
        raise DataError(f"{role} dir not found: {root}; pass an existing folder{flag}")
    if not root.is_dir():
        raise DataError(f"{role} dir {root} is a file, not a folder of identity folders")
    entries = [entry for entry in root.iterdir() if not is_system_file(entry)]
    if not any(entry.is_dir() for entry in entries):
        images = sum(entry.suffix.lower() in IMAGE_EXTENSIONS for entry in entries)
        found = f" holds {images} images directly but" if images else ""
        raise DataError(f"{role} dir {root}{found} has no identity folders: put each person's images in a folder of "
                        f"their own ({root}/<name>/<image>.jpg)")
    splits = split_folders(root)
    if splits:
        # Training on the "identities" train and val would put every val photo into training.
        names = ", ".join(split.name for split in splits)
        raise DataError(f"{role} dir {root} holds the split folder(s) {names}, each a tree of identity folders, not "
                        f"one person's photos: pass the splits themselves ({_split_advice(splits, role)})")


def check_writable_folder(folder: Path, what: str) -> None:
    """``folder`` exists and is writable, or can be created in its nearest existing parent."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirError(f"cannot create {what} {folder}: {probe} is a file; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "it" if probe == folder else f"its parent {probe}"
        raise RunDirError(f"cannot write {what} {folder}: {where} is not writable; choose another path")


def check_output_file(path: Path, force: bool, inputs: Iterable[Path | None] = ()) -> None:
    """The one output rule (``atomic.output_file``), before any slow work: an existing file needs --force, a
    command never writes over its own input, a folder is no output file."""
    from .atomic import output_file

    output_file(path, force=force, inputs=[item for item in inputs if item is not None])


def check_training_inputs(train_dir: Path | None, val_dir: Path | None, out: Path | None,
                          checkpoint: Path | None = None, holdout_dir: Path | None = None,
                          val_bins: list[Path] | None = None) -> None:
    if train_dir is None:
        raise DataError("no training data: pass --train-dir DIR (one folder per identity)")
    check_image_folder(train_dir, "train")
    if val_dir is not None:
        check_image_folder(val_dir, "val")
    if holdout_dir is not None:
        check_image_folder(holdout_dir, "holdout")
    for path in val_bins or []:
        if not path.is_file():
            raise DataError(f"--val-bin {path}: not found; pass an insightface .bin file (lfw.bin, cfp_fp.bin, ...)")
    if checkpoint is not None and not checkpoint.is_file():
        what = "is a folder, not a checkpoint file" if checkpoint.is_dir() else "not found"
        raise DataError(f"--edgeface {checkpoint}: {what}; pass the downloaded EdgeFace checkpoint (edgeface_xxs.pt, ...)")
    check_writable_folder(out or Path("runs"), "the run directory")


# ------------------------------------------------------------------ model files and photos, judged by their bytes

CHECKPOINT_FIX_HINT = "pass a checkpoint saved with torch.save(model.state_dict(), PATH) or a .safetensors file"
EXPORTED_SUFFIXES = (".onnx", ".pt2", ".xml", ".tflite", ".param")  # exports run as they are, never read as weights
SNIFF_BYTES = 4096


def sniff_model_file(path: Path) -> str:
    """Which reader a model file needs, from its bytes rather than its name: torch, torchscript, safetensors,
    or what it is instead (gallery, npz, text, unknown). Reads bytes only: no torch, no unpickling."""
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except Exception:  # noqa: BLE001 - BadZipFile, undecodable names, ...: torch.load reports the corruption
            return "torch"
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            return "torchscript"
        if {"meta.npy", "centroids.npy"} <= set(names):
            return "gallery"
        if names and all(name.endswith(".npy") for name in names):
            return "npz"
        return "torch"
    if head[:1] == b"\x80":  # pickle protocol marker: legacy torch.save
        return "torch"
    if len(head) >= 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if 0 < header_size < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if _is_text(head):
        return "text"
    return "unknown"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


PROGRAM_REFUSAL = ("{path} is a {kind} archive: a program, and loading it runs the code it carries. edgeface "
                   "loads it only with --trust-code; the safe formats are data (.pt state_dicts, .safetensors, "
                   ".onnx): re-save it as one (edgeface export --format safetensors, or "
                   "torch.save(model.state_dict(), 'clean.pt') where you trust it)")


def refuse_program(path: Path, kind: str) -> CheckpointError:
    """The one refusal of a file that runs code when loaded (``kind``: TorchScript or torch.export (.pt2))."""
    return CheckpointError(PROGRAM_REFUSAL.format(path=path, kind=kind))


def check_checkpoint_file(path: Path, trust_code: bool = False) -> str:
    """What ``read_checkpoint`` refuses before it reads a tensor (missing, a folder, empty, an export, a
    gallery, embeddings, text, unknown bytes, and a TorchScript program unless ``trust_code``), with its
    messages; returns the kind :func:`sniff_model_file` found."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; check the path given to --edgeface/--checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not finish")
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        raise CheckpointError(f"{path} is an exported model (edgeface export writes these), not weights to inspect or "
                              "load; embed, verify, enroll, identify and eval run it as it is")
    kind = sniff_model_file(path)
    if kind == "gallery":
        raise CheckpointError(f"{path} is a gallery written by edgeface enroll (enrolled identities), not a checkpoint; "
                              "pass the model that enrolled it, or a run directory")
    if kind == "npz":
        raise CheckpointError(f"{path} is a numpy archive (edgeface embed writes these: embeddings), not a checkpoint")
    if kind == "text":
        raise CheckpointError(f"{path} is a text file, not a checkpoint; {CHECKPOINT_FIX_HINT}")
    if kind == "unknown":
        raise CheckpointError(f"{path} is not a checkpoint format edgeface knows; {CHECKPOINT_FIX_HINT}")
    if kind == "torchscript" and not trust_code:
        raise refuse_program(path, "TorchScript")
    return kind


def check_model_path(path: Path, trust_code: bool = False) -> None:
    """What ``load_model`` refuses before torch is needed: a path that is no model in any format (missing, a
    folder without best.pt, an empty file, text, bytes of no format) and, unless ``trust_code``, a program
    (TorchScript, pt2). Exported ONNX files are run as they are: only an empty one is refused here."""
    if not path.exists():
        raise CheckpointError(f"model not found: {path}; pass a run directory, a checkpoint or an exported model")
    if path.is_dir():
        best = path / "best.pt"
        if not best.is_file():
            raise CheckpointError(f"{path} has no best.pt; pass a run directory of `edgeface train` or a checkpoint file")
        path = best
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        if path.stat().st_size == 0:
            raise CheckpointError(f"exported model {path} is empty (0 bytes): the export or copy did not finish")
        if path.suffix.lower() == ".pt2" and not trust_code:
            raise refuse_program(path, "torch.export (.pt2)")
        return
    check_checkpoint_file(path, trust_code)


# The first bytes of the formats photos come in; PIL decodes by content, so any of them under any image suffix.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*",
                    b"II+\x00", b"MM\x00+")


def image_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a photo, judged without a decoder (its suffix, its size, text where pixels should
    be), or None when only decoding can tell; the decoder's verdict stays the final word."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    with path.open("rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if not head:
        return "empty file (0 bytes)"
    riff_webp = head.startswith(b"RIFF") and head[8:12] == b"WEBP"
    iso_media = head[4:8] == b"ftyp"  # HEIC/HEIF/AVIF
    if head.startswith(IMAGE_SIGNATURES) or riff_webp or iso_media:
        return None
    if _is_text(head):
        return f"not an image: the file holds text (an image is one of {IMAGE_KINDS})"
    return None


def identities_removal_problem(identities: list[str], names: list[str]) -> str | None:
    """Why ``enroll --remove names`` cannot change a gallery of ``identities`` (unknown names, or all of them)."""
    unknown = sorted(set(names) - set(identities))
    if unknown:
        return f"not in the gallery: {', '.join(unknown[:10])} (it holds {len(identities)} identities)"
    if not set(identities) - set(names):
        return "that would remove every identity; delete the gallery file instead"
    return None
