"""The enrolment quality gate: what one detected face is worth as a gallery sample, and the limits it fails.

Figures: pixels between the eyes (resolution), the variance of the Laplacian of the face box resized to a fixed
112 px (sharpness: a blurred face has little high-frequency energy), the detector's score, and the pose read
from the five landmarks (yaw: how far the nose sits from the eyes' midpoint, in eye distances; roll: the eye
line's tilt)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ..data.alignment.detector import Face
from .settings import QualityLimits

BLUR_SIDE = 112


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a 2-D float image."""
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4.0 * gray[1:-1, 1:-1]
    return float(lap.var())


def face_quality(image: Image.Image, face: Face, eye_distance_px: float) -> dict[str, float]:
    x1, y1, x2, y2 = (float(value) for value in face.box)
    box = (max(0, int(x1)), max(0, int(y1)), min(image.width, int(math.ceil(x2))), min(image.height, int(math.ceil(y2))))
    crop = image.crop(box) if box[2] > box[0] and box[3] > box[1] else image
    gray = np.asarray(crop.convert("L").resize((BLUR_SIDE, BLUR_SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
    (left_x, left_y), (right_x, right_y), (nose_x, _) = face.landmarks[0], face.landmarks[1], face.landmarks[2]
    yaw = abs(nose_x - (left_x + right_x) / 2.0) / max(eye_distance_px, 1e-6)
    roll = math.degrees(math.atan2(right_y - left_y, right_x - left_x))
    return {"eye_distance_px": round(eye_distance_px, 2), "blur_variance": round(laplacian_variance(gray), 2),
            "detection_score": round(float(face.score), 4), "yaw_ratio": round(float(yaw), 3),
            "roll_degrees": round(roll, 1)}


def quality_problems(quality: dict[str, float], limits: QualityLimits) -> list[tuple[str, str]]:
    """The limits this face fails: (reason code for the metrics, the reason in words); empty: it passes."""
    problems = []
    if quality["eye_distance_px"] < limits.min_eye_distance_px:
        problems.append(("too_small", f"face too small: {quality['eye_distance_px']:.0f} px between the eyes, "
                        f"under {limits.min_eye_distance_px:g}"))
    if quality["blur_variance"] < limits.min_blur_variance:
        problems.append(("blurred", f"blurred: Laplacian variance {quality['blur_variance']:.1f}, under {limits.min_blur_variance:g}"))
    if quality["detection_score"] < limits.min_detection_score:
        problems.append(("low_score", f"low detection score {quality['detection_score']:.3f}, under {limits.min_detection_score:g}"))
    if quality["yaw_ratio"] > limits.max_yaw_ratio:
        problems.append(("pose", f"extreme pose: yaw ratio {quality['yaw_ratio']:.2f}, over {limits.max_yaw_ratio:g}"))
    if abs(quality["roll_degrees"]) > limits.max_roll_degrees:
        problems.append(("pose", f"extreme pose: head tilted {quality['roll_degrees']:.0f} degrees, over {limits.max_roll_degrees:g}"))
    return problems
