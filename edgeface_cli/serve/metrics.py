"""Prometheus metrics of one app (its own registry, so two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("edgeface_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("edgeface_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=self.registry)
        self.gallery = Gauge("edgeface_gallery_samples", "Samples in the search index", registry=self.registry)
        self.approximate_collections = Gauge("edgeface_search_approximate_collections", "Collections searched "
                                             "by an approximate index, binary or HNSW (the others exactly)",
                                             registry=self.registry)
        self.rejections = Counter("edgeface_rejections", "Requests or samples refused, by reason", ["reason"],
                                  registry=self.registry)
        self.batch = Histogram("edgeface_batch_images", "Photos per model call (micro-batching)",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
