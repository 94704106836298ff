"""Deployment: any run, checkpoint or exported file as an embedding function (``embedder``), exports with a
parity check and int8 quantisation (``export``), and galleries for enroll/identify (``gallery``).

May import: model, data, evaluation and the top-level modules; nothing from training or cli.
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Embedder": ".embedder",
    "load_embedder": ".embedder",
})
