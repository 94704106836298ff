"""`make bench` (alignment): photos/s of edgeface's MTCNN beside a straightforward per-photo loop of the same
cascade, written the way the official EdgeFace script runs it (the photo converted to an array once per
candidate box, each stage's crops cut one by one from that copy). Both produce identical landmarks (checked
here); the figure is the speed. Photos: the MTCNN example photos (<=640 px on the long side) and the same photos
upscaled to 2,000 px. Measured, never asserted; writes bench-align.json.

    python benchmarks/align.py [--threads 2] [--repeats 3] [--device cpu] [--out bench-align.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from edgeface_cli.data.alignment import mtcnn as cascade
from edgeface_cli.data.alignment.mtcnn import MTCNN

CROP = cascade.crop_boxes  # edgeface's, before the reference swaps it in for its own run
SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "mtcnn"


def official_style_crops(boxes: np.ndarray, image: Image.Image, size: int) -> np.ndarray:
    """The reference: as the official get_image_boxes, the whole photo becomes an array once per box."""
    crops = []
    for i in range(len(boxes)):
        pixels = np.asarray(image, dtype=np.uint8)
        crops.append(CROP(boxes[i:i + 1], pixels, size))
    return np.concatenate(crops) if crops else np.zeros((0, 3, size, size), np.float32)


class OfficialStyle(MTCNN):
    """The same networks and arithmetic with the official code's per-box conversion and plain NCHW tensors."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.pnet, self.rnet, self.onet = (net.to(memory_format=torch.contiguous_format)
                                           for net in (self.pnet, self.rnet, self.onet))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    @torch.inference_mode()
    def proposals(self, image: Image.Image) -> np.ndarray:
        """The pyramid one level after the other, each resized from the photo, as the official first stage."""
        found = []
        for scale in cascade.pyramid_scales(*image.size):
            size = (math.ceil(image.width * scale), math.ceil(image.height * scale))
            scaled = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
            found += self._windows(scale, cascade._normalise(scaled)[None])
        return np.concatenate(found) if found else np.zeros((0, 9))

    @torch.inference_mode()
    def detect(self, image: Image.Image) -> list:
        original = cascade.crop_boxes
        cascade.crop_boxes = lambda boxes, pixels, size: official_style_crops(boxes, image, size)  # type: ignore[assignment]
        try:
            return super().detect(image)
        finally:
            cascade.crop_boxes = original


def photos(long_side: int) -> list[Image.Image]:
    images = []
    for path in sorted((SHARED / "images").glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = long_side / max(image.size)
        if long_side <= 640 and scale >= 1:
            images.append(image)  # small photos stay as they are
            continue
        images.append(image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC))
    return images


def rate(detector: MTCNN, images: list[Image.Image], repeats: int) -> tuple[float, list]:
    times, found = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        found = [detector.detect(image) for image in images]
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-align.json"))
    args = parser.parse_args()
    if not (SHARED / "images").is_dir():
        print(f"skipped: the MTCNN example photos are not at {SHARED} (set EDGEFACE_SHARED)")
        return
    torch.set_num_threads(args.threads)
    ours, reference = MTCNN(args.device), OfficialStyle(args.device)
    results: dict[str, dict[str, float]] = {}
    for label, long_side in (("photos_640px", 640), ("photos_2000px", 2000)):
        images = photos(long_side)
        rate(ours, images[:1], 1)  # warm-up
        ours_rate, ours_faces = rate(ours, images, args.repeats)
        ref_rate, ref_faces = rate(reference, images, args.repeats)
        same = all(len(a) == len(b) for a, b in zip(ours_faces, ref_faces))
        gap = max((float(np.abs(np.array(x.landmarks) - np.array(y.landmarks)).max())
                   for a, b in zip(ours_faces, ref_faces) for x, y in zip(a, b)), default=0.0)
        results[label] = {"photos": len(images), "faces": sum(map(len, ours_faces)), "ours_photos_per_s": ours_rate,
                          "reference_photos_per_s": ref_rate, "speedup": ours_rate / ref_rate, "same_faces": same,
                          "max_landmark_difference_px": gap}
        print(f"{label}: {ours_rate:.2f} photos/s vs {ref_rate:.2f} (official-style loop): {ours_rate / ref_rate:.2f}x, "
              f"same faces: {same}, landmarks within {gap:.1e} px")
    report = {"device": args.device, "threads": args.threads, "torch": torch.__version__, "align": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
