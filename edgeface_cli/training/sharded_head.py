"""The margin head split across data-parallel ranks (insightface's model-parallel FC), and Partial FC on it.

Each of N ranks holds a contiguous block of about C/N class centres, so a head far larger than one
GPU's memory trains. Per step the ranks all-gather the batch's embeddings and labels; each computes
the logits of its own centres for the whole global batch, and the softmax is combined across ranks
(all-reduce of the row maxima, of the exponential sums and of the target logits). The loss is the
mean over the global batch: the same number the unsharded head gives. Checkpoints hold the whole
head (gathered block by block into rank 0's host memory, rank 0 writes them), so a run resumes on any number
of ranks.

``ShardedPartialFCHead`` samples each rank's block as arcface_torch's ``partial_fc_v2`` does: every positive of
the global batch that falls in the block, plus a random ``sample_rate`` share of the block's other centres; the
softmax across ranks is the same all-reduce of maxima and sums, and the optimizer state follows the sampled rows
(``model.partial_fc``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

from ..model.heads import MarginHead, loss_from_settings
from ..model.losses import MarginLoss
from ..model.partial_fc import STATE_PREFIX, PartialFCHead, sample_rows, sampled_count
from .distributed import Distributed

# `arcface.sharded: auto` shards from this many identities: below it, the whole head fits everywhere
# and sharding would only add collectives.
AUTO_SHARD_CLASSES = 100_000


def shard_bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s block of classes [start, end): sizes differ by at most one."""
    return num_classes * rank // world_size, num_classes * (rank + 1) // world_size


def sharding_decision(setting: Literal["auto", "on", "off"], num_classes: int, distributed: Distributed) -> tuple[bool, str | None]:
    """(shard the head?, a note for the user when the setting cannot take effect)."""
    if setting == "off" or (setting == "auto" and (not distributed.enabled or num_classes < AUTO_SHARD_CLASSES)):
        return False, None
    if not distributed.enabled:
        return False, "arcface.sharded=on has no effect in a single process: the whole head is on this device"
    if num_classes < distributed.world_size:
        return False, f"{num_classes} identities cannot be split across {distributed.world_size} ranks: the head is not sharded"
    return True, None


class _GatherBatch(torch.autograd.Function):
    """Every rank's embeddings (batches are equal-sized on every rank), in rank order.

    Backward sums the ranks' contributions to this rank's rows (each rank's centres contribute to every
    embedding's gradient) and multiplies by the world size: DDP then averages the backbone's gradients
    across ranks, and the product is exactly the gradient of the global-batch loss, as unsharded.
    """

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, distributed: Distributed) -> torch.Tensor:
        ctx.distributed = distributed
        ctx.batch = len(local)
        return distributed.concat(local.contiguous(), [len(local)] * distributed.world_size)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        distributed: Distributed = ctx.distributed
        summed = distributed.sum_(grad.contiguous().clone())
        start = distributed.rank * ctx.batch
        return summed[start:start + ctx.batch] * distributed.world_size, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over the global batch, from each rank's columns of the logits."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, local_labels: torch.Tensor, owned: torch.Tensor,
                distributed: Distributed) -> torch.Tensor:
        row_max = distributed.max_(logits.max(dim=1).values)
        exponentials = (logits - row_max[:, None]).exp()
        total = distributed.sum_(exponentials.sum(dim=1))
        target = logits.gather(1, local_labels[:, None]).squeeze(1)
        target = distributed.sum_(torch.where(owned, target, torch.zeros_like(target)))
        ctx.save_for_backward(exponentials / total[:, None], local_labels, owned)
        return (row_max + total.log() - target).mean()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        probabilities, local_labels, owned = ctx.saved_tensors
        grad = probabilities.scatter_add(1, local_labels[:, None], -owned.to(probabilities.dtype)[:, None])
        return grad * (grad_loss / len(grad)), None, None, None


