"""`edgeface check-data`: what is wrong with a dataset, found before training.

Every check reads the same scan as ``train`` (and its decoded-image cache): unreadable files, empty
identities, exact duplicates (file content hash) and near duplicates (imagehash's perceptual hash of
the decoded pixels), split into within one identity (harmless), across identities (label noise) and
across train and val (leakage); identity sizes, image sizes, grayscale share, val identities unknown to
training; and, given a model, images closer to another identity than to their own. A ``.rec`` (``data.train_rec``)
gets its own checks (``_check_rec``): its records read and decoded, labels checked against its classes.

Near duplicates are found without comparing all pairs: two 64-bit hashes within Hamming distance d agree
exactly on at least one of d + 1 bands of bits (pigeonhole), so only images sharing a band value are
compared, vectorised.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import EdgeFaceConfig
from ..events import StepCallback, step_reporter
from .folder import ImageSettings, ScanResult, is_no_face, scan_image_folder
from .image_files import open_image
from .loaders import inference_loader
from .rec_dataset import RecSamples, scan_rec

PROBLEM, WARNING, INFO = "problem", "warning", "info"
TRAIN_FEW_IMAGES = 5  # fewer than this per training identity: a warning
LISTED = 20  # items kept per finding by default (the count covers all; check_data(listed=None) keeps every one)

@dataclass
class Finding:
    check: str
    severity: str  # problem | warning | info
    summary: str
    advice: str = ""
    count: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)  # the files involved (check_data keeps the first LISTED)

    @classmethod
    def listing(cls, check: str, severity: str, summary: str, advice: str, items: list[dict[str, Any]]) -> "Finding":
        """A finding about all of ``items`` (check_data keeps as many of them as it is asked to)."""
        return cls(check, severity, summary, advice, len(items), items)


@dataclass
class DataReport:
    findings: list[Finding]
    stats: dict[str, Any]

    @property
    def has_problems(self) -> bool:
        return any(finding.severity == PROBLEM for finding in self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"problems": self.has_problems, "stats": self.stats, "findings": [asdict(item) for item in self.findings]}


@dataclass
class Entry:
    path: Path
    split: str  # train | val
    identity: str


# ------------------------------------------------------------------ hashing


def content_hash(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


THUMB = 8  # side of the colour thumbnail that confirms a hash match
# A hash match is a near-duplicate only when the 8x8 colour thumbnails also differ by at most this mean
# absolute difference (grey levels): re-encoded or resized copies differ by 1-3; different photos of
# aligned faces, which share their low-frequency structure (and so often their pHash), by far more.
MAX_THUMB_DIFFERENCE = 8.0


def perceptual_hashes(scan: ScanResult, settings: ImageSettings, batch_size: int, workers: int,
                      progress: Callable[[int, int], None] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(64-bit pHash per image as uint64, 8x8 RGB thumbnail per image, grayscale flag per image), from the
    decoded pixels."""
    import imagehash

    loader = inference_loader(scan.samples, scan, settings, batch_size, workers, torch.device("cpu"))
    hashes, thumbs, gray = [], [], []
    for batch_index, (images, *_) in enumerate(loader):
        pixels = images.numpy()
        gray.append((pixels.max(axis=1) - pixels.min(axis=1) <= 2).mean(axis=(1, 2)) > 0.99)
        for image in pixels:
            picture = Image.fromarray(image.transpose(1, 2, 0))
            bits = imagehash.phash(picture).hash.reshape(-1)
            hashes.append(np.packbits(bits).view(">u8")[0])
            thumbs.append(np.asarray(picture.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.int16))
        if progress is not None:
            progress(batch_index + 1, len(loader))
    empty = np.zeros((0, THUMB, THUMB, 3), np.int16)
    return (np.array(hashes, dtype=np.uint64), np.stack(thumbs) if thumbs else empty,
            np.concatenate(gray) if gray else np.zeros(0, bool))


