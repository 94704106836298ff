"""What a checkpoint carries besides weights: random-number states, the loss scaler, CPU placement.

Checkpoints hold CPU tensors only, so ``torch.load`` without ``map_location`` works on a machine
without the GPU that wrote them; and only the CUDA generator of the device in use is saved, so a
resume on a machine with fewer GPUs never names a device that is not there.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "python": random.getstate(),
        # Stored as plain values so the checkpoint loads with weights_only=True.
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }


def restore_rng_state(state: dict[str, Any], device: torch.device) -> None:
    # RNG states must be CPU byte tensors, whatever map_location the checkpoint was loaded with.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by 0.1 (every GPU's state): take the one of the device in use, if any
        index = device.index or 0
        cuda = cuda[index] if device.type == "cuda" and index < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda.cpu(), device)
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))


def to_cpu(tree: Any) -> Any:
    """Every tensor in a nested dict/list/tuple moved to the CPU (detached); other values kept."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {key: to_cpu(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(value) for value in tree)
    return tree


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict[str, Any] | None, saved_precision: str | None,
                      precision: str) -> str | None:
    """Restore the loss scale when both runs used one; a note when the precision changed, else None.

    A CPU, bf16 or fp32 run saves an empty scaler state, which an enabled scaler cannot load.
    """
    note = None
    if saved_precision is not None and saved_precision != precision:
        note = f"precision changed from {saved_precision} to {precision} on resume"
        if scaler.is_enabled():
            note += ": the fp16 loss scale starts fresh"
    if scaler.is_enabled() and saved and saved_precision in (None, precision):
        scaler.load_state_dict(saved)
    return note
