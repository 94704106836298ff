"""Five landmarks -> the 112x112 crop EdgeFace expects: a similarity transform to the ArcFace template.

As the official pipeline (``warp_and_crop_face``): the transform is fitted from the template to the photo's
landmarks by least squares (residuals measured in photo pixels; rotation, uniform scale and shift, no
reflection), and every crop pixel samples the photo bilinearly through it, black outside the photo.
Fitting the other way (landmarks to template) weighs the residuals differently and gives other crops.
"""

from __future__ import annotations

import numpy as np

from ...zoo import ARCFACE_TEMPLATE_POINTS

ARCFACE_TEMPLATE = np.array(ARCFACE_TEMPLATE_POINTS, dtype=np.float64)  # where the five landmarks land
CROP_SIZE = 112


def template_to_photo(landmarks: np.ndarray, template: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """The 2x3 similarity matrix taking crop coordinates to photo coordinates, fitted by least squares.

    Unknowns (a, b, tx, ty) with u = a*x + b*y + tx, v = -b*x + a*y + ty, where (x, y) is a template point
    and (u, v) the landmark it should land on.
    """
    x, y = template[:, 0], template[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    design = np.concatenate([np.stack([x, y, ones, zeros], 1), np.stack([y, -x, zeros, ones], 1)])
    target = np.concatenate([landmarks[:, 0], landmarks[:, 1]]).astype(np.float64)
    (a, b, tx, ty), *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.array([[a, b, tx], [-b, a, ty]])


def warp_face(pixels: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) photo and its five (x, y) landmarks -> uint8 (size, size, 3) aligned crop."""
    template = ARCFACE_TEMPLATE * (size / CROP_SIZE)
    matrix = template_to_photo(np.asarray(landmarks, dtype=np.float64), template)
    cols, rows = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))
    src_x = matrix[0, 0] * cols + matrix[0, 1] * rows + matrix[0, 2]
    src_y = matrix[1, 0] * cols + matrix[1, 1] * rows + matrix[1, 2]
    return bilinear_sample(pixels, src_x, src_y)


def bilinear_sample(pixels: np.ndarray, src_x: np.ndarray, src_y: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``pixels`` at (src_x, src_y); neighbours outside the photo count as black."""
    height, width = pixels.shape[:2]
    x0, y0 = np.floor(src_x).astype(np.int64), np.floor(src_y).astype(np.int64)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    out = np.zeros(src_x.shape + (pixels.shape[2],), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xs, ys = x0 + dx, y0 + dy
            inside = ((xs >= 0) & (xs < width) & (ys >= 0) & (ys < height))[..., None]
            values = pixels[np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)]
            out += np.where(inside, values, 0) * (wx * wy)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
