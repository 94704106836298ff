"""`make bench` (regularisers): the cost of a stage-2 step with L2-SP or feature distillation beside a plain one.

The same TrainStep, batch, optimizer and threads; medians of repeated steps. Measured, never asserted; writes
bench-regularisers.json. The issue's bound: at most 1.35x a plain stage-2 step (the teacher's forward only).

    python benchmarks/regularisers.py [--batch-size 64] [--size 112] [--steps 8] [--out bench-regularisers.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from edgeface_cli.config import EdgeFaceConfig
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.heads import MarginHead
from edgeface_cli.model.runtime import BackboneForward
from edgeface_cli.training.anchor import Anchor
from edgeface_cli.training.learner import TrainStep


def step_seconds(anchor: Anchor | None, backbone: EdgeFace, head: MarginHead, images: torch.Tensor,
                 labels: torch.Tensor, steps: int) -> float:
    step = TrainStep(backbone, head, BackboneForward(backbone, False, print), anchor)
    optimizer = torch.optim.AdamW([p for p in step.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for index in range(steps + 2):
        started = time.perf_counter()
        loss, _ = step(labels, images, None, True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if index >= 2:  # warm-up steps left out
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench-regularisers.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").train()
    head = MarginHead(100, backbone.embedding_dim)
    images = torch.randn(args.batch_size, 3, args.size, args.size)
    labels = torch.randint(0, 100, (args.batch_size,))
    config = EdgeFaceConfig()
    variants = {
        "plain": None,
        "l2sp": Anchor.build(backbone, config.model_copy(update={"optim": config.optim.model_copy(update={"l2sp": 1e-3})})),
        "distill": Anchor.build(backbone, config.model_copy(update={"distill": config.distill.model_copy(update={"weight": 1.0})})),
    }
    seconds = {name: step_seconds(anchor, backbone, head, images, labels, args.steps) for name, anchor in variants.items()}
    report = {"batch_size": args.batch_size, "image_size": args.size, "threads": args.threads,
              "step_seconds": seconds, "ratio_to_plain": {name: value / seconds["plain"] for name, value in seconds.items()},
              "target_max_ratio": 1.35}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, value in seconds.items():
        print(f"{name:8s} {value * 1000:8.1f} ms/step  {value / seconds['plain']:.2f}x plain")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
