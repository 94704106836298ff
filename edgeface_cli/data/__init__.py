"""The data: identity folders scanned and decoded (``folder``) into batches (``loaders``), the decoded-image
cache (``cache``), augmentation and normalisation on the device (``augment``), raw photos aligned to face crops
(``alignment``), the synthetic dataset (``sample_data``) and check-data's model-free checks (``doctor``).

May import: the top-level modules (config, errors, events, preflight, atomic) and torch/PIL; nothing from model,
evaluation, training, deploy or cli (check-data's model-based checks live in ``evaluation.label_noise``).
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "ImageSettings": ".folder",
    "inference_loader": ".loaders",
    "make_loader": ".loaders",
    "Sample": ".folder",
    "scan_image_folder": ".folder",
    "ScanResult": ".folder",
    "write_sample_dataset": ".sample_data",
})
