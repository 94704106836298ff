"""The model: EdgeFace backbones (``backbones``), margin heads (``heads``), checkpoint files read safely and
written atomically (``checkpoint_io``), a checkpoint's keys diffed, explained and repaired against an
architecture (``checkpoints``), and device and precision (``runtime``).

May import: the top-level modules (config, errors, zoo, atomic) and torch/timm; nothing from data, evaluation,
training, deploy or cli.
"""

from .backbones import EdgeFace
from .checkpoint_io import read_checkpoint
from .checkpoints import BackboneLoad, load_backbone
from .heads import MarginHead

__all__ = ["BackboneLoad", "EdgeFace", "MarginHead", "load_backbone", "read_checkpoint"]
