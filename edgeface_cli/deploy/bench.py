"""`edgeface bench`: every exported file in every installed runtime that can run it, measured the same way
beside warm PyTorch eager with the same threads, each checked against the source model it was exported from.

Every runtime is one ``model.runtimes.Runtime``; a row per (file, runtime, precision) says what was measured
or why nothing was (not installed, cannot run this file, failed to load or run: the reason, never a crash).
All runners are loaded first, warmed up (``WARMUP_CALLS`` untimed calls at batch 1 and at the batch), then
timed in interleaved rounds, so that a shared machine's drift hits every runtime alike: batch-1 latency is
the median of ``LATENCY_CALLS`` calls per round, throughput the median of one batch call per round.

Parity needs the source model, passed explicitly (``source``): a sidecar's ``source_checkpoint`` is a path
written by whoever made the file, never followed. Without it parity is "not checked" and nothing is
recommended: a fast runtime computing other embeddings is no answer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.augment import normalize
from ..data.alignment.photos import NoFaceError
from ..data.folder import ImageSettings, decode_with
from ..errors import CheckpointError, DataError
from ..model.loading import LoadedModel
from ..model.programs import SAME_EMBEDDINGS_MIN_COSINE, read_sidecar
from ..model.runtimes import RUNTIMES, Runner, Runtime, RuntimeUnavailable, TorchCompile, TorchEager, first_line
from ..platform_info import cpu_features, cpu_flags, vector_features
from .embedder import list_images
from .export import MIN_COSINE_INT8

WARMUP_CALLS = 2
LATENCY_CALLS = 5  # batch-1 calls timed per round
REDUCED_PRECISIONS = ("int8", "bf16")  # their embeddings move by design: judged by the int8 bar, not fp32's
INPUT_SEED = 0

MEASURED, NOT_INSTALLED, CANNOT_RUN, FAILED, SKIPPED = "measured", "not installed", "cannot run", "failed", "skipped"
NOT_CHECKED = "not checked (pass --checkpoint: the source model)"


@dataclass
class BenchRow:
    runtime: str
    file: str
    status: str  # measured | not installed | cannot run | failed | skipped
    image_size: int
    source: bool = False  # the source model itself (PyTorch eager: the baseline; torch.compile)
    precision: str | None = None
    threads: int | None = None
    latency_ms: float | None = None  # batch 1, median after warm-up
    images_per_s: float | None = None  # at the report's batch
    vs_eager: float | None = None  # images_per_s over warm eager's, same threads, same size
    parity: str = NOT_CHECKED
    parity_min_cosine: float | None = None
    parity_mean_cosine: float | None = None
    reason: str = ""

    @property
    def parity_passed(self) -> bool:
        return self.parity in ("reference", "same embeddings", "close (reduced precision)")


@dataclass
class BenchReport:
    rows: list[BenchRow]
    threads: int
    batch: int
    rounds: int
    images: str  # what the runtimes were fed
    cpu_features: list[str]  # the flags speed depends on, as the OS spells them
    vector_features: dict[str, bool]  # VNNI, AVX512-BF16, AMX, NEON-dot (int8/bf16 speed), AVX2: present or not
    baseline: str  # what vs_eager divides by
    recommendation: dict[str, Any] | None = None  # the fastest rows whose parity passed
    no_recommendation: str | None = None  # why there is none
    method: str = (f"{WARMUP_CALLS} warm-up calls at batch 1 and at the batch per runner, then interleaved rounds: "
                   f"median of {LATENCY_CALLS} batch-1 calls per round (latency) and of one batch call per round "
                   "(throughput)")
    notes: list[str] = field(default_factory=list)


def image_size_of(path: Path, sidecar: dict[str, Any] | None, given: int | None, source: LoadedModel | None) -> int:
    """The size the file is fed at: its sidecar's, else ``given`` (--size), else the source model's run."""
    recorded = sidecar.get("image_size") if sidecar else None
    if recorded and given and recorded != given:
        raise DataError(f"--size {given} contradicts {path.name}'s sidecar, which says the file takes {recorded} px")
    trained = ((source.training_config or {}).get("data") or {}).get("image_size") if source else None
    size = recorded or given or trained
    if not size:
        raise DataError(f"cannot tell what size {path} takes: it has no sidecar ({path.name}.json) and no --size or "
                        "--checkpoint of a run says; pass --size S")
    return int(size)


def bench_inputs(batch: int, images_dir: Path | None, settings: ImageSettings) -> tuple[torch.Tensor, str]:
    """``batch`` model inputs (float32, [-1, 1]) at ``settings.image_size``: fixed random pixels, or the images of
    ``images_dir`` (repeated when there are fewer) decoded as the model's recipe says (``settings``: with
    ``align``, each photo's face detected and aligned with its detector settings, as embed does)."""
    size = settings.image_size
    if images_dir is None:
        generator = torch.Generator().manual_seed(INPUT_SEED)
        return torch.rand(batch, 3, size, size, generator=generator) * 2 - 1, f"random pixels (seed {INPUT_SEED})"
    files = list_images([images_dir])
    chosen = [files[index % len(files)] for index in range(batch)]
    try:
        decoded = torch.stack([decode_with(path, settings) for path in dict.fromkeys(chosen)])
    except NoFaceError as exc:
        raise DataError(f"--images {images_dir}: {exc} in one of them; give photos that show a face (or crops "
                        "without data.align)") from None
    pixels = decoded[[index % len(decoded) for index in range(batch)]]
    return normalize(pixels).float().contiguous(), f"{min(len(files), batch)} images from {images_dir} ({settings.recipe})"