class ShardedMarginHead(MarginHead):
    """This rank's block of class centres; the trainer's interface of ``MarginHead``, across ranks."""

    def __init__(self, num_classes: int, embedding_dim: int, kind: str, scale: float, margin: float,
                 distributed: Distributed, loss: MarginLoss | None = None) -> None:
        self.start, self.end = shard_bounds(num_classes, distributed.world_size, distributed.rank)
        # Each block starts as the same rows of the unsharded head would: one run, sharded or not.
        super().__init__(num_classes, embedding_dim, kind, scale, margin, rows=(self.start, self.end), loss=loss)
        self.distributed = distributed

    @property
    def shard_sizes(self) -> list[int]:
        world = self.distributed.world_size
        return [end - start for start, end in (shard_bounds(self.num_classes, world, rank) for rank in range(world))]

    def loss_and_correct(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distributed = self.distributed
        batch = len(labels)
        everyone = _GatherBatch.apply(embeddings, distributed)
        all_labels = distributed.concat(labels, [batch] * distributed.world_size)
        owned = (all_labels >= self.start) & (all_labels < self.end)
        local_labels = (all_labels - self.start).clamp(0, self.end - self.start - 1)
        cosine = self.cosine(everyone)
        with torch.autocast(device_type=cosine.device.type, enabled=False):
            target = cosine.gather(1, local_labels[:, None])
            # Every rank sees the global batch, so AdaFace's batch statistics agree across ranks.
            logits = self.loss(cosine, torch.where(owned, local_labels, -1), self.norms(everyone))
            loss = _ShardedCrossEntropy.apply(logits, local_labels, owned, distributed)
            with torch.no_grad():
                best = distributed.max_(cosine.max(dim=1).values)
                target_cosine = distributed.sum_(torch.where(owned, target.squeeze(1), torch.zeros_like(best)))
        mine = slice(distributed.rank * batch, (distributed.rank + 1) * batch)
        return loss, (target_cosine >= best)[mine]

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the whole head's gradient (all blocks), as the unsharded head would."""
        grads = [parameter.grad for parameter in self.parameters() if parameter.grad is not None]
        squares = sum((grad.float().pow(2).sum() for grad in grads), torch.zeros((), device=self.weight.device))
        total = self.distributed.sum_(squares).sqrt()
        coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for grad in grads:
            grad.mul_(coefficient.to(grad.dtype))
        return total

    def full_rows(self, local: torch.Tensor) -> torch.Tensor:
        """A per-class tensor of this block (the centres, an optimizer moment) made whole on rank 0, which
        validates and saves; the other ranks get their block back. A collective: every rank calls it."""
        return self.distributed.concat_on_main(local.detach().contiguous(), self.shard_sizes)

    def checkpoint_rows(self, local: torch.Tensor) -> torch.Tensor:
        """As ``full_rows``, but made whole in rank 0's host memory, block by block: a checkpoint goes to disk
        from there, and rank 0's device holds one other block at a time, not the whole head and its moments."""
        return self.distributed.concat_on_main_in_host_memory(local.detach().contiguous(), self.shard_sizes)

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        if len(full) != self.num_classes:
            raise ValueError(f"the saved head has {len(full)} identities, this run {self.num_classes}")
        return full[self.start:self.end]

    def full_state_dict(self) -> dict[str, Any]:
        return {"weight": self.checkpoint_rows(self.weight)}

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict({"weight": self.local_rows(state["weight"])})

    def gathered(self) -> MarginHead:
        """The whole head on rank 0 (for validation); this block elsewhere. A collective."""
        if not self.distributed.is_main:
            self.full_rows(self.weight)
            return self
        return MarginHead(self.num_classes, self.weight.shape[1], weight=self.full_rows(self.weight), loss=self.loss)


class ShardedPartialFCHead(PartialFCHead, ShardedMarginHead):
    """This rank's block of centres, of which each step uses the global batch's positives in the block and a
    ``sample_rate`` share of the rest (``PartialFCHead``'s sampling over ``ShardedMarginHead``'s block)."""

    def __init__(self, num_classes: int, embedding_dim: int, loss: MarginLoss, sample_rate: float,
                 batch_size: int, distributed: Distributed) -> None:
        """``batch_size``: one rank's batch; each rank's logits cover the global batch, so its sample has room
        for all of its positives."""
        super().__init__(num_classes, embedding_dim, loss, sample_rate, batch_size * distributed.world_size,
                         kind="arcface", scale=0.0, margin=0.0, distributed=distributed)

    def loss_and_correct(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            self.write_back()
            return ShardedMarginHead.loss_and_correct(self, embeddings, labels)
        distributed = self.distributed
        batch, block = len(labels), self.end - self.start
        everyone = _GatherBatch.apply(embeddings, distributed)
        all_labels = distributed.concat(labels, [batch] * distributed.world_size)
        owned = (all_labels >= self.start) & (all_labels < self.end)
        block_labels = (all_labels - self.start).clamp(0, block - 1)
        index = sample_rows(block_labels[owned], block, self.sample_count)
        self._take_rows(index)
        local_labels = torch.searchsorted(index, block_labels).clamp(max=len(index) - 1)
        cosine = self.cosine_to(everyone, self.active)
        with torch.autocast(device_type=cosine.device.type, enabled=False):
            logits = self.loss(cosine, torch.where(owned, local_labels, -1), self.norms(everyone))
            loss = _ShardedCrossEntropy.apply(logits, local_labels, owned, distributed)
        mine = slice(distributed.rank * batch, (distributed.rank + 1) * batch)
        return loss, self._nearest_is_label_everywhere(everyone.detach(), block_labels, owned)[mine]

    @torch.no_grad()
    def _nearest_is_label_everywhere(self, everyone: torch.Tensor, block_labels: torch.Tensor,
                                     owned: torch.Tensor) -> torch.Tensor:
        """Training accuracy against every centre on every rank (``weight`` equals ``active`` on the sampled rows
        until the optimizer steps), as the sharded head reports it."""
        best = self.distributed.max_(self.nearest_centre(everyone)[0])
        target = (F.normalize(everyone.float(), dim=1) * F.normalize(self.weight[block_labels].float(), dim=1)).sum(dim=1)
        return self.distributed.sum_(torch.where(owned, target, torch.zeros_like(target))) >= best

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        return ShardedMarginHead.clip_grad_norm_(self, max_norm)

    def _is_sampled_state(self, tensor: torch.Tensor) -> bool:
        return any(tensor is value for value in self._row_states().values())

    def checkpoint_rows(self, local: torch.Tensor) -> torch.Tensor:
        """A per-class block gathered as the sharded head does; the optimizer's moments of ``active`` stay as they
        are (every rank decides alike): they are a copy of rows already kept in the ``state_`` buffers."""
        return local.detach() if self._is_sampled_state(local) else super().checkpoint_rows(local)

    def full_state_dict(self) -> dict[str, Any]:
        """Every centre and every row's optimizer state, gathered to rank 0. A collective."""
        self.write_back()
        names = sorted(key for key, _ in self.named_buffers() if key.startswith(STATE_PREFIX))
        return {"weight": self.checkpoint_rows(self.weight), **{name: self.checkpoint_rows(getattr(self, name)) for name in names}}

    def load_full_state_dict(self, state: dict[str, Any]) -> None:
        self.load_state_dict({key: ShardedMarginHead.local_rows(self, value) for key, value in state.items()
                              if key == "weight" or key.startswith(STATE_PREFIX)})

    def gathered(self) -> MarginHead:
        self.write_back()
        return super().gathered()


def map_head_state(optimizer_state: dict[str, Any], group: str, rows: Any) -> dict[str, Any]:
    """The optimizer state with every per-class tensor (moments of the ``group`` parameters) mapped by
    ``rows``: gathered whole for a checkpoint, or cut to this rank's block on resume."""
    ids = {index for entry in optimizer_state["param_groups"] if entry.get("name") == group for index in entry["params"]}
    state = {
        index: {key: rows(value) if isinstance(value, torch.Tensor) and value.dim() > 0 else value
                for key, value in values.items()} if index in ids else values
        for index, values in optimizer_state["state"].items()
    }
    return {**optimizer_state, "state": state}


def head_parameter_names(module: nn.Module, head: nn.Module) -> list[str]:
    """``module``'s names for ``head``'s parameters: what DDP must leave alone (each rank owns its block)."""
    owned = {id(parameter) for parameter in head.parameters()}
    return [name for name, parameter in module.named_parameters() if id(parameter) in owned]


def build_head(config: Any, num_classes: int, embedding_dim: int,
               distributed: Distributed) -> tuple[MarginHead, list[tuple[str, str]]]:
    """The training run's classifier, whole, sharded (as ``arcface.sharded`` and the world decide) or Partial FC
    (``loss.partial_fc_sample_rate`` below 1), with the config's margin loss; with (level, text) notes for the user."""
    sharded, note = sharding_decision(config.arcface.sharded, num_classes, distributed)
    notes = [("warning", note)] if note else []
    loss = loss_from_settings(config)
    sample_rate = config.loss.partial_fc_sample_rate
    batch = config.data.batch_size
    if sample_rate < 1.0 and distributed.enabled:
        if num_classes < distributed.world_size:
            raise ConfigError(f"loss.partial_fc_sample_rate={sample_rate:g} under torchrun samples each rank's share of "
                              f"the centres, and {num_classes} identities cannot be split across "
                              f"{distributed.world_size} ranks: set loss.partial_fc_sample_rate=1, or train in one process")
        head = ShardedPartialFCHead(num_classes, embedding_dim, loss, sample_rate, batch, distributed)
        world = distributed.world_size
        notes.append(("info", f"Partial FC across {world} ranks: each samples {head.sample_count:,} of its about "
                              f"{num_classes // world:,} class centres per step (every positive of the global batch "
                              f"and a random {sample_rate:g} share)"))
        return head, notes
    if sample_rate < 1.0:
        sampled = sampled_count(sample_rate, num_classes, batch)
        notes.append(("info", f"Partial FC: {sampled:,} of {num_classes:,} class centres per step (every positive "
                              f"and a random {sample_rate:g} share)"))
        return PartialFCHead(num_classes, embedding_dim, loss, sample_rate, batch), notes
    if not sharded:
        return MarginHead(num_classes, embedding_dim, loss=loss), notes
    world = distributed.world_size
    notes.append(("info", f"margin head sharded across {world} ranks: about {num_classes // world:,} of "
                          f"{num_classes:,} identities each"))
    return ShardedMarginHead(num_classes, embedding_dim, "arcface", 0.0, 0.0, distributed, loss=loss), notes
