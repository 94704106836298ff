"""The fallback ladder from the seed run, and a diagnosis of a finished or failed run.

Levels are cumulative (level 2 applies 1 and 2) and only ever lower a value:
1 lower learning rates: stage 1's head lr -> 5e-5, and stage 2's head and backbone lrs halved
  (the seed's 1e-4 -> 5e-5 ratio), so a failure in either stage sees a lower rate;
2 max_grad_norm -> 0.5; 3 ArcFace s=16, m=0.2; 4 switch to EdgeFace-S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONFIG_FILE, EdgeFaceConfig, config_from_dict, read_yaml_file
from ..errors import ConfigError, EdgeFaceError, RunDirError
from ..rundir import read_metrics
from ..zoo import ZOO

MAX_LEVEL = 4
AUTO_MAX_LEVEL = 4  # level 4 swaps the backbone: --auto-troubleshoot restarts stage 1 in a new run dir
FALLBACK_ARCH = "edgeface_s_gamma_05"

LEVEL1_STAGE2_FACTOR = 0.5  # the seed's level-1 ratio (head lr 1e-4 -> 5e-5), applied to the stage-2 rates


@dataclass(frozen=True)
class Fallback:
    """One rung: set ``field`` to at most ``at_most``, or multiply it by ``factor`` (once: only when the
    config's level is below this rung's, so re-applying a level never lowers the value again)."""

    level: int
    field: str
    reason: str
    at_most: float | None = None
    factor: float | None = None


# Reasons from the seed's reasoning.
LADDER: list[Fallback] = [
    Fallback(1, "optim.head_lr", "a gentler head learning rate keeps early updates from exploding with many classes",
             at_most=5e-5),
    Fallback(1, "optim.head_lr_stage2", "stage 2 gets the lower rate too: a failure there needs it as much",
             factor=LEVEL1_STAGE2_FACTOR),
    Fallback(1, "optim.backbone_lr", "stage 2 gets the lower rate too: a failure there needs it as much",
             factor=LEVEL1_STAGE2_FACTOR),
    Fallback(2, "guard.max_grad_norm", "tighter clipping caps every step's size before a spike turns into NaN",
             at_most=0.5),
    Fallback(3, "arcface.scale", "a smaller logit scale softens the loss and its gradients", at_most=16.0),
    Fallback(3, "arcface.margin", "a softer margin is easier to satisfy with many similar identities", at_most=0.2),
]
DATA_CHECKS = (
    "nothing left to escalate: the config is already at level 4. Check the data instead: corrupt or "
    "mislabelled images (edgeface train reports unreadable files), identities with very few images, "
    "and duplicate identities under two names"
)


class NothingToEscalate(EdgeFaceError):
    pass


def _get(config: EdgeFaceConfig, dotted: str) -> Any:
    section, name = dotted.split(".")
    return getattr(getattr(config, section), name)


def apply_level(config: EdgeFaceConfig, level: int) -> tuple[EdgeFaceConfig, list[dict[str, Any]]]:
    """The config with fallbacks 1..level applied, and one change entry per touched field."""
    if not 1 <= level <= MAX_LEVEL:
        raise ConfigError(f"--level must be between 1 and {MAX_LEVEL} (got {level})")
    if level == MAX_LEVEL and config.troubleshoot_level >= MAX_LEVEL:
        raise NothingToEscalate(DATA_CHECKS)
    data = config.model_dump(mode="json")
    changes: list[dict[str, Any]] = []
    for rung in LADDER:
        if rung.level > level:
            continue
        before = _get(config, rung.field)
        if rung.factor is not None:
            applied = config.troubleshoot_level >= rung.level
            after = before if applied else before * rung.factor
            kept = f"already lowered at level {config.troubleshoot_level}: kept"
        else:
            assert rung.at_most is not None
            after = min(before, rung.at_most)  # a fallback only ever lowers a value
            kept = f"already at or below {rung.at_most:g}: kept"
        section, name = rung.field.split(".")
        data[section][name] = after
        changes.append({
            "level": rung.level, "field": rung.field, "before": before, "after": after,
            "changed": after != before, "reason": rung.reason if after != before else kept,
        })
    if level >= 4:
        changes += _switch_to_small(config, data)
    data["troubleshoot_level"] = max(config.troubleshoot_level, level)
    return config_from_dict(data, "the troubleshoot result"), changes


def fallback_checkpoint(config: EdgeFaceConfig) -> Path:
    """Where the EdgeFace-S checkpoint is expected: beside the current checkpoint."""
    folder = config.model.checkpoint.parent if config.model.checkpoint is not None else Path(".")
    return folder / ZOO[FALLBACK_ARCH].checkpoint_file


def _switch_to_small(config: EdgeFaceConfig, data: dict[str, Any]) -> list[dict[str, Any]]:
    target = fallback_checkpoint(config)
    data["model"]["arch"] = FALLBACK_ARCH
    data["model"]["checkpoint"] = str(target)
    data["model"]["use_pos_emb"] = [False, True, False, False]
    present = target.is_file()
    reason = "EdgeFace-S has more capacity and is more stable than XXS on hard, many-identity data"
    if not present:
        reason += (
            f"; {target} is not there: download edgeface_s_gamma_05.pt from the EdgeFace release "
            f"(github.com/otroshi/edgeface) and place it at {target}"
        )
    return [
        {"level": 4, "field": "model.arch", "before": config.model.arch, "after": FALLBACK_ARCH,
         "changed": config.model.arch != FALLBACK_ARCH, "reason": reason, "checkpoint_present": present},
        {"level": 4, "field": "model.checkpoint", "before": str(config.model.checkpoint) if config.model.checkpoint else None,
         "after": str(target), "changed": True, "reason": "the EdgeFace-S weights beside the current checkpoint",
         "checkpoint_present": present},
    ]


# ------------------------------------------------------------------ run diagnosis


@dataclass
class RunDiagnosis:
    config: EdgeFaceConfig
    findings: list[str]
    failed: bool
    recommended_level: int | None


def read_run(run_dir: Path) -> tuple[EdgeFaceConfig, list[dict[str, Any]]]:
    if not run_dir.exists():
        raise RunDirError(f"run dir not found: {run_dir}; pass the --out folder of an edgeface train run")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunDirError(f"{run_dir} is not an edgeface run: it has no config.yaml")
    config = config_from_dict(read_yaml_file(config_path), str(config_path))
    rows = read_metrics(run_dir)
    return config, rows


def diagnose_run(run_dir: Path) -> RunDiagnosis:
    """What went wrong in a run, as the seed's warning signs, and which level to try next."""
    config, rows = read_run(run_dir)
    epochs = [row for row in rows if "event" not in row]
    findings: list[str] = []
    failed = False
    for row in rows:
        if row.get("event") == "guard_stop":
            failed = True
            if row.get("kind") == "nan_loss":
                findings.append(f"loss became NaN at epoch {row['epoch']}: training stopped ({row['reason']})")
            else:
                findings.append(f"too many batches skipped at epoch {row['epoch']}: training stopped ({row['reason']})")
        elif row.get("event") == "escalation":
            findings.append(
                f"epoch {row['epoch']} failed and training escalated itself from level {row['from_level']} to {row['to_level']}"
            )
    skipped = [(row["epoch"], row.get("skipped_batches", 0) + row.get("skipped_steps", 0)) for row in epochs]
    skipped = [(epoch, count) for epoch, count in skipped if count]
    if skipped:
        listed = ", ".join(f"epoch {epoch}: {count}" for epoch, count in skipped)
        findings.append(f"batches skipped for non-finite loss or gradients ({listed})")
    non_finite = [row["epoch"] for row in epochs if row.get("train_loss") is not None and not math.isfinite(row["train_loss"])]
    if non_finite:
        failed = True
        findings.append(f"train loss not finite at epoch(s) {', '.join(map(str, non_finite))}")
    collapsed = [row["epoch"] for row in epochs if (row.get("val_sim_pos") or 0) >= config.guard.collapse_similarity]
    if collapsed:
        findings.append(
            f"same-identity similarity at or above {config.guard.collapse_similarity} at epoch(s) "
            f"{', '.join(map(str, collapsed))}: embeddings may have collapsed"
        )
    stage2 = [row for row in epochs if row.get("stage") == 2 and row.get("val_acc") is not None]
    stage1_best = max((row["val_acc"] for row in epochs if row.get("stage") == 1 and row.get("val_acc") is not None), default=None)
    if len(stage2) >= config.guard.patience and stage1_best is not None:
        if max(row["val_acc"] for row in stage2) <= stage1_best:
            findings.append(
                f"val accuracy flat after stage 1: {len(stage2)} stage-2 epochs never beat stage 1's {stage1_best:.3f}"
            )
    recommended = None
    if failed or skipped or collapsed:
        recommended = min(MAX_LEVEL, config.troubleshoot_level + 1) if config.troubleshoot_level < MAX_LEVEL else None
    if not findings:
        findings.append("no warning signs: the run looks healthy")
    return RunDiagnosis(config, findings, failed, recommended)


