"""edgeface: fine-tune EdgeFace face-recognition backbones on your own identities.

The Python API (the CLI is a thin client of the same functions)::

    import edgeface_cli as ef

    config = ef.load_config(overrides={"data.train_dir": "data/train", "data.val_dir": "data/val"})
    run = ef.train(config)                                   # -> RunResult (run.run_dir, run.best_val_acc, ...)
    result = ef.evaluate(config, run.run_dir)                # -> EvalResult (result.metrics)
    ef.record_eval(result, config.data.val_dir)              # keep its threshold for verify/identify
    model = ef.Embedder.load(run.run_dir)
    vectors = model.embed(["a.jpg", "b.jpg"])                # (2, 512) L2-normalised
    print(model.verify("a.jpg", "b.jpg").to_json())          # similarity, same (or None: no threshold), source

Importing the package loads nothing heavy: each name is imported on first use.
"""

from .lazy import lazy_exports

__version__ = "0.1.0"

__all__, __getattr__ = lazy_exports(__name__, {
    "load_config": ".config",
    "EdgeFaceConfig": ".config",
    "train": ".training.run",
    "RunResult": ".training.outcome",
    "evaluate": ".evaluation.evaluator",
    "record_eval": ".evaluation.evaluator",
    "EvalResult": ".evaluation.evaluator",
    "Embedder": ".deploy.embedder",
    "Verification": ".deploy.decisions",
})
