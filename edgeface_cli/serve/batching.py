"""Micro-batching: photos from requests that arrive together go through the model as one batch.

Requests put their photo on an asyncio queue; one worker takes the first, waits up to ``window_ms`` for more
(at most ``max_images``), and runs detection and embedding for all of them in one thread, off the event loop:
every face of every photo goes through the model in one call, so under load the model sees large batches and
throughput grows with it, while a lone request waits only the window.

Faces are found, aligned and embedded by ``deploy.faces.embed_photos``, the function behind the CLI's
``embed_faces``: only the model call is shared."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from ..deploy.embedder import Embedder
from ..deploy.faces import FaceResult, embed_photos


@dataclass
class _Job:
    image: Image.Image
    done: asyncio.Future[list[FaceResult]]


@dataclass
class FaceBatcher:
    """``await batcher.embed(image)`` -> that photo's faces; ``batch_sizes``: photos per model call, the latest 1024."""

    embedder: Embedder
    flip: bool = False
    window_ms: float = 4.0
    max_images: int = 32
    on_batch: Callable[[int], None] | None = None  # told each batch's size (the metrics' histogram)
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=1024))

    def __post_init__(self) -> None:
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="edgeface-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    async def embed(self, image: Image.Image) -> list[FaceResult]:
        if self._queue is None:
            raise RuntimeError("FaceBatcher.start() was not awaited")
        job = _Job(image, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.done

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.window_ms / 1000.0
            while len(jobs) < self.max_images:
                remaining = deadline - loop.time()
                if remaining <= 0 and self._queue.empty():
                    break
                try:
                    jobs.append(await asyncio.wait_for(self._queue.get(), max(remaining, 0)) if remaining > 0
                                else self._queue.get_nowait())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            self.batch_sizes.append(len(jobs))
            if self.on_batch is not None:
                self.on_batch(len(jobs))
            try:
                results = await loop.run_in_executor(self._thread, embed_photos, self.embedder,
                                                     [job.image for job in jobs], self.flip)
            except Exception as error:  # noqa: BLE001 - every waiting request gets the failure, the worker lives on
                for job in jobs:
                    if not job.done.done():
                        job.done.set_exception(error)
                continue
            for job, faces in zip(jobs, results):
                if not job.done.done():
                    job.done.set_result(faces)
