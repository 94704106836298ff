"""The forgetting study (README "Fine-tune without forgetting"): does fine-tuning on a few new identities make a
pretrained model worse for everyone else, at the issue's backbone rates 3e-3 and 3e-2, and which remedy helps?
All on generated identities (no download), CPU, 32 px:

  1. pretrain from scratch on 48 identities (sample-data seed 11), long;
  2. fine-tune on 8 new identities (seed 12), 10 epochs (1 head-only), at backbone lr 3e-3 and 3e-2 (the seed's
     three rates scaled together: x1000 and x10000), in five ways:
       plain; L2-SP (alpha 1); distillation (beta 10);
       rehearsal, classes: the 48 pretraining identities (what a user would have: the public set the model was
       trained on) mixed into every batch at share 0.25, in their own classes;
       rehearsal, teacher: the same mix, no classes, kept close to the frozen loaded model by distillation (beta 10);
  3. held-out identities never seen by either (seed 13, 24 x 6 images: 9,936 different-identity pairs, enough for
     FAR 1e-3): AUC and TAR at FAR 1e-3, before (the epoch-0 row) and after fine-tuning; and the new identities'
     val accuracy.

Stage 1 runs the backbone on every batch (optim.stage1_cache false) in every row, so the rehearsal rows' public
samples are in stage 1's batches (the first run of this study was made before the frozen-embedding shortcut took
them in too).

Each fine-tuning runs once per --seeds value (the shuffle, augmentation and head initialisation); the table gives
the mean and every seed's value. One torch thread by default: on a shared 2-core machine two threads each spin
waiting for the other and a step takes 10x longer.

    nice python benchmarks/forgetting.py [--work DIR] [--out bench-forgetting.json] [--rates 3e-3,3e-2] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import edgeface_cli as ef
from edgeface_cli.atomic import write_json
from edgeface_cli.data.sample_data import write_sample_dataset
from edgeface_cli.platform_info import cpu_features

SEED_RATES = {"optim.head_lr": 1e-4, "optim.backbone_lr": 3e-6, "optim.head_lr_stage2": 3e-5}
TINY = {"data.image_size": 32, "data.batch_size": 16, "data.workers": 0, "runtime.device": "cpu", "data.cache": "off",
        "optim.stage1_cache": False}
L2SP_ALPHA, DISTILL_BETA, SHARE = 1.0, 10.0, 0.25


def remedies(public: Path) -> dict[str, dict[str, Any]]:
    rehearse = {"data.rehearsal_dir": str(public), "data.rehearsal_share": SHARE}
    return {
        "plain": {},
        f"L2-SP (alpha {L2SP_ALPHA:g})": {"optim.l2sp": L2SP_ALPHA},
        f"distillation (beta {DISTILL_BETA:g})": {"distill.weight": DISTILL_BETA},
        "rehearsal, classes": {**rehearse, "data.rehearsal_target": "classes"},
        f"rehearsal, teacher (beta {DISTILL_BETA:g})": {**rehearse, "data.rehearsal_target": "teacher",
                                                        "distill.weight": DISTILL_BETA},
    }


def run(out: Path, overrides: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(the run's status, its epoch rows); a run a guard stopped is reported as such, not dropped."""
    config = ef.load_config(overrides={**TINY, "runtime.out": str(out), **overrides})
    result = ef.train(config)
    status = result.status if result.status == "finished" else f"{result.status} ({result.stop_reason})"
    return status, [row for row in result.records if "event" not in row]


def tar(row: dict[str, Any]) -> float | None:
    """TAR at FAR 1e-3, or None where the held-out pairs cannot resolve that FAR."""
    measurable = row.get("holdout_far") is not None and abs(row["holdout_far"] - 1e-3) < 1e-12
    return row.get("holdout_tar_at_far") if measurable else None


MEASURES = ("holdout_auc_before", "holdout_auc_after", "holdout_tar_at_1e-3_before", "holdout_tar_at_1e-3_after",
            "new_val_acc_after")


