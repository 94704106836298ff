"""The model: EdgeFace backbones (``backbones``), margin heads (``heads``), checkpoint files read safely and
written atomically (``checkpoint_io``), a checkpoint's keys diffed, explained and repaired against an
architecture (``checkpoints``), and device and precision (``runtime``).

May import: the top-level modules (config, errors, zoo, atomic) and torch/timm; nothing from data, evaluation,
training, deploy or cli.
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "BackboneLoad": ".checkpoints",
    "EdgeFace": ".backbones",
    "load_backbone": ".checkpoints",
    "MarginHead": ".heads",
    "read_checkpoint": ".checkpoint_io",
})
