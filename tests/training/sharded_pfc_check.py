"""One step of Partial FC on the sharded head on each rank, for test_sharded_partial_fc (run under torchrun).

``python -m torch.distributed.run --standalone --nproc-per-node 2 -m tests.training.sharded_pfc_check OUT``
writes each rank's results to OUT/rank<R>-full.pt (sample rate 1, the sharded check's problem, to compare with
the whole head) and OUT/rank<R>-sampled.pt (sample rate 0.1 of 400 identities, one SGD step).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from edgeface_cli.cli import exit_process
from edgeface_cli.model.losses import build_loss
from edgeface_cli.training import distributed as dist_setup
from edgeface_cli.training.sharded_head import ShardedPartialFCHead, head_parameter_names

from .sharded_check import CLASSES, EMBEDDING, PER_RANK, Step, problem

MANY_CLASSES, SAMPLE_RATE = 400, 0.1


def wrapped_step(head: ShardedPartialFCHead, backbone: torch.nn.Module) -> DistributedDataParallel:
    step = Step(backbone, head)
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step, head_parameter_names(step, head))
    return DistributedDataParallel(step)


def full_rate(out: Path, context: dist_setup.Distributed) -> None:
    backbone, weight, inputs, labels = problem()
    head = ShardedPartialFCHead(CLASSES, EMBEDDING, build_loss("arcface", 16.0, 0.4), 1.0, PER_RANK, context)
    head.load_full_state_dict({"weight": weight})
    mine = slice(context.rank * PER_RANK, (context.rank + 1) * PER_RANK)
    wrapped = wrapped_step(head, backbone)  # kept: DDP averages the gradients only while it lives
    loss, correct = wrapped(inputs[mine], labels[mine])
    loss.backward()
    norm = head.clip_grad_norm_(1e9)
    torch.save({"loss": loss.detach(), "correct": correct, "norm": norm, "rows": (head.start, head.end),
                "index": head.index, "backbone_grad": backbone.weight.grad, "head_grad": head.active.grad},
               out / f"rank{context.rank}-full.pt")


def sampled_rate(out: Path, context: dist_setup.Distributed) -> None:
    backbone, _, inputs, _ = problem()
    torch.manual_seed(1 + context.rank)  # each rank draws its own negatives
    labels = torch.randint(MANY_CLASSES, (len(inputs),))
    head = ShardedPartialFCHead(MANY_CLASSES, EMBEDDING, build_loss("cosface", 16.0, 0.4), SAMPLE_RATE, PER_RANK, context)
    optimizer = torch.optim.SGD([head.active], lr=0.5, momentum=0.9)
    head.bind_optimizer(optimizer)
    before = head.weight.detach().clone()
    mine = slice(context.rank * PER_RANK, (context.rank + 1) * PER_RANK)
    wrapped = wrapped_step(head, backbone)
    loss, _ = wrapped(inputs[mine], labels[mine])
    loss.backward()
    optimizer.step()
    index = head.index.clone()
    state = head.full_state_dict()  # writes the stepped rows and their momentum back, gathers on rank 0
    torch.save({"labels": labels, "rows": (head.start, head.end), "index": index, "before": before,
                "after": head.weight.detach().clone(), "state": state, "loss": loss.detach()},
               out / f"rank{context.rank}-sampled.pt")


def main(out: Path) -> None:
    context = dist_setup.from_environment("cpu")
    full_rate(out, context)
    sampled_rate(out, context)
    dist_setup.shutdown(context, together=True)
    exit_process(0)  # as the CLI ends: DDP's Gloo threads outlive shutdown (see exit_process)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
