"""Training: ``train(config)`` (``run``) scans the data, loads the backbone and runs the ``Trainer``
(``trainer``), which composes its parts: ``learner`` (modules, optimizer), ``batches`` and ``stage1_cache``,
``epoch`` (``train_one_epoch``), ``validation``, ``guard_policy``, ``checkpointing`` (files, resume),
``recovery`` (escalation) and ``training_state`` (``TrainState``); with the optimizer and schedule (``optim``,
``schedule``), the epoch meter (``meter``), torchrun (``distributed``), the sharded margin head
(``sharded_head``) and the fallback ladder (``troubleshoot``).

May import: model, data, evaluation (validation) and the top-level modules; nothing from deploy or cli.
"""

from ..lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "RunResult": ".outcome",
    "train": ".run",
})
