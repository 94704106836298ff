"""Reading checkpoints of any common format safely, and writing them atomically.

Pickles are only ever read with ``torch.load(weights_only=True)``: a file that needs arbitrary Python
globals is refused, never executed. safetensors files are data. A TorchScript archive is a program (loading
it compiles and can run the code it carries): it is read only when the caller trusts its code
(``--trust-code``), and refused otherwise with one line naming the safe formats.

The file is read once into memory and the SHA-256 of exactly those bytes is kept with the weights: what a
threshold, gallery or eval record is bound to is what was loaded, not what is on disk later.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_stream
from ..errors import CheckpointError
from ..preflight import CHECKPOINT_FIX_HINT as FIX_HINT
from ..preflight import check_checkpoint_file
from ..zoo import KEY_PREFIX

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "backbone")
DATA_PARALLEL_PREFIXES = ("module.", "_orig_mod.")
TIMM_TOP_LEVEL = ("stem.", "stages.", "head.", "norm_pre.")


@dataclass
class LoadedCheckpoint:
    path: Path
    format: str  # e.g. "torch (wrapped under 'state_dict', 'module.' prefix stripped)"
    state_dict: dict[str, torch.Tensor]
    extras: dict[str, Any] = field(default_factory=dict)  # non-tensor entries of a training checkpoint
    sha256: str = ""  # of the bytes that were loaded


def read_bytes_hashed(path: Path) -> tuple[bytes, str]:
    """The file's bytes and their SHA-256: a later change of the file cannot be attributed to this load."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ reading


def _refusal_detail(message: str) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if match:
        return f"it needs the Python global {match.group(1)}"
    return "it needs Python objects beyond tensors"


def _load_pickle(path: Path, data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: {_refusal_detail(str(exc))}, so unpickling it could run code "
            "(nothing was executed). If you trust its source, load it yourself and re-save "
            "torch.save(obj.state_dict(), 'clean.pt')"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle fails in many ways (IndexError, KeyError, ...)
        raise CheckpointError(
            f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {_first_line(exc)}); "
            f"{FIX_HINT}"
        ) from None


def _load_torchscript(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            # torch>=2.9 flags TorchScript as deprecated; reading published .pt archives must stay quiet.
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways; all mean "unreadable"
        raise CheckpointError(f"cannot read TorchScript archive {path}: {_first_line(exc)}") from None
    return {key: value for key, value in scripted.state_dict().items()}


def _load_safetensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as exc:  # noqa: BLE001 - SafetensorError or any other parse failure: "not valid"
        raise CheckpointError(f"cannot read {path}: not a valid .safetensors file ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message: enough to name the problem, short enough for one line."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].split(". ")[0]
    return first[:160]


def _tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(value, torch.Tensor) for value in obj.values())


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], list[str], dict[str, Any]]:
    notes: list[str] = []
    extras: dict[str, Any] = {}
    depth = 0
    while isinstance(obj, Mapping) and depth < 4:
        wrapper = next((key for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
        if wrapper is None:
            break
        if depth == 0:
            extras = {key: value for key, value in obj.items() if key != wrapper}
        notes.append(f"wrapped under '{wrapper}'")
        obj = obj[wrapper]
        depth += 1
    if not _tensor_mapping(obj):
        kind = type(obj).__name__
        keys = ", ".join(list(map(str, obj))[:8]) if isinstance(obj, Mapping) else ""
        detail = f" (top-level keys: {keys})" if keys else ""
        raise CheckpointError(f"{path} holds no state_dict: found a {kind} without tensors{detail}; {FIX_HINT}")
    state = {str(key): value for key, value in obj.items() if isinstance(value, torch.Tensor)}
    return state, notes, extras


def normalize_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Strip DataParallel/compile prefixes and add the published ``model.`` prefix to bare timm keys."""
    notes: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for prefix in DATA_PARALLEL_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                notes.append(f"'{prefix}' prefix stripped")
                changed = True
    if state and not any(key.startswith(KEY_PREFIX) for key in state):
        if any(key.startswith(TIMM_TOP_LEVEL) for key in state):
            state = {KEY_PREFIX + key: value for key, value in state.items()}
            notes.append(f"bare timm keys, '{KEY_PREFIX}' prefix added")
    return state, notes


def read_checkpoint(path: Path | str, trust_code: bool = False) -> LoadedCheckpoint:
    """Read a backbone state_dict from any supported format. Raises CheckpointError with one clear line.

    ``trust_code``: a TorchScript archive (a program) is loaded too; without it, it is refused unread."""
    path = Path(path)
    kind = check_checkpoint_file(path, trust_code)  # every refusal before a byte is unpickled (torch-free)
    data, sha256 = read_bytes_hashed(path)
    if kind == "safetensors":
        raw: Any = _load_safetensors(path, data)
        label = "safetensors"
    elif kind == "torchscript":
        raw = _load_torchscript(path, data)
        label = "torchscript"
    else:
        raw = _load_pickle(path, data)
        label = "torch"
    state, notes, extras = _unwrap(raw, path)
    state, prefix_notes = normalize_keys(state)
    notes += prefix_notes
    fmt = label + (f" ({', '.join(notes)})" if notes else "")
    return LoadedCheckpoint(path=path, format=fmt, state_dict=state, extras=extras, sha256=sha256)


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of floating-point tensors holding NaN or infinity."""
    return [key for key, value in state.items() if value.is_floating_point() and not bool(torch.isfinite(value).all())]


# ------------------------------------------------------------------ writing


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_stream(path, lambda stream: torch.save(obj, stream))
