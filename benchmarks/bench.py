"""`make bench`: measured, never asserted. Each figure stands beside a naive reference run in the
same process, on the same data, batch size and threads: the loop a user would write from the seed
document (torchvision ImageFolder + Resize/RandomHorizontalFlip/ToTensor/Normalize + DataLoader,
ArcFace logits, AdamW, clipping). Medians of repeats; writes bench.json and prints a table.

    python benchmarks/bench.py [--device auto|cpu|cuda] [--amp auto|fp16|bf16|off] [--batch-size 64]
                               [--repeats 3] [--quick] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader

from edgeface_cli.config import build_config
from edgeface_cli.data.augment import plan_epoch, to_model_input
from edgeface_cli.data.folder import ImageSettings, scan_image_folder
from edgeface_cli.data.loaders import face_dataset, inference_loader, make_loader
from edgeface_cli.data.sample_data import write_sample_dataset
from edgeface_cli.evaluation.inference import extract
from edgeface_cli.model.backbones import EdgeFace
from edgeface_cli.model.heads import MarginHead
from edgeface_cli.model.runtime import prepare_device, resolve_device, resolve_precision
from edgeface_cli.training.run import train

ROOT = Path(__file__).resolve().parent.parent

# The targets (ratios ours / naive unless stated). "min": at least; "max": at most.
TARGETS: dict[str, tuple[str, float, str]] = {
    "data_112_later": ("min", 5.0, "x naive"),
    "data_large_later": ("min", 10.0, "x naive"),
    "data_large_first": ("min", 2.0, "x naive"),
    "train_stage2_epoch": ("min", 1.2, "x naive"),
    "train_stage1_later": ("min", 10.0, "x uncached stage 1"),
    "all_pairs_seconds": ("max", 5.0, "s"),
    "all_pairs_peak_gb": ("max", 2.0, "GB"),
    "help_seconds": ("max", 0.5, "s"),
    "gpu_epoch_fraction_of_bare": ("min", 0.8, "of the bare step (GPU only)"),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], int], device: torch.device) -> float:
    """Images per second of ``function`` (which returns how many images it processed)."""
    sync(device)
    started = time.perf_counter()
    images = function()
    sync(device)
    return images / (time.perf_counter() - started)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------ data


def make_jpeg_dataset(root: Path, identities: int, per_identity: int, size: int, seed: int) -> Path:
    """Generated faces saved as JPEG (quality 90), one folder per identity.

    Faces above 256 px are drawn at 256 px, upscaled and given sensor-like noise: a photo-sized
    JPEG (what the decoder's time depends on) without drawing every face at full size.
    """
    staging = root / "png"
    write_sample_dataset(staging, identities, per_identity, min(size, 256), seed, val_per_identity=1)
    out = root / "jpeg"
    noise = np.random.default_rng(seed)
    for source in sorted((staging / "train").rglob("*.png")):
        target = out / source.parent.name / (source.stem + ".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(source).convert("RGB")
        if size > image.width:
            pixels = np.asarray(image.resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
            pixels = pixels + noise.integers(-6, 7, pixels.shape, dtype=np.int16)
            image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        image.save(target, quality=90)
    shutil.rmtree(staging)
    return out


def naive_transform(size: int, train: bool) -> T.Compose:
    steps: list[Any] = [T.Resize((size, size))]
    if train:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def naive_loader(root: Path, size: int, batch_size: int, workers: int, device: torch.device, train: bool) -> DataLoader:
    dataset = torchvision.datasets.ImageFolder(str(root), naive_transform(size, train))
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
                      pin_memory=device.type == "cuda")


def naive_data_epoch(root: Path, size: int, batch_size: int, workers: int, device: torch.device) -> int:
    count = 0
    for images, labels in naive_loader(root, size, batch_size, workers, device, True):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        count += len(labels)
    return count


def ours_data(root: Path, size: int, batch_size: int, workers: int, device: torch.device, cache_dir: Path,
              epochs: int) -> list[float]:
    """Images/s of each epoch, the first including the scan that decodes once into the cache."""
    rates = []
    sync(device)
    started = time.perf_counter()
    settings = ImageSettings(size, "stretch", "on", cache_dir)  # stretch: the same geometry as Resize((S, S))
    scan = scan_image_folder(root, settings=settings)
    loader = make_loader(face_dataset(scan.samples, scan, settings), batch_size, True, workers, device.type == "cuda", 0)
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        plan = plan_epoch(len(scan.samples), 0, epoch, True, 0.0).to(device)
        count = 0
        for images, labels, _, indices in loader:
            to_model_input(images, device, indices, plan, device.type == "cuda")  # the work being measured
            labels = labels.to(device, non_blocking=True)
            count += len(labels)
        sync(device)
        now = time.perf_counter()
        rates.append(count / (now - started))
        started = now
    return rates


def bench_data(label: str, root: Path, size: int, batch_size: int, workers: int, device: torch.device,
               repeats: int, results: dict[str, Any]) -> None:
    first, later, naive = [], [], []
    for _ in range(repeats):
        cache_dir = Path(tempfile.mkdtemp(prefix="edgeface-bench-cache-"))
        rates = ours_data(root, size, batch_size, workers, device, cache_dir, epochs=3)
        shutil.rmtree(cache_dir)
        first.append(rates[0])
        later.append(median(rates[1:]))
        naive.append(timed(lambda: naive_data_epoch(root, size, batch_size, workers, device), device))
    reference = median(naive)
    results[f"data_{label}_first"] = {"ours": median(first), "naive": reference, "ratio": median(first) / reference,
                                      "unit": "images/s"}
    results[f"data_{label}_later"] = {"ours": median(later), "naive": reference, "ratio": median(later) / reference,
                                      "unit": "images/s"}


# ------------------------------------------------------------------ training


def reference_step(backbone: EdgeFace, head: MarginHead, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, precision: Any, images: torch.Tensor, labels: torch.Tensor,
                   skip_nan: bool) -> torch.Tensor | None:
    """One step as the seed document writes it: ArcFace logits, GradScaler, two clips, AdamW.

    ``skip_nan`` adds its per-batch NaN check (a host sync); None when that skipped the batch.
    """
    with torch.autocast(images.device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
        logits, _ = head(backbone(images), labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
    if skip_nan and (torch.isnan(loss) or torch.isinf(loss)):
        return None
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
    torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    return loss


def naive_train_epoch(root: Path, size: int, batch_size: int, workers: int, device: torch.device, amp: str,
                      backbone: EdgeFace, head: MarginHead) -> int:
    """The seed document's loop: per-batch .item() for the running loss, two clips, GradScaler."""
    precision = resolve_precision(amp, device)
    optimizer = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    backbone.train()
    count, running = 0, 0.0
    for images, labels in naive_loader(root, size, batch_size, workers, device, True):
        images, labels = images.to(device), labels.to(device)
        loss = reference_step(backbone, head, optimizer, scaler, precision, images, labels, skip_nan=True)
        if loss is None:
            continue
        running += loss.item()
        count += len(labels)
    return count


def ours_train_rows(root: Path, size: int, batch_size: int, workers: int, device: torch.device, amp: str,
                    cache_dir: Path, stage1_epochs: int, epochs: int, stage1_cache: bool, compile: bool) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix="edgeface-bench-run-"))
    config = build_config(None, {
        "data.train_dir": root, "runtime.out": out / "run", "runtime.device": str(device), "runtime.amp": amp,
        "optim.stage1_epochs": stage1_epochs, "optim.epochs": epochs, "data.batch_size": batch_size,
        "data.workers": workers,
    }, [f"data.image_size={size}", "data.non_square=stretch", "data.cache=on", f"data.cache_dir={cache_dir}",
        f"optim.stage1_cache={str(stage1_cache).lower()}", f"runtime.compile={str(compile).lower()}"],
        search_default_file=False)
    result = train(config, lambda event: None)
    shutil.rmtree(out)
    if result.status != "finished":
        raise RuntimeError(f"bench training run ended {result.status}: {result.stop_reason}")
    return [row for row in result.records if "event" not in row]


