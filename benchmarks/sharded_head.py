"""`make bench`, sharded margin head: per-rank memory and step time of the class-centre matrix,
replicated (every rank holds it, DDP all-reduces its gradient) against sharded (each rank holds C/N rows).
Run under torchrun; rank 0 writes the JSON:

    torchrun --standalone --nproc-per-node 2 benchmarks/sharded_head.py [--classes 200000] [--out F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgeface_cli.model.heads import MarginHead
from edgeface_cli.training import distributed as dist_setup
from edgeface_cli.training.sharded_head import ShardedMarginHead


class HeadStep(nn.Module):
    def __init__(self, head: MarginHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss_and_correct(embeddings, labels)[0]


def measure(head: MarginHead, step: nn.Module, device: torch.device, classes: int, batch: int, steps: int) -> dict[str, float]:
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    times = []
    for index in range(steps + 2):
        embeddings = torch.randn(batch, head.weight.shape[1], generator=generator).to(device)
        labels = torch.randint(classes, (batch,), generator=generator).to(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step(embeddings, labels).backward()
        head.clip_grad_norm_(5.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= 2:  # the first steps allocate the optimizer's moments
            times.append(time.perf_counter() - started)
    state_bytes = sum(value.numel() * value.element_size() for values in optimizer.state.values()
                      for value in values.values() if isinstance(value, torch.Tensor))
    weight = head.weight
    return {"rows_per_rank": weight.shape[0], "step_ms": 1000 * statistics.median(times),
            "head_mib_per_rank": (2 * weight.numel() * weight.element_size() + state_bytes) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128, help="per rank")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench-sharded-head.json"))
    args = parser.parse_args()
    context = dist_setup.from_environment(args.device)
    device = context.device(torch.device(args.device))
    torch.manual_seed(0)
    replicated = MarginHead(args.classes, args.dim).to(device)
    results = {"replicated": measure(replicated, DistributedDataParallel(HeadStep(replicated)), device, args.classes,
                                     args.batch, args.steps)}
    del replicated
    sharded = ShardedMarginHead(args.classes, args.dim, "arcface", 32.0, 0.3, context).to(device)
    results["sharded"] = measure(sharded, HeadStep(sharded), device, args.classes, args.batch, args.steps)
    if context.is_main:
        report = {"world_size": context.world_size, "backend": context.backend, "classes": args.classes, "dim": args.dim,
                  "batch_per_rank": args.batch, "device": str(device), "torch": torch.__version__, **results}
        args.out.write_text(json.dumps(report, indent=2))
        for name, entry in results.items():
            print(f"{name:10} {entry['rows_per_rank']:>8} rows/rank {entry['head_mib_per_rank']:>8.0f} MiB/rank "
                  f"{entry['step_ms']:>8.1f} ms/step")
    dist_setup.shutdown(context)


if __name__ == "__main__":
    main()
