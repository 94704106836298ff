"""1:N recognition: a gallery of enrolled identities (``enroll``), probes matched against it
(``identify``), and the open-set metrics of a labelled probe set.

A probe is compared with each identity's mean embedding (the L2-normalised mean of its enrolled
images); below the threshold it is "unknown". Open-set metrics follow the usual protocol: rank-1
accuracy over probes whose identity is enrolled, and the detection-and-identification rate (DIR: found,
ranked first, and above the threshold) at the threshold where a given share of non-enrolled probes
would be falsely accepted (the false-alarm rate, FAR).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_stream, strict_json
from ..errors import DataError
from ..preflight import identities_removal_problem
from ..evaluation.metrics import class_centroids
from ..thresholds import ModelFingerprint
from .embedder import Embeddings

GALLERY_FORMAT = 1


@dataclass
class Gallery:
    identities: list[str]
    centroids: np.ndarray  # (K, D) L2-normalised mean embedding per identity
    embeddings: np.ndarray  # (N, D) every enrolled image
    labels: np.ndarray  # (N,) index into identities
    paths: list[str]
    model: str  # the model that embedded the gallery: probes must use the same
    image_size: int
    flip: bool
    threshold: tuple[float, str] | None  # the model's threshold when enrolled, and its source
    fingerprint: ModelFingerprint | None = None  # None: enrolled by an edgeface before fingerprints

    def check_model(self, fingerprint: ModelFingerprint, path: Path) -> None:
        """A gallery is matched, extended or trimmed only with the model and preprocessing that enrolled it."""
        if self.fingerprint is not None:
            differences = self.fingerprint.differences(fingerprint)
        else:  # an older gallery: its model file and image size are all it recorded
            differences = [f"image size {self.image_size} vs {fingerprint.image_size}"] * (self.image_size != fingerprint.image_size)
            if Path(self.model).resolve() != Path(fingerprint.file).resolve():
                differences.append(f"model {self.model} vs {fingerprint.file}")
        if differences:
            raise DataError(f"{path} was enrolled with another model or preprocessing ({'; '.join(differences)}; "
                            "enrolled vs now): use the model that enrolled it, or enroll the gallery again")


def build_gallery(embedded: Embeddings, fingerprint: ModelFingerprint, threshold: tuple[float, str] | None) -> Gallery:
    if embedded.labels is None or embedded.identities is None:
        raise DataError("enroll needs one folder per identity: GALLERY_DIR/<identity>/<image>")
    return _with_centroids(list(embedded.identities), embedded.vectors, embedded.labels.astype(np.int64),
                           embedded.paths, fingerprint, threshold)


def _with_centroids(identities: list[str], embeddings: np.ndarray, labels: np.ndarray, paths: list[str],
                    fingerprint: ModelFingerprint, threshold: tuple[float, str] | None) -> Gallery:
    centroids = class_centroids(torch.from_numpy(embeddings), torch.from_numpy(labels), len(identities)).numpy()
    return Gallery(identities, centroids, embeddings, labels, paths, fingerprint.file, fingerprint.image_size,
                   fingerprint.flip, threshold, fingerprint)


def add_identities(gallery: Gallery, embedded: Embeddings, fingerprint: ModelFingerprint) -> Gallery:
    """``gallery`` with the identities of ``embedded`` added (enroll --add); an identity already there is refused."""
    if embedded.labels is None or embedded.identities is None:
        raise DataError("enroll --add needs one folder per identity: GALLERY_DIR/<identity>/<image>")
    again = sorted(set(gallery.identities) & set(embedded.identities))
    if again:
        raise DataError(f"already enrolled: {', '.join(again[:10])}; remove them first (enroll --remove ID) to "
                        "enroll their new images")
    offset = len(gallery.identities)
    return _with_centroids(gallery.identities + list(embedded.identities),
                           np.concatenate([gallery.embeddings, embedded.vectors]),
                           np.concatenate([gallery.labels, embedded.labels.astype(np.int64) + offset]),
                           gallery.paths + embedded.paths, fingerprint, gallery.threshold)


def remove_identities(gallery: Gallery, names: list[str], fingerprint: ModelFingerprint) -> Gallery:
    """``gallery`` without the identities ``names`` (enroll --remove)."""
    problem = identities_removal_problem(gallery.identities, names)  # the check the CLI makes before torch
    if problem:
        raise DataError(problem)
    keep = [index for index, name in enumerate(gallery.identities) if name not in set(names)]
    new_index = {old: new for new, old in enumerate(keep)}
    rows = np.flatnonzero(np.isin(gallery.labels, keep))
    return _with_centroids([gallery.identities[index] for index in keep], gallery.embeddings[rows],
                           np.array([new_index[int(label)] for label in gallery.labels[rows]], dtype=np.int64),
                           [gallery.paths[row] for row in rows], fingerprint, gallery.threshold)


def save_gallery(gallery: Gallery, path: Path) -> None:
    meta = {"format": GALLERY_FORMAT, "model": gallery.model, "image_size": gallery.image_size, "flip": gallery.flip,
            "threshold": list(gallery.threshold) if gallery.threshold else None,
            "fingerprint": gallery.fingerprint.to_json() if gallery.fingerprint else None}
    atomic_write_stream(path, lambda stream: np.savez(
        stream, identities=np.array(gallery.identities, dtype=str), centroids=gallery.centroids,
        embeddings=gallery.embeddings, labels=gallery.labels, paths=np.array(gallery.paths, dtype=str),
        meta=np.array(strict_json(meta)),
    ))


def load_gallery(path: Path) -> Gallery:
    if not path.is_file():
        raise DataError(f"gallery not found: {path}; write one with edgeface enroll GALLERY_DIR --checkpoint ... --out {path}")
    try:
        with np.load(path, allow_pickle=False) as arrays:  # strings are unicode arrays: nothing is unpickled
            meta = json.loads(str(arrays["meta"]))
            if meta.get("format") != GALLERY_FORMAT:
                raise ValueError("format")
            threshold = meta.get("threshold")
            gallery = Gallery(
                [str(name) for name in arrays["identities"]], arrays["centroids"].astype(np.float32),
                arrays["embeddings"].astype(np.float32), arrays["labels"].astype(np.int64),
                [str(item) for item in arrays["paths"]], str(meta["model"]), int(meta["image_size"]), bool(meta["flip"]),
                (float(threshold[0]), str(threshold[1])) if threshold else None,
                ModelFingerprint.from_json(meta["fingerprint"]) if meta.get("fingerprint") else None,
            )
    except Exception:  # noqa: BLE001 - a damaged zip/npy fails in many ways (zlib, zipfile, numpy): all mean "damaged"
        raise DataError(f"{path} is not a gallery written by edgeface enroll (or it is damaged); enroll again") from None
    if gallery.centroids.ndim != 2 or len(gallery.centroids) != len(gallery.identities):
        raise DataError(f"{path} is damaged (identities and centroids disagree); enroll again")
    return gallery


# ------------------------------------------------------------------ matching


@dataclass
class Match:
    identity: str
    similarity: float


@dataclass
class Identification:
    probe: str
    matches: list[Match]  # best first
    answer: str | None  # the best match at or above the threshold; None = unknown (or no threshold)

    @classmethod
    def of(cls, probe: str, matches: list[Match], threshold: float | None) -> "Identification":
        """The answer is the first match at or above ``threshold`` (None: no threshold applies, so the ranking is
        all there is)."""
        accepted = bool(matches) and threshold is not None and matches[0].similarity >= threshold
        return cls(probe, matches, matches[0].identity if accepted else None)


def similarities(gallery: Gallery, probes: np.ndarray) -> np.ndarray:
    """(probes × identities) cosine similarity of each probe to each identity's mean embedding."""
    if probes.shape[1] != gallery.centroids.shape[1]:
        raise DataError(f"the probes' embeddings have {probes.shape[1]} dimensions, the gallery's {gallery.centroids.shape[1]}: "
                        "identify with the model that enrolled the gallery")
    return probes @ gallery.centroids.T


