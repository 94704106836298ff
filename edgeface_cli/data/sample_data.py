"""A synthetic identity dataset, so the demo and the tests run anywhere without a download.

Each identity is a fixed set of face-like traits (face shape, skin and hair colour, eye
spacing and colour, nose, mouth, glasses); each image adds nuisance: pose (rotation,
scale, shift), lighting, background and blur. Learnable, but not by one pixel's colour.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps


@dataclass(frozen=True)
class Identity:
    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    face_width: float
    face_height: float
    eye_spacing: float
    eye_height: float
    eye_size: float
    nose_length: float
    mouth_width: float
    hair_style: int
    glasses: bool


def random_identity(rng: random.Random) -> Identity:
    def colour(low: int, high: int) -> tuple[int, int, int]:
        return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))

    return Identity(
        skin=colour(90, 240),
        hair=colour(10, 200),
        eyes=colour(0, 160),
        face_width=rng.uniform(0.52, 0.72),
        face_height=rng.uniform(0.70, 0.88),
        eye_spacing=rng.uniform(0.14, 0.26),
        eye_height=rng.uniform(0.36, 0.46),
        eye_size=rng.uniform(0.035, 0.07),
        nose_length=rng.uniform(0.08, 0.18),
        mouth_width=rng.uniform(0.12, 0.30),
        hair_style=rng.randrange(3),
        glasses=rng.random() < 0.3,
    )


def render_face(identity: Identity, size: int, rng: random.Random) -> Image.Image:
    canvas = 2 * size  # draw large, then downsample: smooth edges
    background = tuple(rng.randint(0, 255) for _ in range(3))
    image = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(2, 6)):  # background clutter
        x0, y0 = rng.randint(0, canvas), rng.randint(0, canvas)
        radius = rng.randint(canvas // 16, canvas // 4)
        draw.ellipse((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    c = canvas / 2
    half_w, half_h = identity.face_width * canvas / 2, identity.face_height * canvas / 2
    if identity.hair_style == 0:
        draw.ellipse((c - half_w * 1.1, c - half_h * 1.15, c + half_w * 1.1, c + half_h * 0.3), fill=identity.hair)
    elif identity.hair_style == 1:
        draw.rectangle((c - half_w * 1.15, c - half_h * 1.05, c + half_w * 1.15, c + half_h * 0.9), fill=identity.hair)
    draw.ellipse((c - half_w, c - half_h, c + half_w, c + half_h), fill=identity.skin)
    if identity.hair_style == 2:
        draw.chord((c - half_w, c - half_h, c + half_w, c + half_h * 0.2), 180, 360, fill=identity.hair)
    eye_y = identity.eye_height * canvas
    eye_r = identity.eye_size * canvas
    for side in (-1, 1):
        eye_x = c + side * identity.eye_spacing * canvas
        draw.ellipse((eye_x - eye_r * 1.6, eye_y - eye_r, eye_x + eye_r * 1.6, eye_y + eye_r), fill=(250, 250, 250))
        draw.ellipse((eye_x - eye_r, eye_y - eye_r, eye_x + eye_r, eye_y + eye_r), fill=identity.eyes)
        if identity.glasses:
            draw.ellipse(
                (eye_x - eye_r * 2.4, eye_y - eye_r * 2, eye_x + eye_r * 2.4, eye_y + eye_r * 2),
                outline=(20, 20, 20), width=max(1, canvas // 64),
            )
    nose_top, nose_bottom = eye_y + eye_r, eye_y + eye_r + identity.nose_length * canvas
    darker = tuple(int(channel * 0.7) for channel in identity.skin)
    draw.polygon([(c, nose_top), (c - canvas * 0.03, nose_bottom), (c + canvas * 0.03, nose_bottom)], fill=darker)
    mouth_y = nose_bottom + canvas * 0.08
    mouth_half = identity.mouth_width * canvas / 2
    draw.chord((c - mouth_half, mouth_y - canvas * 0.04, c + mouth_half, mouth_y + canvas * 0.04), 0, 180, fill=(150, 40, 50))

    # Per-image nuisance: pose, lighting, blur.
    image = image.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=background)
    scale = rng.uniform(0.85, 1.1)
    crop = canvas / scale
    dx, dy = rng.uniform(-0.06, 0.06) * canvas, rng.uniform(-0.06, 0.06) * canvas
    pad = canvas // 4  # zooming out needs background beyond the canvas
    image = ImageOps.expand(image, border=pad, fill=background)
    c += pad
    box = (c - crop / 2 + dx, c - crop / 2 + dy, c + crop / 2 + dx, c + crop / 2 + dy)
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.6, 1.4))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.2) * size / 112))
    return image


def write_sample_dataset(
    out: Path, identities: int = 10, per_identity: int = 10, size: int = 112, seed: int = 0, val_per_identity: int | None = None
) -> dict[str, int]:
    """Write ``out/train/id_XXX/*.png`` and ``out/val/id_XXX/*.png``. Returns image counts."""
    rng = random.Random(seed)
    val_count = val_per_identity if val_per_identity is not None else max(2, per_identity // 4)
    counts = {"train": 0, "val": 0}
    for index in range(identities):
        identity = random_identity(rng)
        for split, count in (("train", per_identity), ("val", val_count)):
            folder = out / split / f"id_{index:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for image_index in range(count):
                render_face(identity, size, rng).save(folder / f"{image_index:04d}.png")
                counts[split] += 1
    return counts
