"""Data-parallel training under torchrun: the process group, and the few collectives the engine needs.

A single process (no ``WORLD_SIZE`` above 1 in the environment) sets nothing up and every helper is a
no-op, so the engine calls them unconditionally. Under ``torchrun --nproc-per-node N`` each rank trains
on its share of every epoch; NCCL on CUDA, Gloo on CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist


def _padded(local: torch.Tensor, rows: int) -> torch.Tensor:
    padded = local.new_zeros((rows, *local.shape[1:]))
    padded[: len(local)] = local
    return padded


def _joined(parts: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """The ranks' padded parts, trimmed to their real sizes and concatenated in rank order."""
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    # The groups made besides the default one, oldest first; ``shutdown`` destroys and forgets them. Now one:
    # a Gloo group with runtime.rank0_timeout_s, where the ranks wait for work one of them does alone, which
    # may take far longer than runtime.collective_timeout_s allows a collective of the training step.
    extra_groups: list[Any] = field(default_factory=list, compare=False, repr=False)

    @property
    def rank0_work_group(self) -> Any:
        return self.extra_groups[0] if self.extra_groups else None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` under torchrun means this rank's own GPU (LOCAL_RANK)."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def wait_for_rank0_work(self) -> None:
        """Every rank meets here after work only rank 0 (or each machine's local rank 0) does: the data scan,
        validation, checkpoints. It waits up to runtime.rank0_timeout_s, not the training collectives'
        timeout: a scan of millions of images outlasts that, and must not kill the job."""
        if not self.enabled:
            return
        if self.rank0_work_group is None:
            torch_dist.barrier()
        else:
            torch_dist.barrier(group=self.rank0_work_group)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def interleave(self, local: torch.Tensor, total: int) -> torch.Tensor:
        """The ``total`` rows of which this rank computed rows ``rank::world_size``, from every rank, in order."""
        if not self.enabled:
            return local
        parts = self._all_gather_padded(local, -(-total // self.world_size))
        full = local.new_empty((total, *local.shape[1:]))
        for rank, part in enumerate(parts):
            full[rank::self.world_size] = part[: len(range(rank, total, self.world_size))]
        return full

    def concat(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every rank's ``local`` rows (rank r holds ``sizes[r]`` of them), concatenated in rank order."""
        if not self.enabled:
            return local
        return _joined(self._all_gather_padded(local, max(sizes)), sizes)

    def concat_on_main(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """As ``concat``, but only rank 0 receives the whole (the others get ``local`` back): rank 0 alone
        validates and writes checkpoints, and the others need not hold a copy."""
        if not self.enabled:
            return local
        padded = _padded(local, max(sizes))
        if not self.is_main:
            torch_dist.gather(padded, None, dst=0)
            return local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.gather(padded, parts, dst=0)
        return _joined(parts, sizes)

    def concat_on_main_in_host_memory(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """As ``concat_on_main``, into host memory: rank 0 receives one rank's rows at a time and copies them
        to the host at once, so its device never holds more than one other block (a checkpoint of a
        2M-identity head and its AdamW moments is 12 GB, which a device that trains need not find room for)."""
        if not self.enabled:
            return local.detach().cpu()
        padded = _padded(local, max(sizes))
        if not self.is_main:
            torch_dist.send(padded, dst=0)
            return local
        whole = torch.empty((sum(sizes), *local.shape[1:]), dtype=local.dtype)
        whole[: sizes[0]] = local.detach().cpu()
        received = torch.empty_like(padded)
        start = sizes[0]
        for rank in range(1, self.world_size):
            torch_dist.recv(received, src=rank)
            whole[start:start + sizes[rank]] = received[: sizes[rank]].cpu()
            start += sizes[rank]
        return whole

    def _all_gather_padded(self, local: torch.Tensor, rows: int) -> list[torch.Tensor]:
        """Every rank's ``local``, zero-padded to ``rows`` rows (collectives need equal shapes)."""
        padded = _padded(local, rows)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        torch_dist.all_gather(parts, padded)
        return parts

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        return tensor

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return tensor


SINGLE = Distributed()


def from_environment(device_spec: str, timeout_s: int = 600, rank0_timeout_s: int = 86400) -> Distributed:
    """Join the process group torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``); else a single process.

    A rank that dies is noticed by torchrun, which stops the others; a rank that hangs leaves the others
    blocked in a collective, which they give up after ``timeout_s`` (``runtime.collective_timeout_s``). Waits
    for work rank 0 does alone have their own group and limit, ``rank0_timeout_s`` (``runtime.rank0_timeout_s``).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_spec.startswith("cuda") or (device_spec == "auto" and torch.cuda.is_available())
    backend = "nccl" if wants_cuda else "gloo"
    if wants_cuda:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    # Gloo whatever the training backend: the wait is a CPU barrier, and NCCL's watchdog is not involved.
    rank0_work_group = torch_dist.new_group(backend="gloo", timeout=timedelta(seconds=rank0_timeout_s))
    return Distributed(rank, world_size, local_rank, backend, [rank0_work_group])


def shutdown(context: Distributed, together: bool = False) -> None:
    """Leave the process group, every group this rank made included; ``together``: first wait until every
    rank has got here.

    Why every group is let go of, not only left: a Gloo group's worker threads are joined only when the C++
    group is destroyed, which ``destroy_process_group`` does not do while anything still refers to it (this
    context did, to its rank-0 wait group). A worker thread still alive as the interpreter finalizes may drop
    the last reference to its last collective's tensors then; freeing them takes the GIL, the thread is made
    to exit instead, and the process aborts with "terminate called without an active exception".
    """
    if not (context.enabled and torch_dist.is_initialized()):
        return
    if together:
        for group in (*context.extra_groups, None):  # None: the default group
            torch_dist.barrier(group=group)
    for group in reversed(context.extra_groups):  # the newest first, the default group last
        torch_dist.destroy_process_group(group)
    context.extra_groups.clear()
    torch_dist.destroy_process_group()
    # Groups only reference cycles still hold are destroyed now, threads joined, while the interpreter is whole.
    gc.collect()
