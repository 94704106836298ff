"""The MTCNN cascade as the official EdgeFace alignment runs it: P-Net over an image pyramid, R-Net, O-Net.

Every step reproduces the official code's arithmetic, quirks included, because the crops EdgeFace was
trained on came out of it: boxes are rounded to whole pixels after each stage, the square boxes are
clipped to the image in place before the next stage calibrates them, scores are taken from the softmax,
NMS keeps the highest score first. What is faster here changes no number: the photo is converted to an
array once (not once per candidate box), the candidate crops of a stage go through their network as one
batch, the networks run channels-last, and nothing leaves the device between the convolutions of a stage.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .detector import DEFAULT_DETECTION_THRESHOLD, DEFAULT_MIN_FACE, Face
from .mtcnn_nets import load_net

MIN_FACE = DEFAULT_MIN_FACE
SCORE_THRESHOLDS = (0.6, 0.7, DEFAULT_DETECTION_THRESHOLD)
NMS_THRESHOLDS = (0.7, 0.7, 0.7)
PYRAMID_FACTOR = 0.85
_CELL, _STRIDE = 12, 2  # P-Net sees 12x12 windows at a stride of 2


def pyramid_scales(width: int, height: int, min_face: float = MIN_FACE, factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales at which a face of ``min_face`` pixels and every larger one fits P-Net's 12-pixel window."""
    scale = _CELL / min_face
    length = min(width, height) * scale
    scales = []
    while length > _CELL:
        scales.append(scale * factor ** len(scales))
        length *= factor
    return scales


def nms(boxes: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first (inclusive pixel areas, as Caffe's)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2, score = (boxes[:, i] for i in range(5))
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    order = np.argsort(score)  # ascending: the last is the best
    keep = []
    while len(order) > 0:
        best, rest = order[-1], order[:-1]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1.0)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1.0)
        inter = w * h
        denominator = np.minimum(area[best], area[rest]) if mode == "min" else area[best] + area[rest] - inter
        order = rest[inter / denominator <= threshold]
    return np.array(keep, dtype=np.int64)