def identify(gallery: Gallery, probes: np.ndarray, paths: list[str], top_k: int,
             threshold: float | None) -> list[Identification]:
    """The ``top_k`` identities nearest each probe, answered as ``Identification.of`` says."""
    scores = similarities(gallery, probes)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    results = []
    for row, probe in enumerate(paths):
        matches = [Match(gallery.identities[index], float(scores[row, index])) for index in order[row]]
        results.append(Identification.of(probe, matches, threshold))
    return results


def _threshold_at_far(unknown_best: np.ndarray, far: float) -> float:
    """The lowest threshold at which at most ``far`` of the non-enrolled probes are accepted."""
    ranked = np.sort(unknown_best)[::-1]
    allowed = int(np.floor(far * len(ranked) + 1e-9))
    if allowed >= len(ranked):
        return float(ranked[-1])
    return float(np.nextafter(ranked[allowed], np.inf))  # just above the first probe that must be rejected


def open_set_metrics(gallery: Gallery, probes: np.ndarray, probe_identities: list[str], threshold: float | None,
                     far_targets: list[float]) -> dict[str, Any]:
    """Rank-1/rank-5 over enrolled-identity probes; DIR at each FAR target and at ``threshold``.

    DIR at a false-alarm rate f is only measured when f is resolvable: at least 1/f non-enrolled probes (one
    false alarm possible) and some enrolled ones. Otherwise its entry says ``measurable: False`` and ``why``,
    never a rate the probes cannot show (with 19 strangers, "FAR 1%" would be FAR 0 of 19).
    """
    scores = similarities(gallery, probes)
    index_of = {name: index for index, name in enumerate(gallery.identities)}
    truth = np.array([index_of.get(name, -1) for name in probe_identities])
    known = truth >= 0
    best = scores.max(axis=1)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    first = ranked[:, 0]
    found = known & (first == truth)
    in_top5 = known & (ranked[:, :5] == truth[:, None]).any(axis=1)
    unknown_best = best[~known]
    metrics: dict[str, Any] = {
        "probes": len(probe_identities),
        "enrolled_probes": int(known.sum()),
        "non_enrolled_probes": int((~known).sum()),
        "rank1": float(found[known].mean()) if known.any() else None,
        "rank5": float(in_top5[known].mean()) if known.any() else None,
        "threshold": threshold,
        "dir_at_threshold": (float((found & (best >= threshold))[known].mean())
                             if known.any() and threshold is not None else None),
        "far_at_threshold": (float((unknown_best >= threshold).mean())
                             if len(unknown_best) and threshold is not None else None),
        "dir_at_far": {},
    }
    for far in far_targets:
        why = None
        if not known.any():
            why = "no probe of an enrolled identity"
        elif far <= 0:
            why = "a false-alarm rate of 0 cannot be measured on a finite set of probes"
        elif far * len(unknown_best) < 1.0 - 1e-9:
            needed = int(np.ceil(1.0 / far - 1e-9))
            why = f"needs ≥ {needed:,} probes not enrolled (one false alarm possible), has {len(unknown_best):,}"
        if why is not None:
            metrics["dir_at_far"][str(far)] = {"dir": None, "threshold": None, "far": None, "measurable": False, "why": why}
            continue
        at = _threshold_at_far(unknown_best, far)
        metrics["dir_at_far"][str(far)] = {
            "dir": float((found & (best >= at))[known].mean()),
            "threshold": at,
            "far": float((unknown_best >= at).mean()),
            "measurable": True,
            "why": None,
        }
    return metrics
