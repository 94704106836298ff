"""The EdgeFace variants by name: torch-free, so config validation never imports torch or timm."""

from __future__ import annotations

from dataclasses import dataclass

# timm's published EdgeNeXt layout: a positional encoding only in stage 1's XCA block.
DEFAULT_POS_EMB: tuple[bool, bool, bool, bool] = (False, True, False, False)
KEY_PREFIX = "model."
# The model's input contract: the five ArcFace reference points (left eye, right eye, nose tip, mouth left,
# mouth right) in a 112x112 crop, the 96x112 template of SphereFace/InsightFace shifted 8 px right to make it
# square. Alignment warps onto it; an export's sidecar records it.
ARCFACE_TEMPLATE_POINTS: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041),
)


@dataclass(frozen=True)
class ZooEntry:
    timm_name: str
    gamma: float | None  # low-rank ratio; None = full-rank linears
    checkpoint_file: str  # the published file name users download


ZOO: dict[str, ZooEntry] = {
    "edgeface_xxs": ZooEntry("edgenext_xx_small", None, "edgeface_xxs.pt"),
    "edgeface_xs_gamma_06": ZooEntry("edgenext_x_small", 0.6, "edgeface_xs_gamma_06.pt"),
    "edgeface_s_gamma_05": ZooEntry("edgenext_small", 0.5, "edgeface_s_gamma_05.pt"),
    "edgeface_base": ZooEntry("edgenext_base", None, "edgeface_base.pt"),
}
