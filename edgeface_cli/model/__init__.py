"""The model: EdgeFace backbones (``backbones``), margin heads (``heads``), checkpoint files read safely and
written atomically (``checkpoint_io``), a checkpoint's keys diffed, explained and repaired against an
architecture (``checkpoints``), exported programs run as exported (``programs``; pt2 and TorchScript only
when their code is trusted), any model file as one ``LoadedModel`` with its fingerprint (``loading``), inference
runtimes behind one ``Runtime`` interface (``runtimes``: onnxruntime, OpenVINO, OpenCV DNN, LiteRT, ncnn,
PyTorch, torch.compile), and device and precision (``runtime``).

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
