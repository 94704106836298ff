"""One step of the sharded margin head on each rank, for test_distributed (run under torchrun).

``python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.training.sharded_check OUT KIND...``
writes each rank's loss, correctness, gradients and gradient norm to OUT/rank<R>-<KIND>.pt, and the names of
the native threads still running after ``shutdown`` to OUT/rank<R>-threads.json (no KIND: only set up and shut down).
It then ends as the CLI does (``exit_process``); OUT/rank<R>-finalized appears only if the interpreter finalised.
"""

from __future__ import annotations

import atexit
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from edgeface_cli.cli import exit_process
from edgeface_cli.platform_info import native_thread_names
from edgeface_cli.training import distributed as dist_setup
from edgeface_cli.training.sharded_head import ShardedMarginHead, head_parameter_names

CLASSES, FEATURES, EMBEDDING, PER_RANK = 7, 12, 8, 5  # 7 classes: blocks of 3 and 4


def problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backbone, full head weight, inputs and labels of the whole (two-rank) batch."""
    torch.manual_seed(0)
    backbone = nn.Linear(FEATURES, EMBEDDING)
    weight = torch.randn(CLASSES, EMBEDDING)
    inputs = torch.randn(2 * PER_RANK, FEATURES)
    with torch.no_grad():
        nearest = (nn.functional.normalize(backbone(inputs)) @ nn.functional.normalize(weight).t()).argmax(dim=1)
    # Half the images labelled with their nearest centre, half with another: both answers occur.
    labels = torch.where(torch.arange(len(inputs)) % 2 == 0, nearest, (nearest + 1) % CLASSES)
    return backbone, weight, inputs, labels


class Step(nn.Module):
    def __init__(self, backbone: nn.Module, head: ShardedMarginHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head.loss_and_correct(self.backbone(inputs), labels)


def main(out: Path, kinds: list[str]) -> None:
    context = dist_setup.from_environment("cpu")
    atexit.register((out / f"rank{context.rank}-finalized").touch)
    for kind in kinds:
        step_and_save(out, kind, context)
    dist_setup.shutdown(context, together=True)
    (out / f"rank{context.rank}-threads.json").write_text(json.dumps(native_thread_names()))
    exit_process(0)


def step_and_save(out: Path, kind: str, context: dist_setup.Distributed) -> None:
    backbone, weight, inputs, labels = problem()
    head = ShardedMarginHead(CLASSES, EMBEDDING, kind, 16.0, 0.4, context)
    head.load_full_state_dict({"weight": weight})
    step = Step(backbone, head)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, head_parameter_names(step, head))
    wrapped = DistributedDataParallel(step)
    mine = slice(context.rank * PER_RANK, (context.rank + 1) * PER_RANK)
    loss, correct = wrapped(inputs[mine], labels[mine])
    loss.backward()
    norm = head.clip_grad_norm_(1e9)
    torch.save({
        "loss": loss.detach(), "correct": correct, "norm": norm, "rows": (head.start, head.end),
        "backbone_grad": backbone.weight.grad, "head_grad": head.weight.grad, "gathered": head.gathered().weight.detach(),  # whole on rank 0 only
    }, out / f"rank{context.rank}-{kind}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
