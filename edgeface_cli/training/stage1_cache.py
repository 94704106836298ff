"""Stage 1 on a frozen backbone's embeddings, computed once: whether they can be (colour jitter and the
degradations change each image every epoch; memory on every rank), and computing them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import EdgeFaceConfig
from ..evaluation.inference import embed_with_mirror
from ..events import EmbeddingProgress, EventHandler
from ..model.runtime import BackboneForward, Precision
from .batches import FrozenEmbeddings, TrainBatches
from .distributed import Distributed

CHANGING_IMAGES = ("stage 1 runs the frozen backbone every epoch: colour jitter and the degradations change each "
                   "image every epoch, so its embeddings cannot be computed once")


def free_memory_bytes(device: torch.device) -> int | None:
    """What new tensors on ``device`` can use (None when unknown): free GPU memory plus what the allocator holds
    unused; on the CPU the kernel's MemAvailable (page cache counts as free)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None
    return None


def stage1_cache_bytes(images: int, embedding_dim: int, mirror: bool) -> tuple[int, int]:
    """(bytes the stage-1 embeddings hold, bytes needed while they are built): fp32, the mirror's too, on every
    rank. Exchanging them between ranks holds the gathered parts and the joined copy at once: twice the size."""
    held = images * embedding_dim * 4 * (2 if mirror else 1)
    return held, 2 * held


def stage1_cache_shortfall(images: int, embedding_dim: int, mirror: bool, device: torch.device,
                           distributed: Distributed) -> str | None:
    """Why the stage-1 embeddings cannot be kept in memory, or None when they fit on every rank (a collective
    under torchrun: every rank must take the same path, or the exchange would wait forever)."""
    held, needed = stage1_cache_bytes(images, embedding_dim, mirror)
    free = free_memory_bytes(device)
    short = torch.tensor([1.0 if free is not None and needed > free else 0.0], device=device)
    if not distributed.max_(short).item():
        return None
    where = f"{free / 1e9:.1f} GB free on {device}" if free is not None and needed > free else "the memory of another rank"
    return (f"stage 1 runs the frozen backbone every epoch: the embeddings of {images:,} images"
            f"{' and their mirrors' if mirror else ''} ({held / 1e9:.1f} GB, {needed / 1e9:.1f} GB while they are built) "
            f"do not fit in {where} (set optim.stage1_cache: false to skip this check)")


class Stage1Cache:
    """The frozen backbone's embeddings of every training image (and its mirror's), kept while stage 1 lasts."""

    def __init__(self, config: EdgeFaceConfig, batches: TrainBatches, embedding_dim: int, distributed: Distributed,
                 on_event: EventHandler) -> None:
        self.wanted = config.optim.stage1_cache
        self.images_fixed = config.data.color_jitter == 0 and not config.augment.degrades()
        self.mirror = config.data.hflip
        self.batches, self.embedding_dim, self.distributed, self.on_event = batches, embedding_dim, distributed, on_event
        self.verdict: tuple[str | None] | None = None  # (why they do not fit,) once decided
        self.embeddings: FrozenEmbeddings | None = None

    def usable(self) -> bool:
        return self.wanted and self.images_fixed and self.memory_note() is None

    def memory_note(self) -> str | None:
        """Why the embeddings do not fit in memory (None: they do); decided once, by every rank together."""
        if self.verdict is None:
            self.verdict = (stage1_cache_shortfall(self.batches.images, self.embedding_dim, self.mirror,
                                                   self.batches.device, self.distributed),)
        return self.verdict[0]

    def why_not(self) -> str | None:
        """Why stage 1 cannot use the cache although optim.stage1_cache asks for it (None: it can, or is not asked)."""
        if not self.wanted or self.usable():
            return None
        return self.memory_note() or CHANGING_IMAGES

    def frozen(self, forward: BackboneForward, precision: Precision, channels_last: bool, epoch: int) -> FrozenEmbeddings:
        """Every training image's embedding (and its mirror's, when flipping), computed at the first call."""
        if self.embeddings is None:
            device = self.batches.device
            plain, mirrored = embed_with_mirror(
                forward, self.batches.embedding_loader, device, precision, self.mirror, channels_last,
                lambda done, total: self.on_event(EmbeddingProgress(epoch, done, total)),
            )
            total = self.batches.images
            self.embeddings = (
                self.distributed.interleave(plain.to(device), total),
                None if mirrored is None else self.distributed.interleave(mirrored.to(device), total),
            )
        return self.embeddings

    def clear(self) -> None:
        """The backbone changed (stage 2, a reload): the embeddings no longer describe it."""
        self.embeddings = None