def same_colours(thumbs: np.ndarray, pairs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """The hash candidates whose colour thumbnails agree too (pHash alone ignores colour)."""
    return [(i, j, d) for i, j, d in pairs if np.abs(thumbs[i] - thumbs[j]).mean() <= MAX_THUMB_DIFFERENCE]


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


LARGE_BUCKET = 256  # a bucket this big is split again on its other bits, never compared all against all


def _close_pairs(hashes: np.ndarray, members: np.ndarray, may_differ: list[int], distance: int,
                 found: set[tuple[int, int]]) -> None:
    """Pairs of ``members`` within ``distance`` bits, knowing that they agree on every bit not in ``may_differ``.

    Pigeonhole: two hashes within d bits agree exactly on at least one of d + 1 groups of the bits where they
    may differ, so bucketing by each group finds every such pair. A bucket that is still large (aligned faces
    share many hash bits) is split again on the bits outside its group; small ones are compared pair by pair.
    """
    if len(members) <= LARGE_BUCKET or len(may_differ) <= distance + 1:
        left, right = np.triu_indices(len(members), 1)
        close = _popcount(hashes[members[left]] ^ hashes[members[right]]) <= distance
        found.update(zip(members[left][close].tolist(), members[right][close].tolist()))
        return
    for group in np.array_split(np.array(may_differ), distance + 1):
        mask = np.uint64(sum(1 << (63 - int(bit)) for bit in group))
        keys = hashes[members] & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends = np.r_[starts[1:], len(order)]
        in_group = set(group.tolist())
        rest = [bit for bit in may_differ if bit not in in_group]
        for start, end in zip(starts, ends):
            if end - start >= 2:
                _close_pairs(hashes, np.sort(members[order[start:end]]), rest, distance, found)


def near_pairs(hashes: np.ndarray, distance: int) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) of every pair within ``distance`` bits, i < j, by band bucketing."""
    if distance <= 0 or len(hashes) < 2:
        return []
    found: set[tuple[int, int]] = set()
    _close_pairs(hashes, np.arange(len(hashes)), list(range(64)), distance, found)
    if not found:
        return []
    pairs = np.array(sorted(found))
    distances = _popcount(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]])
    return [(int(i), int(j), int(d)) for (i, j), d in zip(pairs, distances)]


# ------------------------------------------------------------------ the checks


DUPLICATE_KINDS = {  # kind of duplicate pair: (check, severity, summary, advice)
    "across": ("duplicates across identities", PROBLEM,
               "{count} pairs of (near-)identical images are filed under two identities",
               "likely label noise: keep each photo under its one true identity (ArcFace punishes contradictions hard)"),
    "leak": ("train/val leakage", PROBLEM, "{count} val images are (near-)copies of training images",
             "remove them from val (or from train): val accuracy on copies of training images is inflated"),
    "within": ("duplicates within an identity", INFO, "{count} pairs of (near-)identical images within one identity",
               "harmless, but they add nothing: remove them to save time"),
}


def _duplicate_findings(images: list[Entry], exact: list[tuple[int, int]], near: list[tuple[int, int, int]]) -> list[Finding]:
    kinds: dict[str, list[dict[str, Any]]] = {"within": [], "across": [], "leak": []}
    pairs = [(i, j, 0, True) for i, j in exact] + [(i, j, distance, False) for i, j, distance in near]
    for i, j, distance, identical in pairs:
        first, second = images[i], images[j]
        kind = "leak" if first.split != second.split else ("within" if first.identity == second.identity else "across")
        kinds[kind].append({"first": str(first.path), "second": str(second.path), "hamming_distance": distance,
                            "identical_files": identical})
    return [Finding.listing(check, severity, summary.format(count=len(kinds[kind])), advice, kinds[kind])
            for kind, (check, severity, summary, advice) in DUPLICATE_KINDS.items() if kinds[kind]]


HISTOGRAM_EDGES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def identity_histogram(counts: np.ndarray) -> dict[str, int]:
    """How many identities have 1, 2-4, 5-9, ... images: the shape of a dataset's long tail."""
    bins = np.searchsorted(HISTOGRAM_EDGES, counts, side="right") - 1
    tally = np.bincount(bins, minlength=len(HISTOGRAM_EDGES))
    names = [f"{low}" if high - low == 1 else f"{low}-{high - 1}" for low, high in zip(HISTOGRAM_EDGES, HISTOGRAM_EDGES[1:])]
    names.append(f"{HISTOGRAM_EDGES[-1]}+")
    return {name: int(count) for name, count in zip(names, tally)}


