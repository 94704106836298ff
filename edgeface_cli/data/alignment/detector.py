"""What a face detector gives alignment: faces with a box, a score and five landmarks.

A detector is one class with ``detect(image) -> list[Face]`` (MTCNN first, in ``mtcnn.py``); ``align`` and
every ``--align`` flag talk to this interface only, so another detector is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

FaceChoice = Literal["best", "largest", "central", "all"]
FACE_CHOICES: tuple[str, ...] = ("best", "largest", "central", "all")
# The official MTCNN settings (data.min_face_size, data.detection_threshold): the smallest face looked for, in
# pixels, and the final stage's score a face needs. Torch-free here, so that configs and recipes can name them.
DEFAULT_MIN_FACE = 20.0
DEFAULT_DETECTION_THRESHOLD = 0.9
# What each single-face choice keeps, in the words the commands use to say which face of a photo they used.
CHOICE_WORDS = {"best": "the best-scoring one", "largest": "the largest one", "central": "the one nearest the centre"}


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    landmarks: tuple[tuple[float, float], ...]  # (x, y): left eye, right eye, nose tip, mouth left, mouth right

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def box_words(self) -> str:
        """The box as x,y,w,h in whole pixels, as a person reads it off the photo."""
        x1, y1, x2, y2 = self.box
        return f"box {round(x1)},{round(y1)},{round(x2 - x1)},{round(y2 - y1)}"

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


def choose_faces(faces: list[Face], choice: FaceChoice, image_size: tuple[int, int] | None = None) -> list[Face]:
    """``best``: the highest-scoring face (the official EdgeFace pipeline's choice); ``largest``: the largest box;
    ``central``: the box whose centre is nearest the photo's (``image_size`` (width, height) needed);
    ``all``: every face, highest score first."""
    if not faces or choice == "all":
        return sorted(faces, key=lambda face: -face.score)  # stable: a detector's own order among equal scores
    if choice == "largest":
        return [max(faces, key=lambda face: face.area)]
    if choice == "central":
        if image_size is None:
            raise ValueError("choosing the central face needs the photo's size")
        middle_x, middle_y = image_size[0] / 2, image_size[1] / 2
        return [min(faces, key=lambda face: (face.centre[0] - middle_x) ** 2 + (face.centre[1] - middle_y) ** 2)]
    return [max(faces, key=lambda face: face.score)]
