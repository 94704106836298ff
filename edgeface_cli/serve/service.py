"""What a running service holds: the model (loaded once), the store (bound to that model), the search index
following the store, the micro-batcher, the threshold that applies, the settings and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..deploy.decisions import decision_threshold
from ..deploy.embedder import Embedder
from ..deploy.faces import FaceResult
from ..thresholds import Threshold
from .batching import FaceBatcher
from .matching import GalleryIndex
from .metrics import ServiceMetrics
from .settings import ServeSettings
from .store import GalleryStore, open_store


@dataclass
class Service:
    embedder: Embedder
    store: GalleryStore
    store_name: str
    index: GalleryIndex
    settings: ServeSettings
    threshold: Threshold | None
    threshold_reason: str
    batcher: FaceBatcher
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    ready: bool = False

    @classmethod
    def open(cls, model: str | Path, store: str | Path, settings: ServeSettings | None = None,
             trust_code: bool = False, embedder: Embedder | None = None) -> "Service":
        """Load the model, open the store and bind it to the model (``StoreModelError`` for a store of another
        model), build the search index."""
        settings = settings or ServeSettings()
        embedder = embedder or Embedder.load(model, trust_code=trust_code)
        flip = settings.matching.flip
        opened = open_store(store)
        try:
            opened.bind(embedder.fingerprint(flip), str(store))
            index = GalleryIndex(opened, settings.matching.index, settings.matching.exact_up_to,
                                 settings.matching.mode, settings.matching.storage)
        except BaseException:
            opened.close()
            raise
        threshold, reason = decision_threshold(embedder.threshold_sources(flip), settings.matching.threshold)
        metrics = ServiceMetrics()
        batcher = FaceBatcher(embedder, flip, settings.batching.window_ms, settings.batching.max_images,
                              on_batch=metrics.batch.observe)
        service = cls(embedder, opened, str(store), index, settings, threshold, reason, batcher, metrics)
        metrics.gallery.set_function(index.size)
        metrics.approximate_collections.set_function(index.approximate_collections)
        return service

    async def faces(self, image: Image.Image) -> list[FaceResult]:
        return await self.batcher.embed(image)

    def person_similarity(self, collection: str, person: str, probe: np.ndarray) -> float:
        """The probe against one person: their best sample, or their mean template (the matching mode)."""
        vectors = np.stack([sample.embedding for sample in self.store.samples(collection, person)])
        if self.settings.matching.mode == "mean":
            template = vectors.sum(axis=0)
            return float(probe @ (template / max(float(np.linalg.norm(template)), 1e-12)))
        return float((vectors @ probe).max())

    def close(self) -> None:
        self.store.close()
