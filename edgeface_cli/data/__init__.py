"""The data: identity folders scanned and decoded (``folder``) into batches (``loaders``), the decoded-image
cache (``cache``), augmentation and normalisation on the device (``augment``), raw photos aligned to face crops
(``alignment``), the synthetic dataset (``sample_data``) and check-data's model-free checks (``doctor``).

May import: the top-level modules (config, errors, events, preflight, atomic) and torch/PIL; nothing from model,
evaluation, training, deploy or cli (check-data's model-based checks live in ``evaluation.label_noise``).
"""

from .folder import ImageSettings, Sample, ScanResult, scan_image_folder
from .loaders import inference_loader, make_loader
from .sample_data import write_sample_dataset

__all__ = ["ImageSettings", "Sample", "ScanResult", "inference_loader", "make_loader", "scan_image_folder",
           "write_sample_dataset"]
