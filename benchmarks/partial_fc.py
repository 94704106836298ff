"""`make bench`, Partial FC: peak memory and step time of the classifier alone (synthetic unit features, AdamW),
the full FC beside Partial FC at sample rates 0.3 and 0.1, for 100,000 and 1,000,000 identities.

Each configuration runs in a child process of its own, so its peak resident memory (``ru_maxrss``) is its own.
A step is forward, backward and the optimizer step; "as trained" adds the exact training accuracy Partial FC
reports (each image's nearest centre among all of them, a no-gradient pass over every centre), "loss only" is
the sampled loss alone, as arcface_torch computes it (no accuracy).

    python benchmarks/partial_fc.py [--classes 100000 1000000] [--batch 128] [--out bench-partial-fc.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from edgeface_cli.model.heads import MarginHead
from edgeface_cli.model.losses import build_loss
from edgeface_cli.model.partial_fc import PartialFCHead
from edgeface_cli.platform_info import cpu_features


def one(classes: int, dim: int, batch: int, steps: int, rate: float, mode: str) -> dict[str, float]:
    """Time ``steps`` steps of one head (after one warm-up step that allocates the optimizer's state)."""
    torch.manual_seed(0)
    loss = build_loss("cosface", 64.0, 0.4)
    head = MarginHead(classes, dim, loss=loss) if rate >= 1.0 else PartialFCHead(classes, dim, loss, rate, batch)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.05)
    if isinstance(head, PartialFCHead):
        head.bind_optimizer(optimizer)
    generator = torch.Generator().manual_seed(1)
    times, cpu_times = [], []
    for index in range(steps + 1):
        embeddings = torch.randn(batch, dim, generator=generator)
        labels = torch.randint(classes, (batch,), generator=generator)
        started, cpu_started = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        if mode == "loss only":
            value = head.sampled_loss(embeddings, labels)
        else:
            value, _ = head.loss_and_correct(embeddings, labels)
        value.backward()
        optimizer.step()
        if index:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
    # CPU time (all threads) beside wall time: on a shared machine the wall clock also counts others' work.
    return {"step_ms": 1000 * statistics.median(times), "step_cpu_ms": 1000 * statistics.median(cpu_times),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-partial-fc.json"))
    parser.add_argument("--child", nargs=2, metavar=("RATE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(args.classes[0], args.dim, args.batch, args.steps, float(args.child[0]), args.child[1])))
        return
    baseline = json.loads(subprocess.run([sys.executable, "-c", "import json, resource, torch; "
                                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"],
                                         capture_output=True, text=True, check=True).stdout)
    rows = []
    for classes in args.classes:
        for rate in args.rates:
            for mode in (["as trained"] if rate >= 1.0 else ["as trained", "loss only"]):
                done = subprocess.run([sys.executable, __file__, "--classes", str(classes), "--dim", str(args.dim),
                                       "--batch", str(args.batch), "--steps", str(args.steps),
                                       "--child", str(rate), mode], capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{classes} ids, rate {rate}, {mode}: {done.stderr.strip()[-800:]}")
                row = {"classes": classes, "sample_rate": rate, "mode": mode, **json.loads(done.stdout)}
                row["head_rss_mib"] = row["peak_rss_mib"] - baseline
                rows.append(row)
                print(f"{classes:>9,} ids  rate {rate:<4g} {mode:<11} {row['step_ms']:>9.1f} ms/step "
                      f"({row['step_cpu_ms']:>9.1f} CPU ms) "
                      f"{row['head_rss_mib']:>8.0f} MiB above torch's own", flush=True)
    report = {"dim": args.dim, "batch": args.batch, "optimizer": "AdamW", "loss": "cosface s=64 m=0.4",
              "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_features": cpu_features(), "torch_import_rss_mib": baseline, "rows": rows}
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
