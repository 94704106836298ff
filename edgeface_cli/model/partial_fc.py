"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021; "Killing
Two Birds with One Stone", CVPR 2022): each step the margin loss sees every positive class centre of the batch
and a random ``sample_rate`` share of the others, so the logits, their gradients and the centres' update cost
``sample_rate`` of the full classifier's.

The sampled rows live in ``active``, the one parameter the optimizer steps. Before a step the head copies
the sampled centres, and their rows of every per-row optimizer state (AdamW's moments, SGD's momentum), into
it; the next step (or a checkpoint, or validation) writes them back. A centre that is not sampled is not
touched at all: no weight decay, no momentum, its moments frozen, as in arcface_torch's first Partial FC
(v2 instead leaves the whole matrix to the optimizer, whose momentum and decay then move unsampled rows too).
Adam's bias correction counts the optimizer's steps, not each row's.

Every row's optimizer state is kept in this module's buffers (``state_<name>``), so a checkpoint of the head
holds it and a resume continues exactly. The sampling is written over whichever ``MarginHead`` follows in the
method order: ``training.sharded_head.ShardedPartialFCHead`` samples each rank's block of centres with it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import MarginHead
from .losses import MarginLoss

STATE_PREFIX = "state_"
ACCURACY_CHUNK = 65536  # centres per block when finding each image's nearest centre among all of them


def sampled_count(sample_rate: float, rows: int, batch_size: int) -> int:
    """Centres per step out of ``rows``: a fixed size, so the optimizer's state keeps its shape, with room for
    every positive of a batch of ``batch_size``."""
    return min(rows, max(int(sample_rate * rows), batch_size))


def sample_rows(labels: torch.Tensor, num_classes: int, count: int) -> torch.Tensor:
    """``count`` sorted class indices: every label's, then uniformly random others (the global generator)."""
    positives = torch.unique(labels)
    if count <= len(positives):
        return positives
    keys = torch.rand(num_classes, device=labels.device)
    keys[positives] = 2.0  # above any random key: positives are always among the top ``count``
    return keys.topk(count).indices.sort().values


class PartialFCHead(MarginHead):
    """A ``MarginHead`` whose training step uses the positives plus a ``sample_rate`` share of the negatives.

    ``head_options`` go to the next head in the method order (a sharded head's rank and margin settings); the
    sample is drawn from the rows this process holds (``weight``), and ``batch_size`` is the batch it sees."""

    def __init__(self, num_classes: int, embedding_dim: int, loss: MarginLoss, sample_rate: float,
                 batch_size: int, weight: torch.Tensor | None = None, **head_options: Any) -> None:
        if weight is not None:
            head_options["weight"] = weight
        super().__init__(num_classes, embedding_dim, loss=loss, **head_options)
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1] (got {sample_rate})")
        self.sample_rate = sample_rate
        self.sample_count = sampled_count(sample_rate, len(self.weight), batch_size)
        self.active = nn.Parameter(torch.zeros(self.sample_count, embedding_dim))
        self.weight.requires_grad_(False)  # only ``active`` trains; ``weight`` is the store of every centre
        self.optimizer: torch.optim.Optimizer | None = None
        self.index: torch.Tensor | None = None  # the rows ``active`` holds until written back

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer that steps ``active``: its per-row state is swapped in and out with the rows."""
        self.write_back()
        self.optimizer = optimizer

    def _row_states(self) -> dict[str, torch.Tensor]:
        """The optimizer's per-row state tensors of ``active`` (moments; not the step count)."""
        if self.optimizer is None:
            return {}
        return {name: value for name, value in self.optimizer.state.get(self.active, {}).items()
                if isinstance(value, torch.Tensor) and value.shape == self.active.shape}

    @torch.no_grad()
    def write_back(self) -> None:
        """The sampled rows (centres and optimizer state) back into the store of every row."""
        if self.index is None:
            return
        self.weight[self.index] = self.active.to(self.weight.dtype)
        for name, value in self._row_states().items():
            self._state_buffer(name)[self.index] = value
        self.index = None

    def _state_buffer(self, name: str) -> torch.Tensor:
        key = STATE_PREFIX + name
        if not hasattr(self, key):
            self.register_buffer(key, torch.zeros_like(self.weight))
        return getattr(self, key)

    @torch.no_grad()
    def _take_rows(self, index: torch.Tensor) -> None:
        self.write_back()
        states = self._row_states()
        if not states:  # a fresh optimizer (a new stage): its moments start at zero for every row, as a full FC's
            for name in [key for key, _ in self.named_buffers() if key.startswith(STATE_PREFIX)]:
                getattr(self, name).zero_()
        self.active.copy_(self.weight[index])
        for name, value in states.items():
            value.copy_(self._state_buffer(name)[index])
        self.index = index

    def loss_and_correct(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return super().loss_and_correct(embeddings, labels)
        return self.sampled_loss(embeddings, labels), self._nearest_is_label(embeddings.detach(), labels)

    def sampled_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean margin loss over this step's sample of centres (drawn here), without the accuracy."""
        index = sample_rows(labels, self.num_classes, self.sample_count)
        self._take_rows(index)
        local = torch.searchsorted(index, labels)
        cosine = self.cosine_to(embeddings, self.active)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.cross_entropy(self.loss(cosine, local, self.norms(embeddings)), local)

    @torch.no_grad()
    def _nearest_is_label(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training accuracy against every centre, not only the sampled ones, block by block (``weight`` equals
        ``active`` on the sampled rows until the optimizer steps)."""
        return self.nearest_centre(embeddings)[1] == labels

    @torch.no_grad()
    def nearest_centre(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine, row) of each embedding's nearest centre among this head's rows, block by block."""
        best = torch.full((len(embeddings),), -2.0, device=embeddings.device)
        best_class = torch.zeros(len(embeddings), dtype=torch.long, device=embeddings.device)
        for start in range(0, len(self.weight), ACCURACY_CHUNK):
            values, where = self.cosine_to(embeddings, self.weight[start:start + ACCURACY_CHUNK]).max(dim=1)
            better = values > best
            best = torch.where(better, values, best)
            best_class = torch.where(better, where + start, best_class)
        return best, best_class

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        self.write_back()
        return super().cosine(embeddings)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        return nn.utils.clip_grad_norm_([self.active], max_norm)

    def local_rows(self, full: torch.Tensor) -> torch.Tensor:
        """A saved per-class tensor for this head's rows; saved moments of ``active`` (a copy of rows the
        ``state_`` buffers keep, refilled from them at the next step) come back as zeros of this head's sample
        size, which differs when a run resumes on another number of ranks."""
        if len(full) != self.num_classes and full.shape[1:] == self.active.shape[1:]:
            return torch.zeros_like(self.active)
        return super().local_rows(full)

    def full_state_dict(self) -> dict[str, Any]:
        """Every centre, the loss's statistics and every row's optimizer state; not the transient ``active``."""
        self.write_back()
        return {key: value for key, value in self.state_dict().items() if key != "active"}

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """A state with or without rows of optimizer state (a fresh head's has none: they start at zero)."""
        self.index = None
        for key in state_dict:
            if key.startswith(STATE_PREFIX):
                self._state_buffer(key[len(STATE_PREFIX):])
        missing = {key: torch.zeros_like(value) for key, value in self.named_buffers() if key.startswith(STATE_PREFIX)}
        return super().load_state_dict({"active": self.active.detach(), **missing, **state_dict}, strict, assign)