def bench_training(root: Path, size: int, batch_size: int, workers: int, device: torch.device, amp: str,
                   repeats: int, classes: int, compile: bool, results: dict[str, Any]) -> None:
    cache_dir = Path(tempfile.mkdtemp(prefix="edgeface-bench-cache-"))
    ours_train_rows(root, size, batch_size, workers, device, amp, cache_dir, 0, 1, True, compile)  # warm the cache
    torch.manual_seed(0)
    backbone = EdgeFace("edgeface_xxs").to(device)
    head = MarginHead(classes, 512).to(device)
    naive_train_epoch(root, size, batch_size, workers, device, amp, backbone, head)  # warm-up
    stage2, naive = [], []
    for _ in range(repeats):  # interleaved, so both loops see the same machine
        rows = ours_train_rows(root, size, batch_size, workers, device, amp, cache_dir, 0, 1, True, compile)
        stage2.append(rows[0]["images_per_s"])
        naive.append(timed(lambda: naive_train_epoch(root, size, batch_size, workers, device, amp, backbone, head), device))
    cached = ours_train_rows(root, size, batch_size, workers, device, amp, cache_dir, 1 + repeats, 1 + repeats, True, compile)
    uncached = ours_train_rows(root, size, batch_size, workers, device, amp, cache_dir, repeats, repeats, False, compile)
    shutil.rmtree(cache_dir)
    reference = median(naive)
    results["train_stage2_epoch"] = {"ours": median(stage2), "naive": reference, "ratio": median(stage2) / reference,
                                     "unit": "images/s"}
    uncached_rate = median([row["images_per_s"] for row in uncached])
    results["train_stage1_first"] = {"ours": cached[0]["images_per_s"], "naive": uncached_rate,
                                     "ratio": cached[0]["images_per_s"] / uncached_rate, "unit": "images/s",
                                     "reference": "uncached stage-1 epoch (frozen backbone run every epoch)"}
    later = median([row["images_per_s"] for row in cached[1:]])
    results["train_stage1_later"] = {"ours": later, "naive": uncached_rate, "ratio": later / uncached_rate,
                                     "unit": "images/s", "reference": "uncached stage-1 epoch"}
    bare = bench_bare_step(size, batch_size, device, amp, classes)
    results["bare_step"] = {"ours": bare, "unit": "images/s", "reference": "the model's ceiling: one step on a batch in memory"}
    results["epoch_fraction_of_bare"] = {"ours": median(stage2) / bare, "unit": "fraction"}
    if device.type == "cuda":
        results["gpu_epoch_fraction_of_bare"] = {"ours": median(stage2) / bare, "unit": "fraction"}


