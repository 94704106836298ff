"""From scanned samples to batches: datasets (decoding per item, or whole batches from the decoded-image
cache), the epoch sampler shared by DDP ranks, a prefetching loader and the loader factories."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import EdgeFaceError
from .cache import CachedImages
from .folder import ImageSettings, Sample, ScanResult, decode_with
from .rec_dataset import RecDataset, RecSamples, RecScan


class FaceDataset(Dataset):
    """Decodes one file per item (no cache): (uint8 image, label, identity, index)."""

    def __init__(self, samples: Sequence[Sample], settings: ImageSettings) -> None:
        self.samples = list(samples)
        self.settings = settings

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        sample = self.samples[index]
        image = decode_with(sample.path, self.settings)
        return image, sample.label, sample.identity, index


class CachedBatches(Dataset):
    """Whole batches gathered from the decoded-image cache: one indexing call per batch, no per-image work.

    Takes a list of dataset indices (from ``EpochBatches``); the memory map is opened lazily so that
    worker processes each open their own instead of pickling the array.
    """

    def __init__(self, samples: Sequence[Sample], cached: CachedImages) -> None:
        self.cached = cached
        self.rows = np.array([sample.row for sample in samples], dtype=np.int64)
        self.labels = torch.tensor([sample.label for sample in samples], dtype=torch.int64)
        self.identities = torch.tensor([sample.identity for sample in samples], dtype=torch.int64)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._array is None:
            self._array = self.cached.array()
        index = torch.as_tensor(indices, dtype=torch.int64)
        rows = self.rows[index.numpy()]
        order = np.argsort(rows, kind="stable")  # read the file front to back, then restore batch order
        gathered = np.empty((len(rows), *self._array.shape[1:]), dtype=np.uint8)
        gathered[order] = self._array[rows[order]]
        return torch.from_numpy(gathered), self.labels[index], self.identities[index], index


class ComposedScan(ScanResult):
    """A training set made of parts (public identities mixed into the user's: rehearsal.py) that builds its own
    dataset; the parts build on this module, which never imports them."""

    def dataset(self, samples: Sequence[Sample], settings: ImageSettings) -> Dataset | None:
        """The dataset of ``samples`` when they are this composition's (or a slice of it), else None."""
        raise NotImplementedError

    @property
    def unlabelled(self) -> bool:
        """Whether some samples carry label -1 (trained toward a teacher, never classified)."""
        return False


class ComposedDataset(Dataset):
    """A dataset whose shuffled training epochs its own batch sampler draws (each batch's share of public samples)."""

    def training_batches(self, batch_size: int, seed: int, rank: int, world: int) -> "EpochBatches | None":
        """The sampler of a shuffled training epoch (an ``EpochBatches``: it shards the user's epoch the same way),
        or None when the plain ``EpochBatches`` fit (a slice of the training set)."""
        raise NotImplementedError


def face_dataset(samples: Sequence[Sample], scan: ScanResult | None, settings: ImageSettings) -> Dataset:
    """Batches from the scan's cache when it has one, a record decoded per image from a ``.rec``, else a file
    decoded per image; a training set made of parts (``ComposedScan``) builds its own."""
    composed = scan.dataset(samples, settings) if isinstance(scan, ComposedScan) else None
    if composed is not None:
        return composed
    if isinstance(scan, RecScan) and isinstance(samples, RecSamples) and scan.records is not None:
        return RecDataset(samples, scan.records, settings)
    if scan is not None and scan.cached is not None and all(sample.row >= 0 for sample in samples):
        return CachedBatches(samples, scan.cached)
    return FaceDataset(samples, settings)


class EpochBatches(Sampler[list[int]]):
    """Index batches, shuffled by a generator seeded with (seed, epoch): reproducible after a resume.

    Under data-parallel training every rank draws the same order and takes every ``world``-th index
    (padded by wrapping around, as DistributedSampler does), so all ranks run the same number of
    batches. The stage-1 embedding cache walks the same batches as the image loader.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def shard(self) -> torch.Tensor:
        """This rank's indices of the epoch, in order (the whole order for a single process)."""
        order = self.order()
        if self.world == 1:
            return order
        padded = order.repeat(-(-self.world // self.size) + 1)[: -(-self.size // self.world) * self.world]
        return padded[self.rank::self.world]

    def __iter__(self) -> Iterator[list[int]]:
        shard = self.shard().numpy()
        return (shard[start:start + self.batch_size].tolist() for start in range(0, len(shard), self.batch_size))

    def __len__(self) -> int:
        per_rank = -(-self.size // self.world)
        return (per_rank + self.batch_size - 1) // self.batch_size


class PrefetchLoader:
    """Iterates a loader in one background thread, ``depth`` batches ahead.

    Cached batches need no worker processes: gathering rows from the memory map and pinning them
    release the GIL, so a thread overlaps them with the training step, while handing batches over
    from worker processes costs more than the gather itself (2,700 vs 9,700 images/s measured on 2 cores).
    """

    def __init__(self, loader: DataLoader, depth: int = 2) -> None:
        self.loader = loader
        self.depth = depth
        self.sampler = loader.sampler
        self.batch_sampler = None
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        handoff: queue.Queue[Any] = queue.Queue(maxsize=self.depth)
        stop = threading.Event()
        finished = object()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in self.loader:
                    if not put(batch):
                        return
                put(finished)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consuming thread
                put(exc)

        thread = threading.Thread(target=produce, name="edgeface-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item = handoff.get()
                if item is finished:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()


class WorkerLoader(DataLoader):
    """A DataLoader whose worker processes' user errors (a damaged record, say) reach the caller as the one line
    they were raised with: torch re-raises them with the worker's traceback folded into the message."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        try:
            yield from super().__iter__()
        except EdgeFaceError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            if len(lines) <= 1:
                raise
            last = lines[-1]
            raise type(exc)(last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last) from None


BatchLoader = DataLoader | PrefetchLoader


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, pin_memory: bool,
                seed: int, rank: int = 0, world: int = 1) -> BatchLoader:
    """Batches of (uint8 images, labels, identities, dataset indices) in ``EpochBatches`` order.

    Files decoded per image use ``workers`` processes; cached batches use one prefetch thread. A shuffled
    training set made of parts draws its batches with its own sampler (``ComposedDataset``).
    """
    own = dataset.training_batches(batch_size, seed, rank, world) if shuffle and isinstance(dataset, ComposedDataset) else None
    if own is not None:
        return WorkerLoader(dataset, batch_sampler=own, num_workers=workers, pin_memory=pin_memory,
                            persistent_workers=workers > 0)
    batches = EpochBatches(len(dataset), batch_size, shuffle, seed, rank, world)  # type: ignore[arg-type]
    if isinstance(dataset, CachedBatches):
        return PrefetchLoader(DataLoader(dataset, sampler=batches, batch_size=None, num_workers=0, pin_memory=pin_memory))
    return WorkerLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=workers > 0)


def inference_loader(samples: Sequence[Sample], scan: ScanResult | None, settings: ImageSettings, batch_size: int,
                     workers: int, device: torch.device) -> BatchLoader:
    """Unshuffled, unaugmented batches for embedding (validation, eval, galleries, pairs)."""
    return make_loader(face_dataset(samples, scan, settings), batch_size, False, workers, device.type == "cuda", 0)


def loader_batches(loader: BatchLoader) -> EpochBatches:
    return loader.sampler if isinstance(loader.sampler, EpochBatches) else loader.batch_sampler  # type: ignore[return-value]


def set_loader_epoch(loader: BatchLoader, epoch: int) -> None:
    """The shuffle order of an epoch; augmentation is chosen per batch on the device (augment.py)."""
    loader_batches(loader).set_epoch(epoch)