def output_path(level: int, config_file: Path | None, from_run: Path | None) -> Path:
    """Where the new config goes: ``RUN/config.level<N>.yaml`` for a run; ``<config>.level<N>.yaml`` beside an
    explicit ``--config`` (never overwritten); else ``./edgeface.yaml``, which ``train`` picks up."""
    if from_run is not None:
        return from_run / f"config.level{level}.yaml"
    if config_file is not None:
        return config_file.with_name(f"{config_file.stem}.level{level}{config_file.suffix or '.yaml'}")
    return Path(DEFAULT_CONFIG_FILE)


def backup_path(path: Path, level: int) -> Path:
    """Where the previous ``edgeface.yaml`` is kept when escalation updates it in place."""
    return path.with_name(f"{path.name}.level{level}.bak")


def next_run_dir(run_dir: Path, level: int) -> Path:
    """The run a fallback level trains into, beside the failed one (never over it)."""
    return run_dir.with_name(f"{run_dir.name}-level{level}")


def advice_without_level(diagnosis: RunDiagnosis, run_dir: Path) -> list[str]:
    """What to try when the run shows no sign a fallback level addresses (e.g. accuracy went flat)."""
    optim = diagnosis.config.optim
    return [
        "the fallback levels address NaN losses, skipped batches and collapsed embeddings; this run shows none",
        f"train longer: edgeface train --resume {run_dir} --set optim.epochs={optim.epochs * 2}",
        f"let the backbone adapt faster in stage 2: --set optim.backbone_lr={optim.backbone_lr * 3:g} (now {optim.backbone_lr:g})",
        "check the data: mislabelled or duplicated images, identities with one or two images, "
        "val identities missing from training",
    ]
