"""The forgetting study (README "Fine-tune without forgetting"): does fine-tuning on a few new identities make a
pretrained model worse for everyone else, at the seed's learning rates and at rates 100x higher, and do the
regularisers help? All on generated identities (no download), CPU, 32 px:

  1. pretrain from scratch on 48 identities (sample-data seed 11), long;
  2. fine-tune on 8 new identities (seed 12), 10 epochs, in nine ways: {seed rates, 100x, 1000x} x {plain, L2-SP,
     distillation};
  3. held-out identities never seen by either (seed 13): AUC and TAR at FAR 1e-3, before (the epoch-0 row) and
     after fine-tuning.

    python benchmarks/forgetting.py [--work DIR] [--out bench-forgetting.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import edgeface_cli as ef
from edgeface_cli.data.sample_data import write_sample_dataset

SEED_RATES = {"optim.head_lr": 1e-4, "optim.backbone_lr": 3e-6, "optim.head_lr_stage2": 3e-5}
REGULARISERS = {"plain": {}, "l2sp": {"optim.l2sp": 1.0}, "distill": {"distill.weight": 10.0}}
TINY = {"data.image_size": 32, "data.batch_size": 16, "data.workers": 0, "runtime.device": "cpu", "data.cache": "off"}


def run(out: Path, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    config = ef.load_config(overrides={**TINY, "runtime.out": str(out), **overrides})
    result = ef.train(config)
    if result.status != "finished":
        raise SystemExit(f"{out}: {result.status} ({result.stop_reason})")
    return [row for row in result.records if "event" not in row]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("bench-forgetting.json"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeface-forgetting-"))
    for name, seed, ids, per_id in (("pretrain", 11, 48, 12), ("new", 12, 8, 10), ("heldout", 13, 24, 6)):
        if not (work / name).exists():
            write_sample_dataset(work / name, identities=ids, per_identity=per_id, size=32, seed=seed, val_per_identity=3)
    pretrained = work / "pretrained"
    if not (pretrained / "backbone.pt").exists():
        run(pretrained, {"data.train_dir": str(work / "pretrain" / "train"), "data.val_dir": str(work / "pretrain" / "val"),
                         "optim.stage1_epochs": 0, "optim.epochs": 16, "optim.warmup_epochs": 1,
                         "optim.backbone_lr": 3e-3, "optim.head_lr_stage2": 3e-3, "arcface.scale": 16, "arcface.margin": 0.1})
    results = {}
    for rate_name, scale in (("seed rates", 1), ("100x rates", 100), ("1000x rates", 1000)):
        for reg_name, reg in REGULARISERS.items():
            label = f"{rate_name}, {reg_name}"
            rows = run(work / f"ft-{scale}-{reg_name}", {
                "model.checkpoint": str(pretrained / "backbone.pt"), "model.arch": "edgeface_xxs",
                "data.train_dir": str(work / "new" / "train"), "data.val_dir": str(work / "new" / "val"),
                "data.holdout_dir": str(work / "heldout" / "train"), "optim.stage1_epochs": 1, "optim.epochs": 10,
                "optim.warmup_epochs": 0, **{key: value * scale for key, value in SEED_RATES.items()}, **reg,
            })
            before, after = rows[0], rows[-1]
            results[label] = {"holdout_auc_before": before["holdout_auc"], "holdout_auc_after": after["holdout_auc"],
                              "holdout_tar_before": before["holdout_tar_at_far"],
                              "holdout_tar_after": after["holdout_tar_at_far"], "new_val_acc_after": after["val_acc"]}
            print(f"{label:28s} held-out AUC {before['holdout_auc']:.4f} -> {after['holdout_auc']:.4f}, "
                  f"TAR@1e-3 {before['holdout_tar_at_far']:.2%} -> {after['holdout_tar_at_far']:.2%}, "
                  f"new-identity val acc {after['val_acc']:.2%}")
    args.out.write_text(json.dumps({"work": str(work), "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
