"""Training: ``train(config)`` (``run``) scans the data, loads the backbone and runs the ``Trainer``
(``trainer``: the loop; ``state``: checkpoints and resume; ``validation``; ``recovery``: guards and
escalation), with the optimizer and schedule (``optim``), the epoch meter (``meter``), torchrun
(``distributed``), the sharded margin head (``sharded_head``) and the fallback ladder (``troubleshoot``).

May import: model, data, evaluation (validation) and the top-level modules; nothing from deploy or cli.
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "RunResult": ".outcome",
    "train": ".run",
})