def summary(status: str, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    before, after = rows[0], rows[-1]
    return {"status": status, "epochs": after.get("epoch"), "seconds": round(seconds, 1),
            "holdout_auc_before": before.get("holdout_auc"), "holdout_auc_after": after.get("holdout_auc"),
            "holdout_tar_at_1e-3_before": tar(before), "holdout_tar_at_1e-3_after": tar(after),
            "new_val_acc_after": after.get("val_acc")}


def mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's mean over the seeds (None when a seed could not measure it), and the runs' statuses."""
    means: dict[str, Any] = {}
    for key in MEASURES:
        values = [run[key] for run in runs]
        means[key] = None if any(value is None for value in values) else sum(values) / len(values)
    return {**means, "status": ", ".join(sorted({run["status"] for run in runs})),
            "seconds": sum(run["seconds"] for run in runs)}


def line(label: str, result: dict[str, Any]) -> str:
    def pct(value: float | None) -> str:
        return "not measurable" if value is None else f"{value:.2%}"

    def auc(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.4f}"

    return (f"{label:44s} held-out AUC {auc(result['holdout_auc_before'])} -> {auc(result['holdout_auc_after'])}, "
            f"TAR@1e-3 {pct(result['holdout_tar_at_1e-3_before'])} -> {pct(result['holdout_tar_at_1e-3_after'])}, "
            f"new-identity val acc {pct(result['new_val_acc_after'])} [{result['status']}, {result['seconds']:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="keeps the data and the pretrained model for a rerun")
    parser.add_argument("--out", type=Path, default=Path("bench-forgetting.json"))
    parser.add_argument("--rates", default="3e-3,3e-2", help="backbone learning rates, comma-separated")
    parser.add_argument("--seeds", default="0,1", help="fine-tuning seeds (runtime.seed), comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(text) for text in args.seeds.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="edgeface-forgetting-"))
    started = time.time()
    load_at_start = list(os.getloadavg())
    for name, seed, ids, per_id in (("pretrain", 11, 48, 12), ("new", 12, 8, 10), ("heldout", 13, 24, 6)):
        if not (work / name).exists():
            write_sample_dataset(work / name, identities=ids, per_identity=per_id, size=32, seed=seed, val_per_identity=3)
    pretrained = work / "pretrained"
    if not (pretrained / "backbone.pt").exists():
        status, _ = run(pretrained, {"data.train_dir": str(work / "pretrain" / "train"),
                                     "data.val_dir": str(work / "pretrain" / "val"), "optim.stage1_epochs": 0,
                                     "optim.epochs": 16, "optim.warmup_epochs": 1, "optim.backbone_lr": 3e-3,
                                     "optim.head_lr_stage2": 3e-3, "arcface.scale": 16, "arcface.margin": 0.1})
        if status != "finished":
            raise SystemExit(f"pretraining {pretrained}: {status}")
    print(f"pretrained in {time.time() - started:.0f} s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for rate in (float(text) for text in args.rates.split(",")):
        scale = rate / SEED_RATES["optim.backbone_lr"]
        for remedy, settings in remedies(work / "pretrain" / "train").items():
            label = f"backbone lr {rate:g}, {remedy}"
            runs = []
            for seed in seeds:
                run_started = time.perf_counter()
                status, rows = run(work / f"ft-{rate:g}-{len(results)}-seed{seed}", {
                    "model.checkpoint": str(pretrained / "backbone.pt"), "model.arch": "edgeface_xxs",
                    "data.train_dir": str(work / "new" / "train"), "data.val_dir": str(work / "new" / "val"),
                    "data.holdout_dir": str(work / "heldout" / "train"), "optim.stage1_epochs": 1, "optim.epochs": 10,
                    "optim.warmup_epochs": 0, "runtime.seed": seed,
                    **{key: value * scale for key, value in SEED_RATES.items()}, **settings,
                })
                runs.append({"seed": seed, **summary(status, rows, time.perf_counter() - run_started)})
                print(line(f"{label}, seed {seed}", runs[-1]), flush=True)
            results[label] = {"backbone_lr": rate, "remedy": remedy, "settings": settings, **mean_of(runs), "runs": runs}
            print(line(f"{label}, mean", results[label]), flush=True)
    write_json(args.out, {
        "study": "forgetting", "work": str(work), "seconds": round(time.time() - started, 1),
        "cpu_features": cpu_features(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
        "load_average_start": load_at_start, "load_average_end": list(os.getloadavg()), "seeds": seeds,
        "settings": {"image_size": 32, "batch_size": 16, "pretrain": "48 ids x 12, 16 epochs, lr 3e-3",
                     "fine_tune": "8 ids x 10, 10 epochs (1 head-only), seed rates x (rate / 3e-6)",
                     "heldout": "24 ids x 6 (9,936 different-identity pairs)", "l2sp": L2SP_ALPHA,
                     "distill": DISTILL_BETA, "rehearsal_share": SHARE,
                     "public_identities": "the 48 pretraining identities"},
        "results": results,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