def _count_findings(train: ScanResult, val: ScanResult | None, config: EdgeFaceConfig) -> tuple[list[Finding], dict[str, Any]]:
    findings = []
    stats: dict[str, Any] = {}
    minimum = config.data.min_images_per_identity
    for scan, split in ((train, "train"), (val, "val")):
        if scan is None:
            continue
        counts = np.bincount([sample.identity for sample in scan.samples], minlength=len(scan.classes))
        present = counts[counts > 0]  # a .rec's classes without images are their own finding
        stats[split] = {"images": int(counts.sum()), "identities": len(scan.classes), "per_identity_min": int(present.min()),
                        "per_identity_median": float(np.median(present)), "per_identity_max": int(present.max()),
                        "imbalance_ratio": float(present.max() / present.min()),
                        "per_identity_histogram": identity_histogram(present)}
        few_below = TRAIN_FEW_IMAGES if split == "train" else minimum
        few = [{"identity": name, "images": int(count)} for name, count in zip(scan.classes, counts) if count < few_below]
        if few:
            findings.append(Finding.listing(
                f"small {split} identities", WARNING,
                f"{len(few)} {split} identities have fewer than {few_below} images",
                "an identity needs several images to learn (train) or to form same-identity pairs (val, at least 2): "
                "add images or merge/remove the identity", few))
        no_face = [(path, why) for path, why in scan.unreadable if is_no_face(why)]
        unreadable = [(path, why) for path, why in scan.unreadable if not is_no_face(why)]
        if no_face:
            findings.append(Finding(
                f"{split} photos with no face found", PROBLEM, f"{len(no_face)} {split} photos have no face found",
                "training skips them; delete them, or look for smaller or fainter faces "
                "(--set data.min_face_size=12 or --set data.detection_threshold=0.8)",
                len(no_face), [{"file": str(path), "why": why} for path, why in no_face]))
        if unreadable:
            findings.append(Finding(
                f"unreadable {split} files", PROBLEM, f"{len(unreadable)} {split} files cannot be decoded",
                "training skips them; replace or delete them", len(unreadable),
                [{"file": str(path), "why": why} for path, why in unreadable]))
        if scan.empty_classes:
            findings.append(Finding(
                f"empty {split} identities", WARNING, f"{len(scan.empty_classes)} {split} identity folders have no readable image",
                "remove the folders, or add images", len(scan.empty_classes),
                [{"identity": name} for name in scan.empty_classes]))
    if val is not None:
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            findings.append(Finding(
                "val identities absent from training", INFO, f"{len(unknown)} val identities are not in train",
                "they count for similarity and verification only, not for closed-set accuracy (open-set evaluation)",
                len(unknown), [{"identity": name} for name in unknown]))
    return findings, stats


