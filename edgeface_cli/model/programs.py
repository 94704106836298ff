"""Exported model files run as they were exported: ONNX on onnxruntime, pt2 as the ``torch.export`` program
(TorchScript too), each callable like the PyTorch backbone; and the sidecar JSON ``edgeface export`` writes
beside them, read strictly. Here, with the other model readers, so that every command loads a model through
one ``loading.load_model`` and ``eval`` measures an exported file as it measures a checkpoint.

ONNX is data: onnxruntime runs its graph of standard operators. A pt2 or TorchScript archive is a program:
``torch.export.load`` unpickles and TorchScript compiles the code it carries, so loading one can run
arbitrary code. Those load only with ``trust_code`` (``--trust-code``); otherwise they are refused unread.
"""

from __future__ import annotations

import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import read_json_object
from ..errors import CheckpointError, import_extra
from ..zoo import ARCFACE_TEMPLATE_POINTS, ZOO
from ..preflight import refuse_program
from .checkpoint_io import read_bytes_hashed

NORMALIZATION = "pixel / 127.5 - 1 (range [-1, 1]; mean 0.5, std 0.5 on [0, 1])"  # what to_model_input computes
TEMPLATE = [list(point) for point in ARCFACE_TEMPLATE_POINTS]  # the crops this version makes (export records it)
PROGRAM_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
SAME_EMBEDDINGS_MIN_COSINE = 0.9999  # an fp32 export's parity bar: below it the file is broken, not rounded  # run as exported; other files load into the PyTorch model


def is_exported(path: Path) -> bool:
    """An exported program (run as exported, on the CPU), not weights to load into the PyTorch model."""
    return path.is_file() and path.suffix.lower() in PROGRAM_SUFFIXES