def calibrate(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Boxes moved by the regressed offsets (fractions of the box's inclusive width and height), in place."""
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    boxes[:, 0:4] = boxes[:, 0:4] + np.stack([w, h, w, h], axis=1) * offsets
    return boxes


def square(boxes: np.ndarray) -> np.ndarray:
    """Squares around each box's centre, whole pixels; the score column becomes 0 (as the official code's)."""
    squared = np.zeros_like(boxes)
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    side = np.maximum(w, h)
    squared[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    squared[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    squared[:, 2] = squared[:, 0] + side - 1.0
    squared[:, 3] = squared[:, 1] + side - 1.0
    squared[:, 0:4] = np.round(squared[:, 0:4])
    return squared


def _normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8/float (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1) as the networks were trained."""
    return ((np.moveaxis(pixels.astype(np.float32), -1, -3) - 127.5) * 0.0078125).astype(np.float32)


def crop_boxes(boxes: np.ndarray, pixels: np.ndarray, size: int) -> np.ndarray:
    """Each box cut out of the photo (zero outside it), resized to ``size`` x ``size``, normalised.

    The boxes are clipped to the image in place, as the official code does; the next stage calibrates the
    clipped boxes (and O-Net's landmarks are relative to them).
    """
    height, width = pixels.shape[:2]
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))  # views: the clipping below writes into ``boxes``
    w, h = (x2 - x1 + 1.0).astype(np.int32), (y2 - y1 + 1.0).astype(np.int32)
    dx, dy = np.zeros(len(boxes)), np.zeros(len(boxes))
    edx, edy = w - 1.0, h - 1.0
    beyond = x2 > width - 1.0
    edx[beyond] = w[beyond] + width - 2.0 - x2[beyond]
    x2[beyond] = width - 1.0
    beyond = y2 > height - 1.0
    edy[beyond] = h[beyond] + height - 2.0 - y2[beyond]
    y2[beyond] = height - 1.0
    before = x1 < 0.0
    dx[before] = -x1[before]
    x1[before] = 0.0
    before = y1 < 0.0
    dy[before] = -y1[before]
    y1[before] = 0.0
    crops = np.zeros((len(boxes), size, size, 3), dtype=np.float32)
    for i in range(len(boxes)):
        box = np.zeros((h[i], w[i], 3), dtype=np.uint8)
        box[int(dy[i]):int(edy[i]) + 1, int(dx[i]):int(edx[i]) + 1] = \
            pixels[int(y1[i]):int(y2[i]) + 1, int(x1[i]):int(x2[i]) + 1]
        crops[i] = np.asarray(Image.fromarray(box).resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return _normalise(crops)


class MTCNN:
    """The detector: ``detect(image)`` -> faces, highest score first. Weights load once per instance."""

    name = "mtcnn"

    def __init__(self, device: str | torch.device = "cpu", min_face: float = MIN_FACE,
                 threshold: float = SCORE_THRESHOLDS[2]) -> None:
        self.device = torch.device(device)
        self.min_face = min_face  # pixels: the smallest face the pyramid looks for
        self.threshold = threshold  # O-Net's score a face needs (the official 0.9 unless configured)
        # align's records name the detector: crops made with other settings are never taken for these
        if (min_face, threshold) != (MIN_FACE, SCORE_THRESHOLDS[2]):
            self.name = f"mtcnn min_face={min_face:g} threshold={threshold:g}"
        # channels-last: oneDNN's direct convolutions run P-Net's thin layers about 1.8x faster on a CPU; the
        # scores move by about 1e-6 (summation order), the landmarks by about 1e-4 px
        self.pnet, self.rnet, self.onet = (load_net(name).to(self.device, memory_format=torch.channels_last)
                                           for name in ("pnet", "rnet", "onet"))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def proposals(self, image: Image.Image) -> np.ndarray:
        """Stage 1: P-Net windows over the pyramid; rows (x1, y1, x2, y2, score, 4 offsets), before the global NMS."""
        width, height = image.size
        found = []
        scales = pyramid_scales(width, height, self.min_face)

        def level(scale: float) -> np.ndarray:
            size = (math.ceil(width * scale), math.ceil(height * scale))
            return _normalise(np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32))[None]

        # Pillow resizes the next pyramid level (without the GIL) while P-Net runs on this one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            for scale, scaled in zip(scales, pool.map(level, scales)):
                found += self._windows(scale, scaled)
        return np.concatenate(found) if found else np.zeros((0, 9))

    def _windows(self, scale: float, scaled: np.ndarray) -> list[np.ndarray]:
        """P-Net on one pyramid level: its windows above the score threshold, after a per-level NMS."""
        offsets, probs = self.pnet(self._tensor(scaled))
        probs, offsets = probs[0].cpu().numpy(), offsets[0].cpu().numpy()
        rows, cols = np.where(probs > SCORE_THRESHOLDS[0])
        if len(rows) == 0:
            return []
        boxes = np.stack([
            np.round((_STRIDE * cols + 1.0) / scale), np.round((_STRIDE * rows + 1.0) / scale),
            np.round((_STRIDE * cols + 1.0 + _CELL) / scale), np.round((_STRIDE * rows + 1.0 + _CELL) / scale),
            probs[rows, cols], *(offsets[i, rows, cols] for i in range(4)),
        ], axis=1).astype(np.float64)
        return [boxes[nms(boxes, 0.5)]]

    @torch.inference_mode()
    def detect(self, image: Image.Image) -> list[Face]:
        image = image.convert("RGB") if image.mode != "RGB" else image
        boxes = self.proposals(image)
        if len(boxes) == 0:
            return []
        boxes = boxes[nms(boxes, NMS_THRESHOLDS[0])]
        boxes = square(calibrate(boxes[:, 0:5], boxes[:, 5:9]))
        pixels = np.asarray(image, dtype=np.uint8)

        # Stage 2: R-Net on 24x24 crops.
        offsets, probs = (t.cpu().numpy() for t in self.rnet(self._tensor(crop_boxes(boxes, pixels, 24))))
        keep = probs > SCORE_THRESHOLDS[1]
        boxes, offsets = boxes[keep], offsets[keep]
        boxes[:, 4] = probs[keep]
        kept = nms(boxes, NMS_THRESHOLDS[1])
        boxes = square(calibrate(boxes[kept], offsets[kept]))
        if len(boxes) == 0:
            return []

        # Stage 3: O-Net on 48x48 crops, with landmarks relative to the (clipped) box.
        landmarks, offsets, probs = (t.cpu().numpy() for t in self.onet(self._tensor(crop_boxes(boxes, pixels, 48))))
        keep = probs > self.threshold
        boxes, offsets, landmarks = boxes[keep], offsets[keep], landmarks[keep]
        boxes[:, 4] = probs[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1.0
        h = boxes[:, 3] - boxes[:, 1] + 1.0
        landmarks[:, 0:5] = boxes[:, 0:1] + w[:, None] * landmarks[:, 0:5]
        landmarks[:, 5:10] = boxes[:, 1:2] + h[:, None] * landmarks[:, 5:10]
        boxes = calibrate(boxes, offsets)
        kept = nms(boxes, NMS_THRESHOLDS[2], mode="min")
        return [
            Face(tuple(float(v) for v in boxes[i, 0:4]), float(boxes[i, 4]),  # type: ignore[arg-type]
                 tuple((float(landmarks[i, j]), float(landmarks[i, j + 5])) for j in range(5)))
            for i in kept
        ]