def bench_bare_step(size: int, batch_size: int, device: torch.device, amp: str, classes: int, steps: int = 10) -> float:
    precision = resolve_precision(amp, device)
    channels_last = prepare_device(device)
    backbone = EdgeFace("edgeface_xxs").to(device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    head = MarginHead(classes, 512).to(device)
    optimizer = torch.optim.AdamW(list(backbone.parameters()) + list(head.parameters()), lr=1e-4,
                                  fused=device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_scaler)
    images = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (batch_size,), device=device)

    def step() -> int:
        reference_step(backbone, head, optimizer, scaler, precision, images, labels, skip_nan=False)
        return batch_size

    for _ in range(3):
        step()  # warm-up (cuDNN picks its kernels)
    return timed(lambda: sum(step() for _ in range(steps)), device)


# ------------------------------------------------------------------ eval


def naive_embed(root: Path, size: int, batch_size: int, workers: int, device: torch.device, amp: str,
                backbone: EdgeFace) -> int:
    precision = resolve_precision(amp, device)
    backbone.eval()
    count = 0
    with torch.inference_mode():
        for images, labels in naive_loader(root, size, batch_size, workers, device, False):
            with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
                embeddings = backbone(images.to(device)).float().cpu()
            count += len(embeddings)
    return count


def bench_embedding(root: Path, size: int, batch_size: int, workers: int, device: torch.device, amp: str,
                    repeats: int, results: dict[str, Any]) -> None:
    precision = resolve_precision(amp, device)
    channels_last = prepare_device(device)
    backbone = EdgeFace("edgeface_xxs").to(device)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    cache_dir = Path(tempfile.mkdtemp(prefix="edgeface-bench-cache-"))
    settings = ImageSettings(size, "stretch", "on", cache_dir)
    scan = scan_image_folder(root, settings=settings)

    def ours() -> int:
        loader = inference_loader(scan.samples, scan, settings, batch_size, workers, device)
        return len(extract(backbone, loader, device, precision, channels_last=channels_last).embeddings)

    ours_rates = [timed(ours, device) for _ in range(repeats)]
    naive_rates = [timed(lambda: naive_embed(root, size, batch_size, workers, device, amp, backbone), device)
                   for _ in range(repeats)]
    shutil.rmtree(cache_dir)
    results["eval_embedding"] = {"ours": median(ours_rates), "naive": median(naive_rates),
                                 "ratio": median(ours_rates) / median(naive_rates), "unit": "images/s"}


# ------------------------------------------------------------------ all pairs, start-up

ALL_PAIRS_CHILD = """
import resource, time, json, torch
from pathlib import Path
from edgeface_cli.evaluation.metrics import all_pairs_histogram, verification_stats

def peak_gb():
    # VmHWM belongs to this process image; ru_maxrss would include the parent's memory at fork.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

generator = torch.Generator().manual_seed(0)
centres = torch.randn(2000, 512, generator=generator)
labels = torch.randint(0, 2000, (20000,), generator=generator)
embeddings = centres[labels] + 2.0 * torch.randn(20000, 512, generator=generator)
before = peak_gb()
started = time.perf_counter()
stats = verification_stats(all_pairs_histogram(embeddings, labels))
seconds = time.perf_counter() - started
after = peak_gb()
print(json.dumps({"seconds": seconds, "peak_gb": after, "added_gb": after - before,
                  "pairs": stats.pairs_positive + stats.pairs_negative, "auc": stats.roc_auc}))
"""


