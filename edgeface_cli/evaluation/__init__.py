"""Evaluation: embeddings of a folder and the validation used after each epoch (``inference``), the metrics
(``metrics``: similarity, ROC, EER, TAR@FAR, k-fold), ``evaluate`` a checkpoint on a val folder or pairs
file (``evaluator``), check-data's model-based checks (``label_noise``) and runs as pictures (``plots``).

May import: model, data and the top-level modules (rundir included); nothing from training, deploy or cli.
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "EvalResult": ".evaluator",
    "evaluate": ".evaluator",
})
