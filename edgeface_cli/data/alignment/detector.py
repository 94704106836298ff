"""What a face detector gives alignment: faces with a box, a score and five landmarks.

A detector is one class with ``detect(image) -> list[Face]`` (MTCNN first, in ``mtcnn.py``); ``align`` and
every ``--align`` flag talk to this interface only, so another detector is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

FaceChoice = Literal["best", "largest", "all"]
FACE_CHOICES: tuple[str, ...] = ("best", "largest", "all")


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: tuple[tuple[float, float], ...]  # (x, y): left eye, right eye, nose tip, mouth left, mouth right

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_json(self) -> dict[str, object]:
        return {"box": [round(v, 3) for v in self.box], "score": round(self.score, 6),
                "landmarks": [[round(x, 3), round(y, 3)] for x, y in self.landmarks]}


class Detector(Protocol):
    name: str

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face of an RGB image, highest score first."""
        ...


def choose_faces(faces: list[Face], choice: FaceChoice) -> list[Face]:
    """``best``: the highest-scoring face (the official EdgeFace pipeline's choice); ``largest``: the largest box;
    ``all``: every face, highest score first."""
    if not faces or choice == "all":
        return faces
    if choice == "largest":
        return [max(faces, key=lambda face: face.area)]
    return [max(faces, key=lambda face: face.score)]