def bench_all_pairs(results: dict[str, Any]) -> None:
    """In a fresh process, so its peak memory is its own."""
    output = subprocess.run([sys.executable, "-c", ALL_PAIRS_CHILD], capture_output=True, text=True, check=True)
    measured = json.loads(output.stdout.strip().splitlines()[-1])
    results["all_pairs_seconds"] = {"ours": measured["seconds"], "unit": "s",
                                    "reference": f"{measured['pairs'] / 1e6:.0f} M pairs of 20,000 embeddings"}
    results["all_pairs_peak_gb"] = {"ours": measured["peak_gb"], "unit": "GB",
                                    "reference": f"peak RSS of the process ({measured['added_gb']:.2f} GB added by the statistics)"}


def bench_startup(results: dict[str, Any], repeats: int) -> None:
    entry = shutil.which("edgeface") or str(Path(sys.executable).parent / "edgeface")
    for name, args in (("help_seconds", ["--help"]), ("config_show_seconds", ["config", "show"])):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([entry, *args], capture_output=True, check=True, cwd=tempfile.gettempdir())
            times.append(time.perf_counter() - started)
        results[name] = {"ours": median(times), "unit": "s", "reference": f"edgeface {' '.join(args)}"}


# ------------------------------------------------------------------ report


def verdicts(results: dict[str, Any]) -> None:
    for name, (kind, target, unit) in TARGETS.items():
        if name not in results:
            continue
        entry = results[name]
        value = entry.get("ratio", entry["ours"])
        met = value >= target if kind == "min" else value <= target
        entry["target"] = f"{'>=' if kind == 'min' else '<='} {target:g} {unit}"
        entry["met"] = met
        if not met:
            entry["missed_by"] = f"{value / target:.2f}x of the target" if kind == "min" else f"{value - target:.2f} {unit} over"


def print_table(results: dict[str, Any], context: dict[str, Any]) -> None:
    print(f"edgeface bench on {context['device']} ({context['precision']}), {context['threads']} threads, "
          f"batch {context['batch_size']}, workers {context['workers']}, torch {context['torch']}")
    print(f"{'measure':28} {'ours':>12} {'naive':>12} {'ratio':>8}  target")
    for name, entry in results.items():
        ours = f"{entry['ours']:.3f}" if entry["unit"] in ("s", "GB", "fraction") else f"{entry['ours']:.0f}"
        naive = f"{entry['naive']:.0f}" if "naive" in entry else "-"
        ratio = f"{entry['ratio']:.2f}x" if "ratio" in entry else "-"
        target = entry.get("target", "")
        if target:
            target += "  ok" if entry["met"] else f"  MISSED ({entry['missed_by']})"
        print(f"{name:28} {ours:>12} {naive:>12} {ratio:>8}  {entry['unit']}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small data, one repeat: a smoke run")
    parser.add_argument("--compile", action="store_true", help="runtime.compile=true for our training runs")
    parser.add_argument("--images", type=int, default=1024, help="112 px training JPEGs (32 per identity)")
    parser.add_argument("--large-images", type=int, default=192, help="1024 px JPEGs for the large-photo data path")
    parser.add_argument("--out", type=Path, default=ROOT / "bench.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.amp, device)
    repeats = 1 if args.quick else args.repeats
    small_ids, small_per_id, large_count = (8, 8, 16) if args.quick else (max(2, args.images // 32), 32, args.large_images)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="edgeface-bench-") as folder:
        work = Path(folder)
        started = time.perf_counter()
        small = make_jpeg_dataset(work / "small", small_ids, small_per_id, 112, seed=0)
        large = make_jpeg_dataset(work / "large", large_count // 8, 8, 1024, seed=1)
        print(f"generated {small_ids * small_per_id} 112 px and {large_count} 1024 px JPEGs in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        bench_data("112", small, 112, args.batch_size, args.workers, device, repeats, results)
        bench_data("large", large, 112, args.batch_size, args.workers, device, repeats, results)
        print("data path measured", flush=True)
        bench_training(small, 112, args.batch_size, args.workers, device, args.amp, repeats, small_ids, args.compile, results)
        print("training measured", flush=True)
        bench_embedding(small, 112, args.batch_size, args.workers, device, args.amp, repeats, results)
    bench_all_pairs(results)
    bench_startup(results, repeats=3)
    verdicts(results)
    context = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "precision": precision.label, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "batch_size": args.batch_size, "workers": args.workers, "repeats": repeats, "quick": args.quick,
        "torch": torch.__version__, "python": platform.python_version(),
        "data": {"small": f"{small_ids * small_per_id} JPEGs of 112 px, {small_ids} identities",
                 "large": f"{large_count} JPEGs of 1024 px"},
    }
    print_table(results, context)
    args.out.write_text(json.dumps({"context": context, "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