def is_reduced(precision: str | None) -> bool:
    """int8 weights or bf16 arithmetic anywhere in the row's precision (``int8+bf16``, say)."""
    return any(part in REDUCED_PRECISIONS for part in (precision or "").split("+"))


def parity_of(row: BenchRow, outputs: np.ndarray, reference: np.ndarray | None, why_not: str | None) -> None:
    """The row's cosine similarity to the source model's embeddings of the same inputs, and its verdict."""
    if why_not is not None or reference is None:
        row.parity = why_not or NOT_CHECKED
        return
    got = torch.nan_to_num(torch.from_numpy(outputs).float(), nan=0.0, posinf=0.0, neginf=0.0)
    cosine = torch.nn.functional.cosine_similarity(got, torch.from_numpy(reference).float(), dim=1)
    row.parity_min_cosine, row.parity_mean_cosine = float(cosine.min()), float(cosine.mean())
    if row.parity_min_cosine >= SAME_EMBEDDINGS_MIN_COSINE:
        row.parity = "same embeddings"
    elif is_reduced(row.precision) and row.parity_min_cosine >= MIN_COSINE_INT8:
        row.parity = "close (reduced precision)"
    else:
        needs = MIN_COSINE_INT8 if is_reduced(row.precision) else SAME_EMBEDDINGS_MIN_COSINE
        row.parity = f"DIFFERS (min cosine below {needs})"


def source_mismatch(path: Path, sidecar: dict[str, Any] | None, source: LoadedModel | None) -> str | None:
    """Why the source model given cannot judge this file: the sidecar names other weights."""
    recorded = sidecar.get("source_sha256") if sidecar else None
    if source is not None and recorded and recorded != source.sha256:
        return (f"not checked: {path.name} was exported from other weights (its sidecar's source_sha256 is not "
                f"that of {source.source.name})")
    return None


def file_rows(path: Path, size: int, threads: int, trust_code: bool, runtimes: Sequence[Runtime],
              compile_files: bool) -> list[tuple[BenchRow, Runner | None]]:
    """One row per runtime (and precision it offers) for ``path``, with the runner it loaded, or why not."""
    rows: list[tuple[BenchRow, Runner | None]] = []
    for runtime in runtimes:
        row = BenchRow(runtime.name, str(path), MEASURED, size, threads=threads)
        if not runtime.available():
            row.status, row.reason = NOT_INSTALLED, runtime.install
        elif not runtime.can_run(path):
            row.status, row.reason = CANNOT_RUN, f"it runs {', '.join(runtime.suffixes)} files"
        elif isinstance(runtime, TorchCompile) and not compile_files:
            row.status, row.reason = SKIPPED, "--no-compile"
        if row.status != MEASURED:
            rows.append((row, None))
            continue
        try:
            precisions = runtime.precisions(path)
        except Exception as exc:  # noqa: BLE001 - a runtime's own query failing is that runtime's row
            precisions, row.reason = [None], first_line(exc)
        for precision in precisions:
            variant = BenchRow(runtime.name, str(path), MEASURED, size, threads=threads, precision=precision)
            try:
                runner = runtime.load(path, threads, precision, trust_code)
            except (RuntimeUnavailable, CheckpointError) as exc:  # e.g. a pt2 without --trust-code
                variant.status, variant.reason = CANNOT_RUN, str(exc)
                rows.append((variant, None))
                continue
            except Exception as exc:  # noqa: BLE001 - every runtime fails in its own types: the reason is the row
                variant.status, variant.reason = FAILED, f"loading failed: {first_line(exc)}"
                rows.append((variant, None))
                continue
            variant.precision, variant.threads = runner.precision, runner.threads
            rows.append((variant, runner))
    return rows


