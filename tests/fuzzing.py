"""Hostile and broken input, generated: `python -m tests.fuzzing KIND[,KIND...] FOLDER PER_SEED` prints one
JSON summary per kind.

Run in a subprocess by tests/test_reliability.py, so that a crash inside a native reader (zip, pickle,
image codecs) fails the test instead of killing the test run. Every case must end in a typed edgeface
error (what the CLI turns into one line and exit 2), a reported skip, or success: never another exception.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

SEED = int(os.environ.get("EDGEFACE_FUZZ_SEED", "20261125"))  # other seeds explore other mutations


def mutations(data: bytes, rng: random.Random, count: int) -> Iterator[bytes]:
    """Bit flips, overwritten runs, truncations, duplications, insertions and pure noise."""
    for index in range(count):
        kind = index % 6
        mutable = bytearray(data)
        if kind == 0:
            for _ in range(rng.randint(1, 16)):
                position = rng.randrange(len(mutable))
                mutable[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            start = rng.randrange(len(mutable))
            length = rng.randint(1, 256)
            mutable[start:start + length] = bytes(rng.randrange(256) for _ in range(min(length, len(mutable) - start)))
        elif kind == 2:
            mutable = mutable[: rng.randrange(1, len(mutable))]
        elif kind == 3:
            start = rng.randrange(len(mutable))
            mutable = mutable[:start] + mutable[start:start + rng.randint(1, 512)] + mutable[start:]
        elif kind == 4:
            start = rng.randrange(len(mutable))
            mutable[start:start] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:
            mutable = bytearray(rng.randbytes(rng.randint(1, 4096)))
        yield bytes(mutable)


def checkpoint_seeds(folder: Path) -> dict[str, bytes]:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.LayerNorm(4))
    state = {f"model.{key}": value for key, value in module.state_dict().items()}
    seeds: dict[str, bytes] = {}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    seeds["pt"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "epoch": 3}, buffer, _use_new_zipfile_serialization=False)
    seeds["legacy"] = buffer.getvalue()
    save_file(state, str(folder / "seed.safetensors"))
    seeds["safetensors"] = (folder / "seed.safetensors").read_bytes()
    scripted = torch.jit.script(module)
    scripted.save(str(folder / "seed.ts"))
    seeds["torchscript"] = (folder / "seed.ts").read_bytes()
    return seeds


def run_checkpoints(folder: Path, per_seed: int) -> Iterator[tuple[str, Callable[[], object]]]:
    from edgeface_cli.model.checkpoint_io import read_checkpoint

    rng = random.Random(SEED)
    for name, data in checkpoint_seeds(folder).items():
        for number, mutated in enumerate(mutations(data, rng, per_seed)):
            path = folder / f"{name}-{number}.bin"
            path.write_bytes(mutated)
            yield f"{name}-{number}", lambda path=path: read_checkpoint(path)


YAML_SEEDS = [
    "optim:\n  head_lr: 1.0e-4\n  epochs: 30\ndata:\n  image_size: 112\n  cache: auto\n",
    "model:\n  arch: edgeface_xxs\n  use_pos_emb: [false, true, false, false]\nguard:\n  max_grad_norm: 1.0\n",
    "a: &a [1, 1]\nb: &b [*a, *a]\nc: &c [*b, *b]\nd: [*c, *c]\noptim: {epochs: *a}\n",
]


def run_configs(folder: Path, per_seed: int) -> Iterator[tuple[str, Callable[[], object]]]:
    from edgeface_cli.config import build_config

    rng = random.Random(SEED + 1)
    for seed_number, text in enumerate(YAML_SEEDS):
        for number, mutated in enumerate(mutations(text.encode(), rng, per_seed)):
            path = folder / f"config-{seed_number}-{number}.yaml"
            path.write_bytes(mutated)
            yield f"config-{seed_number}-{number}", lambda path=path: build_config(path, search_default_file=False)


def run_images(folder: Path, per_seed: int) -> Iterator[tuple[str, Callable[[], object]]]:
    """Mutated JPEG/PNG/WebP/BMP files in an identity folder: each is decoded or reported unreadable."""
    from PIL import Image

    from edgeface_cli.data.folder import ImageSettings, scan_image_folder

    rng = random.Random(SEED + 2)
    image = Image.new("RGB", (40, 48), (120, 60, 30))
    for x in range(40):
        image.putpixel((x, x % 48), (x * 6, 255 - x * 6, 90))
    for suffix, format_name in ((".jpg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP")):
        buffer = io.BytesIO()
        image.save(buffer, format=format_name)
        root = folder / f"images{suffix.strip('.')}"
        for number, mutated in enumerate(mutations(buffer.getvalue(), rng, per_seed)):
            identity = root / "someone"
            identity.mkdir(parents=True, exist_ok=True)
            (identity / f"{number}{suffix}").write_bytes(mutated)
        (root / "other").mkdir(parents=True, exist_ok=True)
        image.save(root / "other" / f"good{suffix}", format=format_name)

        def scan(root: Path = root, per_seed: int = per_seed) -> object:
            result = scan_image_folder(root, settings=ImageSettings(image_size=32, cache="off"))
            assert len(result.samples) + len(result.unreadable) == per_seed + 1
            return result

        yield f"images{suffix}", scan


def run_pairs(folder: Path, per_seed: int) -> Iterator[tuple[str, Callable[[], object]]]:
    from edgeface_cli.evaluation.evaluator import read_pairs

    root = folder / "pairs-root"
    (root / "alice").mkdir(parents=True, exist_ok=True)
    (root / "alice" / "alice_0001.jpg").write_bytes(b"x")
    (root / "alice" / "alice_0002.jpg").write_bytes(b"x")
    (folder / "outside.jpg").write_bytes(b"x")
    seeds = {
        ".txt": "10 300\nalice 1 2\nalice 1 bob 2\n",
        ".csv": "path1,path2,same\nalice/alice_0001.jpg,alice/alice_0002.jpg,1\n../outside.jpg,alice/alice_0001.jpg,0\n",
    }
    rng = random.Random(SEED + 3)
    for suffix, text in seeds.items():
        for number, mutated in enumerate(mutations(text.encode(), rng, per_seed)):
            path = folder / f"pairs-{number}{suffix}"
            path.write_bytes(mutated)
            yield f"pairs{suffix}-{number}", lambda path=path: read_pairs(path, root)


def deploy_seeds(folder: Path) -> dict[str, bytes]:
    """A gallery, an export sidecar and a small ONNX model (built directly: exporting one takes seconds)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from edgeface_cli.deploy.gallery import Gallery, save_gallery

    vectors = np.eye(4, 8, dtype=np.float32)
    save_gallery(Gallery(["a", "b", "c", "d"], vectors, vectors, np.arange(4), ["1", "2", "3", "4"], "model.pt", 32, False,
                         (0.5, "eval")), folder / "seed.npz")
    weight = helper.make_tensor("weight", TensorProto.FLOAT, [3, 8], np.ones(24, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("MatMul", ["pooled", "weight"], ["embeddings"])],
        "fuzz", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [1, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sidecar = {"format": "onnx", "arch": "edgeface_xxs", "image_size": 32, "non_square": "center_crop",
               "source_checkpoint": str(folder / "run" / "best.pt"), "threshold": {"value": 0.4, "source": "eval"}}
    return {"gallery": (folder / "seed.npz").read_bytes(), "onnx": model.SerializeToString(),
            "sidecar": json.dumps(sidecar).encode()}


def run_deploy(folder: Path, per_seed: int) -> Iterator[tuple[str, Callable[[], object]]]:
    """Mutated galleries (identify), export sidecars and ONNX models (embed): refused or read, never a crash."""
    import torch

    from edgeface_cli.config import EdgeFaceConfig
    from edgeface_cli.deploy.embedder import load_embedder
    from edgeface_cli.deploy.gallery import load_gallery
    from edgeface_cli.model.programs import OnnxBackbone, read_sidecar

    rng = random.Random(SEED + 4)
    seeds = deploy_seeds(folder)
    for number, mutated in enumerate(mutations(seeds["gallery"], rng, per_seed)):
        path = folder / f"gallery-{number}.npz"
        path.write_bytes(mutated)
        yield f"gallery-{number}", lambda path=path: load_gallery(path)
    for number, mutated in enumerate(mutations(seeds["sidecar"], rng, per_seed)):
        model = folder / f"sidecar-{number}.onnx"
        model.write_bytes(seeds["onnx"])
        (folder / f"sidecar-{number}.onnx.json").write_bytes(mutated)
        yield f"sidecar-{number}", lambda model=model: (read_sidecar(model), load_embedder(model, EdgeFaceConfig()))
    for number, mutated in enumerate(mutations(seeds["onnx"], rng, per_seed)):
        path = folder / f"model-{number}.onnx"
        path.write_bytes(mutated)
        yield f"onnx-{number}", lambda path=path: OnnxBackbone(path)(torch.zeros(2, 3, 32, 32))


RUNNERS = {"checkpoints": run_checkpoints, "configs": run_configs, "images": run_images, "pairs": run_pairs,
           "deploy": run_deploy}


def fuzz(kind: str, folder: Path, per_seed: int) -> dict:
    """Every case of ``kind``: how many were read, how many refused, which failed otherwise, the slowest."""
    from edgeface_cli.errors import EdgeFaceError

    folder.mkdir(parents=True, exist_ok=True)
    outcomes = {"ok": 0, "refused": 0}
    failures: list[str] = []
    slowest = 0.0
    for name, case in RUNNERS[kind](folder, per_seed):
        started = time.perf_counter()
        try:
            case()
            outcomes["ok"] += 1
        except EdgeFaceError:
            outcomes["refused"] += 1
        except Exception:  # noqa: BLE001 - exactly what the fuzz test looks for
            failures.append(f"{name}: {traceback.format_exc(limit=3).strip().splitlines()[-1]}")
        slowest = max(slowest, time.perf_counter() - started)
    return {"kind": kind, **outcomes, "failures": failures, "slowest_case_s": slowest}


def main() -> None:
    """``KIND[,KIND...] FOLDER PER_SEED``: one JSON line per kind, each kind's files in a folder of its own
    (several kinds in one process spare a Python and torch start-up each)."""
    kinds, folder, per_seed = sys.argv[1].split(","), Path(sys.argv[2]), int(sys.argv[3])
    for kind in kinds:
        print(json.dumps(fuzz(kind, folder / kind, per_seed), allow_nan=False), flush=True)


if __name__ == "__main__":
    main()
