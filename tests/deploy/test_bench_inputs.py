"""bench --images decodes like the model's recipe (issue 29): with data.align, each photo's face is detected and
aligned (with the recipe's detector settings), as embed feeds the model; a photo without a face is refused."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeface_cli.data.augment import normalize
from edgeface_cli.data.folder import ImageSettings
from edgeface_cli.deploy.bench import bench_inputs
from edgeface_cli.errors import DataError

SHARED = Path(os.environ.get("EDGEFACE_SHARED", Path(__file__).resolve().parents[3] / "shared")) / "mtcnn"
needs_photos = pytest.mark.skipif(not (SHARED / "golden.json").is_file(),
                                  reason=f"the MTCNN example photos are not at {SHARED}")


@needs_photos
def test_bench_inputs_are_the_aligned_crops_with_an_aligned_recipe(tmp_path: Path) -> None:
    from edgeface_cli.data.alignment.photos import aligned_file

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "group.jpg").write_bytes((SHARED / "images" / "office3.jpg").read_bytes())
    aligned, described = bench_inputs(3, photos, ImageSettings(image_size=64, align="central"))
    assert aligned.shape == (3, 3, 64, 64) and "mtcnn" in described and "central" in described
    crop = aligned_file(photos / "group.jpg", "central").pixels  # the chosen face's crop, resized as decoded
    from PIL import Image

    expected = np.asarray(Image.fromarray(crop).resize((64, 64), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    torch.testing.assert_close(aligned, normalize(torch.from_numpy(expected.copy())[None]).float().expand(3, -1, -1, -1))
    plain, _ = bench_inputs(3, photos, ImageSettings(image_size=64))  # no align: the centre-cropped photo
    assert (plain - aligned).abs().mean() > 0.1
    with pytest.raises(DataError, match="no face found"):
        bench_inputs(1, photos, ImageSettings(image_size=64, align="best", min_face_size=4000.0))
