"""The training set's batches on the device: this rank's shuffled share of the images, augmented per epoch on
the device, or (stage 1 with a frozen backbone) the embeddings of the same images, computed once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from ..config import EdgeFaceConfig
from ..data.augment import EpochAugmentation, plan_epoch, to_model_input
from ..data.folder import ScanResult
from ..data.loaders import face_dataset, inference_loader, loader_batches, make_loader, set_loader_epoch
from .distributed import Distributed

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # (labels, model input, frozen embeddings)
FrozenEmbeddings = tuple[torch.Tensor, torch.Tensor | None]  # every image's, and its mirror's when flipping


class TrainBatches:
    def __init__(self, config: EdgeFaceConfig, train_scan: ScanResult, device: torch.device, distributed: Distributed,
                 channels_last: bool) -> None:
        data = config.data
        settings = train_scan.settings
        self.device, self.channels_last = device, channels_last
        self.seed, self.hflip, self.color_jitter = config.runtime.seed, data.hflip, data.color_jitter
        self.degrade = config.augment if config.augment.degrades() else None
        self.labels = torch.tensor([sample.label for sample in train_scan.samples], device=device)
        self.loader = make_loader(
            face_dataset(train_scan.samples, train_scan, settings), data.batch_size, True, data.workers,
            device.type == "cuda", config.runtime.seed, distributed.rank, distributed.world_size,
        )
        # Stage 1 embeds the training set once (no augmentation, no shuffle); under DDP each rank embeds
        # every world_size-th image and the ranks exchange the results.
        self.embedding_loader = inference_loader(
            train_scan.samples[distributed.rank::distributed.world_size], train_scan, settings, data.batch_size,
            data.workers, device,
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.loader)

    @property
    def images(self) -> int:
        return len(self.labels)

    def of_epoch(self, epoch: int, frozen: Callable[[], FrozenEmbeddings] | None = None) -> Iterator[Batch]:
        """The epoch's batches; ``frozen`` gives the frozen backbone's embeddings (computed when first needed)."""
        set_loader_epoch(self.loader, epoch)
        plan = plan_epoch(self.images, self.seed, epoch, self.hflip, self.color_jitter, self.degrade).to(self.device)
        return self._cached(plan, frozen) if frozen is not None else self._decoded(plan)

    def _cached(self, plan: EpochAugmentation, frozen: Callable[[], FrozenEmbeddings]) -> Iterator[Batch]:
        plain, mirrored = frozen()
        batches = loader_batches(self.loader)  # the image loader's order (this rank's share), on the device once
        for index in batches.shard().to(self.device, non_blocking=True).split(batches.batch_size):
            embeddings = plain[index]
            if mirrored is not None:
                embeddings = torch.where(plan.flip[index].view(-1, 1), mirrored[index], embeddings)
            yield self.labels[index], None, embeddings

    def _decoded(self, plan: EpochAugmentation) -> Iterator[Batch]:
        for images, labels, _, indices in self.loader:
            inputs = to_model_input(images, self.device, indices, plan, self.channels_last)
            yield labels.to(self.device, non_blocking=True), inputs, None