def source_rows(source: LoadedModel, size: int, threads: int, compile_source: bool) -> list[tuple[BenchRow, Runner | None]]:
    """The source model in PyTorch eager (the baseline) and, unless skipped, torch.compile."""
    name = str(source.source)
    eager = TorchEager()
    rows: list[tuple[BenchRow, Runner | None]] = [
        (BenchRow(eager.name, name, MEASURED, size, source=True, precision="fp32", threads=threads),
         eager.wrap(source.backbone, threads))]
    compiled = BenchRow(TorchCompile.name, name, MEASURED, size, source=True, precision="fp32", threads=threads)
    if not compile_source:
        compiled.status, compiled.reason = SKIPPED, "--no-compile"
        rows.append((compiled, None))
        return rows
    try:
        rows.append((compiled, TorchCompile().wrap(source.backbone, threads)))
    except Exception as exc:  # noqa: BLE001 - torch.compile fails in many ways, all mean "not here"
        compiled.status, compiled.reason = FAILED, first_line(exc)
        rows.append((compiled, None))
    return rows


def time_rounds(runners: dict[int, Runner], inputs: torch.Tensor, rounds: int) -> dict[int, tuple[float, float]]:
    """(batch-1 latency in ms, images/s at the batch) of each runner, timed in turn in every round."""
    one = inputs[:1].numpy()
    batch = inputs.numpy()
    latencies: dict[int, list[float]] = {key: [] for key in runners}
    batches: dict[int, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, runner in runners.items():
            for _ in range(LATENCY_CALLS):
                started = time.perf_counter()
                runner(one)
                latencies[key].append(time.perf_counter() - started)
            started = time.perf_counter()
            runner(batch)
            batches[key].append(time.perf_counter() - started)
    return {key: (1000 * statistics.median(latencies[key]), len(batch) / statistics.median(batches[key]))
            for key in runners}


def warm_and_check(row: BenchRow, runner: Runner, inputs: torch.Tensor) -> np.ndarray | None:
    """The runner's embeddings of ``inputs`` after its warm-up calls; None (the row says why) when it fails."""
    try:
        for _ in range(WARMUP_CALLS):
            runner(inputs[:1].numpy())
            outputs = runner(inputs.numpy())
    except Exception as exc:  # noqa: BLE001 - a runtime failing at run time (torch.compile: at its first call)
        row.status, row.reason = FAILED, f"running failed: {first_line(exc)}"
        return None
    if outputs.ndim != 2 or len(outputs) != len(inputs):
        row.status, row.reason = FAILED, f"returned shape {outputs.shape} for {len(inputs)} images"
        return None
    return outputs


def recommend(rows: list[BenchRow], batch: int) -> tuple[dict[str, Any] | None, str | None]:
    """The fastest rows (throughput at the batch, batch-1 latency) among those whose parity passed."""
    measured = [row for row in rows if row.status == MEASURED and row.images_per_s is not None]
    if not measured:
        return None, "nothing was measured"
    candidates = [row for row in measured if row.parity_passed]
    if not candidates:
        return None, ("no row's parity was checked and passed (pass --checkpoint, the source model): a fast runtime "
                      "computing other embeddings is no recommendation")

    def pick(row: BenchRow) -> dict[str, Any]:
        return {"runtime": row.runtime, "precision": row.precision, "file": row.file, "images_per_s": row.images_per_s,
                "latency_ms": row.latency_ms, "vs_eager": row.vs_eager}

    fastest = max(candidates, key=lambda row: row.images_per_s or 0.0)
    quickest = min(candidates, key=lambda row: row.latency_ms or float("inf"))
    return {f"throughput_batch_{batch}": pick(fastest), "latency_batch_1": pick(quickest)}, None


def bench(files: list[Path], source: LoadedModel | None, threads: int, batch: int = 64, rounds: int = 5,
          images_dir: Path | None = None, image_size: int | None = None, compile_source: bool = True,
          trust_code: bool = False, runtimes: Sequence[Runtime] = RUNTIMES,
          progress: Callable[[str], None] | None = None, settings: ImageSettings | None = None) -> BenchReport:
    """Every file in every runtime of ``runtimes``, beside ``source`` (the PyTorch model the files were exported
    from: the parity reference and the warm eager baseline) when given. ``compile_source`` False skips every
    torch.compile row (it compiles at its first call: seconds to minutes). ``settings``: how ``images_dir`` is
    decoded (the config's data settings: align and its detector settings); each file's size and non-square
    policy come from its sidecar."""
    if source is not None and source.runtime != "pytorch":
        raise DataError(f"--checkpoint {source.source} is an exported {source.runtime} file; pass the PyTorch model "
                        "it was exported from (a run directory or checkpoint)")
    say = progress or (lambda text: None)
    sidecars: dict[Path, dict[str, Any] | None] = {}
    for path in files:
        if not path.is_file():
            raise CheckpointError(f"model file not found: {path}")
        sidecars[path] = read_sidecar(path)
    sizes = {path: image_size_of(path, sidecars[path], image_size, source) for path in files}
    previous_threads = torch.get_num_threads()
    rows: list[BenchRow] = []
    described = ""
    try:
        for size in dict.fromkeys(sizes.values()):  # the source model is measured once per size fed
            group = [path for path in files if sizes[path] == size]
            non_square = next(((sidecars[path] or {}).get("non_square") for path in group if sidecars[path]), None)
            fed = replace(settings or ImageSettings(), image_size=size)
            inputs, described = bench_inputs(batch, images_dir, replace(fed, non_square=non_square or fed.non_square))
            say(f"loading the runtimes ({size} px)")
            loaded = source_rows(source, size, threads, compile_source) if source is not None else []
            for path in group:
                loaded += file_rows(path, size, threads, trust_code, runtimes, compile_source)
            rows += measure(loaded, inputs, rounds, sidecars, source, say)
    finally:
        torch.set_num_threads(previous_threads)
    recommendation, why = recommend(rows, batch)
    baseline = (f"PyTorch eager on {source.source.name}, warm, {threads} threads" if source is not None
                else "none (pass --checkpoint: the source model is the eager baseline)")
    flags = cpu_flags()
    return BenchReport(rows, threads, batch, rounds, described, cpu_features(flags), vector_features(flags), baseline,
                       recommendation, why)


def measure(loaded: list[tuple[BenchRow, Runner | None]], inputs: torch.Tensor, rounds: int,
            sidecars: dict[Path, dict[str, Any] | None], source: LoadedModel | None,
            say: Callable[[str], None]) -> list[BenchRow]:
    """Warm up and check every loaded runner, then time them in interleaved rounds; fill in the rows."""
    reference: np.ndarray | None = None
    running: dict[int, Runner] = {}
    for key, (row, runner) in enumerate(loaded):
        if runner is None:
            continue
        say(f"warming up {row.runtime} ({Path(row.file).name})")
        outputs = warm_and_check(row, runner, inputs)
        if outputs is None:
            continue
        if row.source and row.runtime == TorchEager.name:
            reference, row.parity, row.parity_min_cosine, row.parity_mean_cosine = outputs, "reference", 1.0, 1.0
        else:
            sidecar = sidecars.get(Path(row.file)) if not row.source else None
            parity_of(row, outputs, reference, None if row.source else source_mismatch(Path(row.file), sidecar, source))
        running[key] = runner
    say("timing")
    timed = time_rounds(running, inputs, rounds)
    eager = next((timed[key] for key, (row, _) in enumerate(loaded) if key in timed and row.source
                  and row.runtime == TorchEager.name), None)
    for key, (latency, throughput) in timed.items():
        row = loaded[key][0]
        row.latency_ms, row.images_per_s = latency, throughput
        row.vs_eager = throughput / eager[1] if eager else None
    return [row for row, _ in loaded]