def _size_findings(images: list[Entry], settings: ImageSettings) -> tuple[list[Finding], dict[str, Any]]:
    sizes = []
    for image in images:
        try:
            with open_image(image.path) as opened:  # the header only: no decode
                sizes.append(opened.size)
        except Exception:  # noqa: BLE001 - decodable in the scan, so this cannot fail for a readable file in practice
            sizes.append((0, 0))
    array = np.array(sizes, dtype=float).reshape(-1, 2)
    shortest = array.min(axis=1)
    ratio = array.max(axis=1) / np.maximum(shortest, 1)
    target = settings.image_size
    small = shortest < target
    non_square = ratio > 1.02
    large = shortest > 4 * target
    stats = {"min_side_median": float(np.median(shortest)) if len(shortest) else None,
             "upscaled_share": float(small.mean()) if len(small) else 0.0,
             "non_square_share": float(non_square.mean()) if len(non_square) else 0.0,
             "aspect_ratio_max": float(ratio.max()) if len(ratio) else None}
    findings = []
    if small.any():
        findings.append(Finding(
            "small images", WARNING, f"{small.mean():.0%} of images are smaller than the training size ({target} px) and get upscaled",
            "upscaled faces are blurry: collect larger crops, or train at a smaller data.image_size", int(small.sum()),
            [{"file": str(images[i].path), "size": sizes[i]} for i in np.flatnonzero(small)]))
    if settings.align != "off":  # raw photos, aligned as they are decoded: their geometry is not what trains
        return findings, stats
    if non_square.any():
        findings.append(Finding(
            "non-square images", WARNING, f"{non_square.mean():.0%} of images are not square "
                                          f"(handled by data.non_square: center crop or stretch)",
            "EdgeFace expects square face crops: crop them square yourself", int(non_square.sum()),
            [{"file": str(images[i].path), "size": sizes[i]} for i in np.flatnonzero(non_square)]))
    if len(ratio) and (large.mean() > 0.2 or ratio.max() / max(ratio.min(), 1) > 1.5):
        findings.append(Finding(
            "not aligned face crops?", WARNING,
            "the images look like photos rather than aligned face crops (large sizes or mixed aspect ratios)",
            "align the faces first: edgeface align PHOTOS CROPS (MTCNN, 5 landmarks to 112×112, as EdgeFace "
            "was trained), then train on CROPS; or pass --align", int((large | non_square).sum()),
            [{"file": str(images[i].path), "size": sizes[i]} for i in np.flatnonzero(large | non_square)]))
    return findings, stats


