"""`make bench`: measured, never asserted. Prints one line per measurement.

1. all-pairs verification statistics for 20,000 embeddings (~200 M pairs), blockwise;
2. training throughput (images/s) of EdgeFace-XXS at 112 px on this machine's device.
"""

from __future__ import annotations

import resource
import time

import torch

from edgeface_cli.heads import MarginHead
from edgeface_cli.metrics import all_pairs_histogram, verification_stats
from edgeface_cli.models import EdgeFace
from edgeface_cli.runtime import resolve_device, resolve_precision


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def bench_all_pairs(count: int = 20_000, dim: int = 512, identities: int = 2_000) -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(identities, dim, generator=generator)
    labels = torch.randint(0, identities, (count,), generator=generator)
    embeddings = centres[labels] + 2.0 * torch.randn(count, dim, generator=generator)
    started = time.perf_counter()
    stats = verification_stats(all_pairs_histogram(embeddings, labels))
    seconds = time.perf_counter() - started
    pairs = stats.pairs_positive + stats.pairs_negative
    print(
        f"all-pairs metrics: {count} embeddings, {pairs / 1e6:.1f} M pairs in {seconds:.2f} s "
        f"({pairs / seconds / 1e6:.0f} M pairs/s), AUC {stats.roc_auc:.4f}, EER {stats.eer:.4f}, "
        f"peak RSS {peak_rss_gb():.2f} GB, {torch.get_num_threads()} threads"
    )


def bench_training(steps: int = 10, batch_size: int = 64, image_size: int = 112) -> None:
    device = resolve_device("auto")
    precision = resolve_precision("auto", device)
    backbone = EdgeFace("edgeface_xxs").to(device)
    head = MarginHead(518, 512).to(device)
    optimizer = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    labels = torch.randint(0, 518, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
            logits, _ = head(backbone(images), labels)
            loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(
        f"train step (model only, synthetic batch): edgeface_xxs {image_size}px batch {batch_size} on {device} "
        f"({precision.label}): {steps * batch_size / seconds:.1f} images/s"
    )


if __name__ == "__main__":
    bench_all_pairs()
    bench_training()