def sidecar_path(model_file: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: what a deployment needs to feed the model."""
    return model_file.with_name(model_file.name + ".json")


def read_sidecar(model_file: Path) -> dict[str, Any] | None:
    path = sidecar_path(model_file)
    if not path.is_file():
        return None
    sidecar = read_json_object(path, "an export description", "re-export the model to rewrite it", CheckpointError)
    threshold = sidecar.get("threshold")
    checks = {
        "image_size": isinstance(sidecar.get("image_size"), int) and 16 <= sidecar["image_size"] <= 4096,
        "arch": sidecar.get("arch") is None or sidecar.get("arch") in ZOO,
        "use_pos_emb": sidecar.get("use_pos_emb") is None or (isinstance(sidecar["use_pos_emb"], list) and len(
            sidecar["use_pos_emb"]) == 4 and all(isinstance(flag, bool) for flag in sidecar["use_pos_emb"])),
        "non_square": sidecar.get("non_square") in (None, "center_crop", "stretch"),
        "source_checkpoint": sidecar.get("source_checkpoint") is None
                             or (isinstance(sidecar["source_checkpoint"], str) and "\x00" not in sidecar["source_checkpoint"]),
        "threshold": threshold is None or (isinstance(threshold, dict) and isinstance(threshold.get("value"), (int, float))
                                           and isinstance(threshold.get("source", ""), str)),
        "threshold_note": isinstance(sidecar.get("threshold_note", ""), str),
        "source_sha256": sidecar.get("source_sha256") is None or (isinstance(sidecar["source_sha256"], str) and len(
            sidecar["source_sha256"]) == 64 and all(char in "0123456789abcdef" for char in sidecar["source_sha256"])),
    }
    model_input = sidecar.get("input")
    if isinstance(model_input, dict) and (model_input.get("channels", "RGB") != "RGB"
                                          or model_input.get("normalization", NORMALIZATION) != NORMALIZATION):
        raise CheckpointError(f"{path} asks for {model_input.get('channels')} input normalised as "
                              f"{model_input.get('normalization')!r}; edgeface feeds RGB, {NORMALIZATION}")
    alignment = sidecar.get("alignment")
    checks["alignment"] = alignment is None or (isinstance(alignment, dict) and alignment.get("template") == TEMPLATE)
    damaged = [name for name, valid in checks.items() if not valid]
    if damaged:
        raise CheckpointError(f"{path} is damaged ({', '.join(damaged)}); re-export the model to rewrite it")
    return sidecar


def same_weights_as(sidecar: dict[str, Any] | None) -> str | None:
    """The SHA-256 of the checkpoint whose embeddings an export computes: an fp32 export whose parity export
    checked (not an int8 one, whose similarities move); None otherwise."""
    if not sidecar or sidecar.get("int8") or not sidecar.get("source_sha256"):
        return None
    parity = sidecar.get("parity")
    minimum = parity.get("min_cosine") if isinstance(parity, dict) else None
    return sidecar["source_sha256"] if isinstance(minimum, (int, float)) and minimum >= SAME_EMBEDDINGS_MIN_COSINE else None


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _shared_pool(threads: int) -> ThreadPoolExecutor:
    """One pool of ``threads`` workers per process, shared by every ONNX model it loads."""
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="onnx")
        return _pools[threads]


IMAGES_PER_RUN = 4  # measured best for XXS, S and Base at 112 px (2 to 8 within 3 %)
# Dynamic int8 quantises each layer's input with one scale over the whole run: an image's embedding would
# depend on the images run with it. Such files run one image per run. The operator names
# (DynamicQuantizeLinear, DynamicQuantizeMatMul) are stored verbatim in the file.
DYNAMIC_QUANTIZATION = b"DynamicQuantize"


class OnnxBackbone(nn.Module):
    """An ONNX file on onnxruntime (CPU), callable like the PyTorch backbone.

    A batch is cut into runs of ``IMAGES_PER_RUN`` images, spread over ``threads`` concurrent one-thread runs
    (onnxruntime releases the GIL). EdgeNeXt's many small operators parallelise poorly inside a run, and a few
    images' activations stay in the CPU's caches: at batch 128, runs of 4 images measured 1.14x (XXS), 1.25x
    (S) and 1.11x (Base) the throughput of one run of 64 per thread, which itself beat intra-op threads. A
    single image runs on a session with ``threads`` intra-op threads, which halves its latency on the larger
    variants. A dynamic int8 file runs one image per run (``DYNAMIC_QUANTIZATION``).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = path
        # Every session is made from these bytes, read once: the model hashed is the model run.
        self.model_bytes, self.sha256 = read_bytes_hashed(path)
        self.threads = max(1, threads or torch.get_num_threads())
        self.sessions: dict[int, Any] = {}
        model_input = self._session(1).get_inputs()[0]
        self.input_name = model_input.name
        batch = model_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None  # exported with --static-batch
        side = model_input.shape[-1]
        self.image_size = side if isinstance(side, int) else None
        self.pool = _shared_pool(self.threads) if self.threads > 1 else None
        self.one_image_per_run = DYNAMIC_QUANTIZATION in self.model_bytes

    def _session(self, intra_op_threads: int) -> Any:
        if intra_op_threads not in self.sessions:
            onnxruntime = import_extra("onnxruntime", "running an ONNX model", "export")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = intra_op_threads, 1
            # The file is standard ONNX; onnxruntime's own fusions (GELU, the NCHWc convolutions) are made here.
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            try:
                self.sessions[intra_op_threads] = onnxruntime.InferenceSession(
                    self.model_bytes, options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad file
                raise CheckpointError(f"{self.path} is not a loadable ONNX model: "
                                      f"{str(exc).splitlines()[0][:200]}") from None
        return self.sessions[intra_op_threads]

    def chunks(self, count: int) -> list[tuple[int, int]]:
        """(start, stop) of the runs a batch of ``count`` images is split into."""
        if self.one_image_per_run:
            return [(start, start + 1) for start in range(count)]
        step = self.fixed_batch or min(IMAGES_PER_RUN, -(-count // min(self.threads, count)))
        return [(start, min(start + step, count)) for start in range(0, count, step)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().float().cpu().contiguous().numpy()
        spans = self.chunks(len(array))
        parallel = self.pool is not None and len(spans) > 1
        session = self._session(1 if parallel else self.threads)

        def run(span: tuple[int, int]) -> np.ndarray:
            batch = array[span[0]:span[1]]
            if self.fixed_batch and len(batch) < self.fixed_batch:  # a static file's last run: padded, then dropped
                batch = np.concatenate([batch, np.repeat(batch[:1], self.fixed_batch - len(batch), axis=0)])
            return session.run(None, {self.input_name: batch})[0][:span[1] - span[0]]

        try:
            outputs = list(self.pool.map(run, spans)) if parallel else [run(span) for span in spans]  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types: the model does not fit the input
            raise CheckpointError(f"the ONNX model cannot embed {tuple(array.shape)} images: "
                                  f"{str(exc).splitlines()[0][:200]}; was it exported by edgeface export?") from None
        return torch.from_numpy(np.concatenate(outputs))


class ExportedProgram(nn.Module):
    """A ``torch.export`` archive (pt2), callable like the backbone; a batch-1 export runs image by image."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        data, self.sha256 = read_bytes_hashed(path)
        program = torch.export.load(io.BytesIO(data))  # unpickles: the caller trusts its code (load_program)
        inputs = [node for node in program.graph.nodes
                  if node.op == "placeholder" and node.name in program.graph_signature.user_inputs]
        shape = inputs[0].meta["val"].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None  # a SymInt when exported with any batch
        self.image_size = shape[-1] if isinstance(shape[-1], int) else None
        # Not registered as a child module: an exported module refuses train()/eval(), which would reach it.
        self.__dict__["program"] = program.module()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        step = self.fixed_batch or len(images)
        return torch.cat([self.program(images[start:start + step]) for start in range(0, len(images), step)])


def load_program(path: Path, kind: str, trust_code: bool = False) -> nn.Module:
    """An exported program, runnable: ``onnx`` (onnxruntime), ``pt2`` (torch.export), ``torchscript``; its
    ``sha256`` attribute is that of the bytes loaded. A pt2 or TorchScript archive runs code when loaded:
    without ``trust_code`` it is refused, unread."""
    if kind == "onnx":
        return OnnxBackbone(path)
    if not trust_code:
        raise refuse_program(path, "torch.export (.pt2)" if kind == "pt2" else "TorchScript")
    try:
        if kind == "pt2":
            return ExportedProgram(path)
        data, sha256 = read_bytes_hashed(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: export says it once
            scripted = torch.jit.load(io.BytesIO(data), map_location="cpu")
        scripted.sha256 = sha256
        return scripted
    except Exception as exc:  # noqa: BLE001 - a damaged archive fails in many ways: all mean "cannot load"
        raise CheckpointError(f"{path} is not a loadable {kind} model: {str(exc).splitlines()[0][:200]}") from None