def check_data(config: EdgeFaceConfig, model_findings: Callable[[Path], list[Finding]] | None = None,
               progress: StepCallback | None = None, listed: int | None = LISTED) -> DataReport:
    """Every check on ``config.data.train_dir`` (and ``val_dir``); ``model_findings(train_dir)`` adds the checks
    that need a model (``evaluation.label_noise``: a model's embeddings of the training images). Each finding
    keeps the first ``listed`` of its items (None: all of them); its count covers all."""
    data = config.data
    settings = ImageSettings.from_config(data)
    if data.train_rec is not None:
        return _limited(_check_rec(config, settings, progress), listed)
    assert data.train_dir is not None
    train = scan_image_folder(data.train_dir, "train", settings=settings,
                              progress=step_reporter(progress, "scanning train images"))
    val = (scan_image_folder(data.val_dir, "val", settings=settings, progress=step_reporter(progress, "scanning val images"))
           if data.val_dir is not None else None)
    images = [Entry(sample.path, "train", train.classes[sample.identity]) for sample in train.samples]
    if val is not None:
        images += [Entry(sample.path, "val", val.classes[sample.identity]) for sample in val.samples]
    findings, stats = _count_findings(train, val, config)
    # Exact duplicates: equal file contents.
    by_content: dict[str, list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_content[content_hash(image.path)].append(index)
        if progress is not None and (index + 1) % 1000 == 0:
            progress("hashing files", index + 1, len(images))
    exact = [(group[0], other) for group in by_content.values() if len(group) > 1 for other in group[1:]]
    exact_set = set(exact)
    hashes, thumbs, gray = perceptual_hashes(train, settings, data.batch_size, data.workers,
                                             step_reporter(progress, "perceptual hashes (train)"))
    if val is not None:
        val_hashes, val_thumbs, val_gray = perceptual_hashes(val, settings, data.batch_size, data.workers,
                                                             step_reporter(progress, "perceptual hashes (val)"))
        hashes, thumbs = np.concatenate([hashes, val_hashes]), np.concatenate([thumbs, val_thumbs])
        gray = np.concatenate([gray, val_gray])
    same_content = {index for group in by_content.values() if len(group) > 1 for index in group[1:]}
    near = [(i, j, d) for i, j, d in same_colours(thumbs, near_pairs(hashes, data.near_duplicate_distance))
            if (i, j) not in exact_set and not (i in same_content and j in same_content)]
    findings += _duplicate_findings(images, exact, near)
    size_findings, size_stats = _size_findings(images, settings)
    findings += size_findings
    stats.update(size_stats, grayscale_share=float(gray.mean()) if len(gray) else 0.0,
                 exact_duplicate_pairs=len(exact), near_duplicate_pairs=len(near))
    if len(gray) and gray.mean() > 0:
        findings.append(Finding(
            "grayscale images", INFO if gray.mean() < 0.5 else WARNING, f"{gray.mean():.0%} of images are grayscale",
            "fine in moderation; if most images are grayscale, so should be the ones the model will see",
            int(gray.sum()), [{"file": str(images[i].path)} for i in np.flatnonzero(gray)]))
    if model_findings is not None:
        findings += model_findings(data.train_dir)
    return _limited(DataReport(findings, stats), listed)


def _limited(report: DataReport, listed: int | None) -> DataReport:
    """Problems first, each finding keeping its first ``listed`` items (None: all)."""
    if listed is not None:
        for finding in report.findings:
            finding.items = finding.items[:listed]
    order = {PROBLEM: 0, WARNING: 1, INFO: 2}
    return DataReport(sorted(report.findings, key=lambda finding: order[finding.severity]), report.stats)


def _check_rec(config: EdgeFaceConfig, settings: ImageSettings, progress: StepCallback | None) -> DataReport:
    """A .rec's checks: counts and the per-identity histogram, corrupt, undecodable or out-of-range records, classes
    without images, near duplicates across identities and against val (perceptual hashes of the decoded crops)."""
    data = config.data
    assert data.train_rec is not None
    train = scan_rec(data.train_rec, "train", settings, step_reporter(progress, "reading train records"), strict=False)
    val = (scan_image_folder(data.val_dir, "val", class_names=train.classes, settings=settings,
                             progress=step_reporter(progress, "scanning val images")) if data.val_dir is not None else None)
    findings, stats = _count_findings(train, val, config)
    stats["train"]["classes"] = len(train.classes)
    if train.height is not None:
        stats["train"]["crop_size"] = [train.height, train.width]
    if train.problems:
        findings.append(Finding(
            "corrupt or out-of-range train records", PROBLEM,
            f"{len(train.problems)} records of {train.root} are damaged, do not decode, or carry a label that is not a class",
            "training refuses the file while they are there: pack the images again (edgeface pack), or fetch the "
            "dataset again", len(train.problems),
            [{"file": f"record {key}", "why": why} for key, why in train.problems]))
    samples = train.samples
    assert isinstance(samples, RecSamples)
    images = [Entry(Path(f"{train.root}#{key}"), "train", str(label)) for key, label in
              zip(samples.keys.tolist(), samples.labels.tolist())]
    hashes, thumbs, gray = perceptual_hashes(train, settings, data.batch_size, data.workers,
                                             step_reporter(progress, "perceptual hashes (train)"))
    if val is not None:
        images += [Entry(sample.path, "val", val.classes[sample.identity]) for sample in val.samples]
        val_hashes, val_thumbs, _ = perceptual_hashes(val, settings, data.batch_size, data.workers,
                                                      step_reporter(progress, "perceptual hashes (val)"))
        hashes, thumbs = np.concatenate([hashes, val_hashes]), np.concatenate([thumbs, val_thumbs])
    near = same_colours(thumbs, near_pairs(hashes, data.near_duplicate_distance))
    findings += _duplicate_findings(images, [], near)
    stats.update(grayscale_share=float(gray.mean()) if len(gray) else 0.0, near_duplicate_pairs=len(near))
    return DataReport(findings, stats)
