"""``train(config)``: scan the data, load the backbone, then run (or resume) the Trainer; under torchrun rank 0
prepares the run directory and the decoded-image cache for the others. Level 4 of --auto-troubleshoot
restarts here with the new backbone."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..config import EdgeFaceConfig, with_absolute_paths
from ..data.folder import NON_SQUARE_HINT, ImageSettings, ScanResult, left_out_note, problem_counts, scan_image_folder
from ..data.rec_dataset import scan_rec
from ..data.rehearsal import with_rehearsal
from ..errors import DataError, RunDirError
from ..events import EventHandler, Notice, ScanProgress
from ..model.checkpoints import BackboneLoad, load_backbone
from ..model.runtime import resolve_device, resolve_precision
from ..rundir import prepare_run_dir, remove_stale_temp_files, restore_replaced
from .distributed import SINGLE, Distributed
from .outcome import RunResult
from .trainer import Trainer
from .training_state import seed_everything


def scan_datasets(config: EdgeFaceConfig, on_event: EventHandler) -> tuple[ScanResult, ScanResult | None]:
    """Scan (and cache) train and val up front; report unreadable files, empty identities, odd shapes."""
    settings = ImageSettings.from_config(config.data)
    scan_progress = lambda done, total: on_event(ScanProgress("train", done, total))  # noqa: E731
    if config.data.train_rec is not None:
        train: ScanResult = scan_rec(config.data.train_rec, "train", settings, scan_progress)
        if train.empty_classes:
            on_event(Notice("warning", f"{len(train.empty_classes)} of the {len(train.classes)} classes of "
                                       f"{train.root} have no image record: their centres never train"))
    elif config.data.train_dir is None:
        raise DataError("no training data: pass --train-dir DIR (one folder per identity) or --train-rec FILE.rec")
    else:
        train = scan_image_folder(config.data.train_dir, "train", settings=settings, progress=scan_progress)
        report_scan(train, "train", on_event)
    train = with_rehearsal(train, config.data, settings, lambda done, total: on_event(ScanProgress("rehearsal", done, total)))
    if len(train.classes) < 2:
        raise DataError(
            f"train data {train.root} has {len(train.classes)} usable identity; at least 2 are needed to learn to tell them apart"
        )
    val = None
    if config.data.val_dir is not None:
        val = scan_image_folder(
            config.data.val_dir, "val", class_names=train.classes, settings=settings,
            progress=lambda done, total: on_event(ScanProgress("val", done, total)),
        )
        report_scan(val, "val", on_event)
        if val.unknown_classes:
            on_event(Notice("info", left_out_note(len(val.unknown_classes))))
    return train, val


def report_scan(scan: ScanResult, role: str, on_event: EventHandler) -> None:
    if scan.unreadable:
        listed = "; ".join(f"{path} ({why})" for path, why in scan.unreadable[:10])
        more = f"; ... {len(scan.unreadable) - 10} more" if len(scan.unreadable) > 10 else ""
        on_event(Notice("warning", f"{problem_counts(scan.unreadable, role)} skipped: {listed}{more}"))
        on_event(Notice("info", f"for a full report on the data (duplicates, leakage, label noise): "
                                f"edgeface check-data --{role}-dir {scan.root}"))
    if scan.empty_classes:
        on_event(
            Notice("warning", f"{len(scan.empty_classes)} empty {role} identity folders skipped: {', '.join(scan.empty_classes[:10])}")
        )
    if scan.settings.align != "off" and role == "train":
        on_event(Notice("info", f"raw photos: each face is detected and aligned as it is decoded (data.align="
                                f"{scan.settings.align}); edgeface align IN OUT does it once and keeps the crops"))
    if scan.non_square:
        on_event(Notice("warning", f"{scan.non_square} of {len(scan.samples)} {role} images are not square: "
                        + NON_SQUARE_HINT.format(mode=scan.settings.non_square)))
    if scan.cache_note:
        on_event(Notice("warning", scan.cache_note))
    elif scan.cached is not None:
        how = "read from" if scan.cache_hit else "written to"
        on_event(Notice("info", f"{role} images decoded once, {how} the cache {scan.cached.directory}"))


def train(
    config: EdgeFaceConfig,
    on_event: EventHandler | None = None,
    resume_dir: Path | None = None,
    force: bool = False,
    auto_troubleshoot: bool = False,
    distributed: Distributed = SINGLE,
    trust_code: bool = False,
) -> RunResult:
    """Scan data, load the backbone, and run (or resume) the two-stage fine-tuning.

    ``trust_code``: ``model.checkpoint`` may be a TorchScript archive, a program that runs code when loaded.

    With ``auto_troubleshoot`` a level-4 escalation restarts stage 1 with EdgeFace-S in ``<run>-level4``.
    Under torchrun (``distributed``) only rank 0 reports events and writes files.
    """
    on_event = on_event or (lambda event: None)
    resolve_precision(config.runtime.amp, resolve_device(config.runtime.device))  # fail before slow work
    config = with_absolute_paths(config)  # config.yaml then works from any folder (--resume included)
    if not distributed.is_main:
        on_event = lambda event: None  # noqa: E731 - rank 0 speaks for all
    # The decoded-image cache lives on each machine's disk: each machine's local rank 0 scans and builds it
    # (all machines at once), the other ranks wait for them and then read it.
    # The wait has its own limit (runtime.rank0_timeout_s): a scan of millions of files outlasts a collective's.
    builds_cache = distributed.local_rank == 0
    if not builds_cache:
        distributed.wait_for_rank0_work()
    try:
        if builds_cache and config.debug.slow_scan_s:
            time.sleep(config.debug.slow_scan_s)  # tests: a scan slower than the collective timeout
        train_scan, val_scan = scan_datasets(config, on_event)
    finally:
        if builds_cache:
            distributed.wait_for_rank0_work()  # also on failure: the others then hit the same error instead of waiting
    result = _train_once(config, train_scan, val_scan, on_event, resume_dir, force, auto_troubleshoot, distributed,
                         trust_code)
    previous: list[Path] = []
    while result.status == "switched" and result.next_config is not None:
        previous.append(result.run_dir)
        next_config = result.next_config
        on_event(Notice("info", f"restarting stage 1 with {next_config.model.arch} in {next_config.runtime.out}"))
        result = _train_once(next_config, train_scan, val_scan, on_event, None, force, auto_troubleshoot, distributed,
                             trust_code)
    result.previous_runs = previous
    return result


def _train_once(
    config: EdgeFaceConfig,
    train_scan: ScanResult,
    val_scan: ScanResult | None,
    on_event: EventHandler,
    resume_dir: Path | None,
    force: bool,
    auto_troubleshoot: bool,
    distributed: Distributed = SINGLE,
    trust_code: bool = False,
) -> RunResult:
    seed_everything(config.runtime.seed)
    resume_state = None
    if resume_dir is not None:
        last = resume_dir / "last.pt"
        if not last.exists():
            raise RunDirError(f"cannot resume {resume_dir}: no last.pt there (did its first epoch finish?)")
        if distributed.is_main:
            remove_stale_temp_files(resume_dir)
        resume_state = torch.load(last, map_location="cpu", weights_only=True)
        if resume_state.get("class_names") != train_scan.classes:
            raise RunDirError(f"cannot resume {resume_dir}: the training identities differ from the run's")
        run_dir = resume_dir
        loaded = load_backbone(None, resume_state["arch"]["arch"], resume_state["arch"]["use_pos_emb"],
                               resume_state["arch"]["embedding_dim"], True)
    else:
        loaded = load_backbone(
            config.model.checkpoint, config.model.arch, config.model.use_pos_emb,
            config.model.embedding_dim, config.model.allow_missing, trust_code,
        )
        report_backbone(loaded, on_event)
        # Record what was built (arch: auto resolves here), so config.yaml describes the run exactly.
        backbone = loaded.backbone
        config = config.model_copy(update={"model": config.model.model_copy(update={
            "arch": backbone.arch, "use_pos_emb": list(backbone.use_pos_emb), "embedding_dim": backbone.embedding_dim,
        })})
        run_dir = _shared_run_dir(config.runtime.out, force, distributed)
        config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"out": run_dir.absolute()})})
    try:
        return _run_trainer(config, run_dir, train_scan, val_scan, loaded, on_event, auto_troubleshoot, distributed,
                            resume_state)
    finally:
        if distributed.is_main and resume_state is None and restore_replaced(run_dir):
            on_event(Notice("warning", f"the new run never reached a checkpoint: the previous run in {run_dir} "
                                       "is back in place"))


def _run_trainer(config: EdgeFaceConfig, run_dir: Path, train_scan: ScanResult, val_scan: ScanResult | None,
                 loaded: BackboneLoad, on_event: EventHandler, auto_troubleshoot: bool, distributed: Distributed,
                 resume_state: dict | None) -> RunResult:
    trainer = Trainer(config, run_dir, train_scan, val_scan, loaded, on_event, auto_troubleshoot, distributed)
    # Rank 0 alone scanned the held-out folder and read the .bin sets: the others wait for it here, not in the
    # first collective of a resume (DDP's parameter broadcast), which has only the collective timeout.
    distributed.wait_for_rank0_work()
    if resume_state is not None:
        trainer.resume(resume_state)
        if trainer.state.epoch >= config.optim.epochs:
            return trainer.result("already_complete")
        on_event(Notice("info", f"resuming {run_dir} at epoch {trainer.state.epoch + 1}"))
    try:
        return trainer.run()
    except KeyboardInterrupt:
        return trainer.result("interrupted")


def _shared_run_dir(out: Path | None, force: bool, distributed: Distributed) -> Path:
    """Rank 0 prepares the run directory (its default name is a timestamp) and tells the others."""
    if not distributed.enabled:
        return prepare_run_dir(out, force)
    outcome: tuple[str, str] | None = None
    if distributed.is_main:
        try:
            outcome = ("ok", str(prepare_run_dir(out, force)))
        except RunDirError as exc:
            outcome = ("error", str(exc))
    kind, value = distributed.broadcast(outcome)
    if kind == "error":
        raise RunDirError(value)
    return Path(value)


def report_backbone(loaded: BackboneLoad, on_event: EventHandler) -> None:
    if loaded.checkpoint is None:
        on_event(Notice("warning", "no --edgeface checkpoint given: the backbone starts from random weights"))
        return
    report = loaded.report
    assert report is not None
    on_event(
        Notice(
            "info",
            f"loaded {loaded.checkpoint.path} ({loaded.checkpoint.format}): {len(report.matched)} tensors matched, "
            f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} mismatched",
        )
    )
    if loaded.initialised:
        keys = ", ".join(key for key, _ in loaded.initialised)
        on_event(Notice("warning", f"model.allow_missing: initialised {len(loaded.initialised)} tensors: {keys}"))
        for line in loaded.diagnosis:
            on_event(Notice("warning", line))
