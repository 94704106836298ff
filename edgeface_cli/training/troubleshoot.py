"""The fallback ladder from the seed run, and a diagnosis of a finished or failed run.

Levels are cumulative (level 2 applies 1 and 2) and only ever lower a value:
1 lower learning rates: stage 1's head lr -> 5e-5, and stage 2's head and backbone lrs halved
  (the seed's 1e-4 -> 5e-5 ratio), so a failure in either stage sees a lower rate;
2 max_grad_norm -> 0.5; 3 a softer margin loss: s=16 and m=0.2 (arcface.scale, arcface.margin; a combined
  loss lowers loss.m2 and loss.m3 to 0.2 instead of the margin); 4 switch to EdgeFace-S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CONFIG_FILE, EdgeFaceConfig, config_from_dict, read_yaml_file
from ..errors import ConfigError, EdgeFaceError, RunDirError
from ..preflight import IMAGE_EXTENSIONS, is_system_file
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
    loss_kinds: tuple[str, ...] | None = None  # only for these loss.kind values (None: whatever the loss)


# Reasons from the seed's reasoning.
# A fallback may change optim.*, loss/arcface settings and guard.max_grad_norm only: the trainer's parts (batches,
# stage-1 cache, validator, guard policy) are built once from the starting config and keep its data, augmentation
# and guard thresholds across an escalation; tests/training/test_troubleshoot.py checks the ladder's keys.
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
    Fallback(3, "arcface.margin", "a softer margin is easier to satisfy with many similar identities", at_most=0.2,
             loss_kinds=("arcface", "cosface", "adaface")),
    Fallback(3, "loss.m2", "a softer angular margin is easier to satisfy with many similar identities", at_most=0.2,
             loss_kinds=("combined",)),
    Fallback(3, "loss.m3", "a softer cosine margin is easier to satisfy with many similar identities", at_most=0.2,
             loss_kinds=("combined",)),
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
        if rung.level > level or rung.loss_kinds is not None and config.loss.kind not in rung.loss_kinds:
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
    remedies: list[str] = field(default_factory=list)  # for what no fallback level addresses (chance, overfitting)
    signs: list[str] = field(default_factory=list)  # machine-readable: nan_loss, skipped, chance, overfitting, ...

    @property
    def healthy(self) -> bool:
        return not self.signs


# When a run is no better than guessing, and when it learns the training set at the expense of val. The margins
# are wide on purpose: a finding must be a clear sign, never the noise of a small val folder.
CHANCE_ACCURACY_FACTOR = 1.5  # best val accuracy at most 1.5 x 1/identities: guessing does as well
CHANCE_AUC = 0.55  # best val verification AUC at most this: same-identity pairs score like different ones
OVERFIT_VAL_DROP = 0.05  # val this far below its best at the last epoch ...
OVERFIT_TRAIN_RISE = 0.02  # ... while train accuracy rose at least this much since the best epoch
OVERFIT_GAP = 0.30  # or train accuracy this far above val accuracy at the last epoch
MIN_EPOCHS_TO_JUDGE = 2  # one epoch tells neither chance level nor overfitting apart from a slow start


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
    # metrics.jsonl is strict JSON: a NaN loss is written as None and named under "nonfinite".
    non_finite = [row["epoch"] for row in epochs if "train_loss" in (row.get("nonfinite") or ())
                  or (row.get("train_loss") is not None and not math.isfinite(row["train_loss"]))]
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
                f"val accuracy flat after stage 1: {len(stage2)} stage-2 epoch{'' if len(stage2) == 1 else 's'} "
                f"never beat stage 1's {stage1_best:.3f}"
            )
    learning = judge_learning(config, epochs, run_dir)
    if "overfitting" in learning.signs:
        # Val stopped improving because the model learns its training images too well: that is overfitting
        # (said below, with its remedies), not a model that fails to learn.
        findings = [finding for finding in findings if not finding.startswith("val accuracy flat")]
    signs = [sign for sign, present in (("failed", failed), ("skipped", bool(skipped)), ("collapsed", bool(collapsed)),
                                         ("flat", any(f.startswith("val accuracy flat") for f in findings)))
             if present]
    findings += learning.findings
    signs += learning.signs
    recommended = None
    if failed or skipped or collapsed:
        recommended = min(MAX_LEVEL, config.troubleshoot_level + 1) if config.troubleshoot_level < MAX_LEVEL else None
    if not findings:
        findings.append("no warning signs: the run learned (above chance, no overfitting) and looks healthy")
    return RunDiagnosis(config, findings, failed, recommended, learning.remedies, signs)


@dataclass
class LearningJudgement:
    findings: list[str] = field(default_factory=list)
    remedies: list[str] = field(default_factory=list)
    signs: list[str] = field(default_factory=list)


def count_identities(config: EdgeFaceConfig, epochs: list[dict[str, Any]]) -> tuple[int | None, str]:
    """How many identities the head chose among (what chance accuracy is 1 over), and where that number is
    from: the run's own record when it has one, else the training folder as it is now; else None and why."""
    recorded = next((row["identities"] for row in epochs if isinstance(row.get("identities"), int)), None)
    if recorded:
        return recorded, "recorded by the run"
    train_dir = config.data.train_dir
    if train_dir is None or not train_dir.is_dir():
        return None, f"the training folder {train_dir} is not there to count its identities"
    least = config.data.min_images_per_identity
    count = sum(1 for folder in train_dir.iterdir()
                if folder.is_dir() and not is_system_file(folder)
                and sum(1 for image in folder.rglob("*") if image.suffix.lower() in IMAGE_EXTENSIONS) >= least)
    return (count, f"counted in {train_dir}") if count >= 2 else (None, f"{train_dir} holds fewer than 2 identities")


def _finite(value: Any) -> bool:
    """A measured number (an old metrics.jsonl may hold NaN, which json.loads accepts; a new one holds None)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _best(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    measured = [row for row in rows if _finite(row.get(key))]
    return max(measured, key=lambda row: row[key]) if measured else None  # the first of equal bests


def judge_learning(config: EdgeFaceConfig, epochs: list[dict[str, Any]], run_dir: Path) -> LearningJudgement:
    """Chance level (val accuracy about 1/identities, val AUC about 0.5) and overfitting (train rising while val
    falls, or a large train/val gap), each with its remedies. The epoch-0 held-out baseline is not an epoch."""
    judged = LearningJudgement()
    trained = [row for row in epochs if (row.get("stage") or 0) >= 1]
    if len(trained) < MIN_EPOCHS_TO_JUDGE:
        if trained:
            judged.findings.append(f"only {len(trained)} epoch finished: too early to tell chance level or overfitting")
        return judged
    identities, counted = count_identities(config, trained)
    best_acc, best_auc, best_train = _best(trained, "val_acc"), _best(trained, "val_auc"), _best(trained, "train_acc")
    guess = 1 / identities if identities else None

    def at_chance(row: dict[str, Any] | None, key: str) -> bool:
        return row is not None and guess is not None and row[key] <= CHANCE_ACCURACY_FACTOR * guess

    acc_at_chance, train_at_chance = at_chance(best_acc, "val_acc"), at_chance(best_train, "train_acc")
    auc_at_chance = best_auc is not None and best_auc["val_auc"] <= CHANCE_AUC
    guessing = f"guessing among {identities} identities ({counted}) gives {guess:.1%}" if guess else ""
    if best_acc is not None and guess is None and not auc_at_chance:
        judged.findings.append(f"val accuracy cannot be compared with chance: {counted}")
    if acc_at_chance and best_auc is not None and not auc_at_chance and best_train is not None and not train_at_chance:
        # The head knows the training identities and the embeddings separate the val ones, yet val accuracy is
        # at chance: the val folders name other people than the training folders of the same name.
        judged.signs.append("labels_disagree")
        judged.findings.append(
            f"val accuracy is at chance level (best {best_acc['val_acc']:.1%}; {guessing}) although train accuracy "
            f"reached {best_train['train_acc']:.1%} and the embeddings separate val identities (val AUC "
            f"{best_auc['val_auc']:.3f}): the val folders' names do not match the training folders' people")
        data = config.data
        judged.remedies.append(f"check that each val folder holds the same person as the training folder of its name "
                               f"(edgeface check-data --train-dir {data.train_dir} --val-dir {data.val_dir})")
        return judged
    if acc_at_chance and best_auc is not None and not auc_at_chance:
        judged.signs.append("head_untrained")
        judged.findings.append(
            f"val accuracy is at chance level (best {best_acc['val_acc']:.1%}; {guessing}), but the embeddings do "
            f"separate identities (val AUC {best_auc['val_auc']:.3f}): the margin head has not learned them")
        judged.remedies += [
            f"give the head a higher learning rate: --set optim.head_lr={config.optim.head_lr * 10:g} "
            f"(now {config.optim.head_lr:g}), or more stage-1 epochs: --set optim.stage1_epochs="
            f"{config.optim.stage1_epochs * 2 or 2}",
        ]
        return judged
    no_val = best_acc is None and best_auc is None
    if acc_at_chance or auc_at_chance or (no_val and train_at_chance):
        judged.signs.append("chance")
        parts = []
        if best_acc is not None:
            parts.append(f"best val accuracy {best_acc['val_acc']:.1%}" + (f" where {guessing}" if guess else ""))
        if best_auc is not None:
            parts.append(f"best val AUC {best_auc['val_auc']:.3f} (0.5 is guessing)")
        if no_val and best_train is not None:
            parts.append(f"best train accuracy {best_train['train_acc']:.1%} where {guessing} (no val folder)")
        judged.findings.append(f"chance level after {len(trained)} epoch{'' if len(trained) == 1 else 's'}: "
                               f"{'; '.join(parts)}: the model tells "
                               "identities apart no better than guessing")
        judged.remedies += _chance_remedies(config, trained, best_train, train_at_chance or no_val, guessing)
        return judged
    _judge_overfitting(config, trained, judged)
    return judged


def _chance_remedies(config: EdgeFaceConfig, trained: list[dict[str, Any]], best_train: dict[str, Any] | None,
                     train_at_chance: bool, guessing: str) -> list[str]:
    remedies: list[str] = []
    optim = config.optim
    if train_at_chance or best_train is None:
        losses = [row["train_loss"] for row in trained if _finite(row.get("train_loss"))]
        if len(losses) >= 2 and losses[-1] > losses[0]:
            remedies.append(f"train loss rose ({losses[0]:.3f} -> {losses[-1]:.3f}): the learning rate is too high; "
                            f"--set optim.head_lr={optim.head_lr / 10:g} (now {optim.head_lr:g})")
        elif len(losses) >= 2:
            remedies.append(f"train loss barely moves ({losses[0]:.3f} -> {losses[-1]:.3f}) and training images are "
                            f"not learned either: the learning rates are too low; --set optim.head_lr="
                            f"{optim.head_lr * 10:g} --set optim.backbone_lr={optim.backbone_lr * 10:g}")
        if optim.stage1_epochs >= optim.epochs:
            every = "the one epoch is" if optim.epochs == 1 else f"all {optim.epochs} epochs are"
            remedies.append(f"the backbone never trained: {every} stage 1 (frozen backbone); "
                            f"give stage 2 epochs: --set optim.epochs={optim.epochs + max(optim.stage1_epochs, 5)}")
        if config.model.checkpoint is None:
            remedies.append("the backbone started from random weights (no --edgeface): fine-tune a published "
                            "EdgeFace checkpoint instead")
    else:
        remedies.append(f"train accuracy reached {best_train['train_acc']:.1%} while val stays at chance: the "
                        "model memorises its training images, with nothing that carries over; the labels may "
                        "disagree between train and val (one name for different people, shuffled folders)")
    data = config.data
    folders = f" --train-dir {data.train_dir}" + (f" --val-dir {data.val_dir}" if data.val_dir else "")
    remedies.append(f"check the data: edgeface check-data{folders} (mislabels, duplicates, identities with too "
                    "few images)")
    return remedies


def _judge_overfitting(config: EdgeFaceConfig, trained: list[dict[str, Any]], judged: LearningJudgement) -> None:
    key = "val_acc" if _best(trained, "val_acc") is not None else "val_auc"
    best, last = _best(trained, key), trained[-1]
    if best is None or not _finite(last.get(key)):
        return
    named = "val accuracy" if key == "val_acc" else "val AUC"
    train_now, train_then = last.get("train_acc"), best.get("train_acc")
    falling = (last["epoch"] > best["epoch"] and best[key] - last[key] >= OVERFIT_VAL_DROP
               and _finite(train_now) and _finite(train_then)
               and train_now - train_then >= OVERFIT_TRAIN_RISE)
    gap = key == "val_acc" and _finite(train_now) and train_now - last[key] >= OVERFIT_GAP
    if not (falling or gap):
        return
    judged.signs.append("overfitting")
    if falling:
        judged.findings.append(
            f"overfitting: {named} fell from {best[key]:.3f} at epoch {best['epoch']} to {last[key]:.3f} at epoch "
            f"{last['epoch']} while train accuracy rose from {train_then:.1%} to {train_now:.1%}")
    if gap:
        judged.findings.append(
            f"overfitting: train accuracy {train_now:.1%} against val accuracy {last[key]:.1%} at epoch "
            f"{last['epoch']} (a gap of {train_now - last[key]:.1%}): the model learns its training images, not faces")
    optim, data = config.optim, config.data
    if best["epoch"] < last["epoch"]:
        judged.remedies.append(f"best.pt holds epoch {best['epoch']} (the best {named}): use it, not last.pt")
        if best["epoch"] > optim.stage1_epochs:
            judged.remedies.append(f"fewer stage-2 epochs: --set optim.epochs={best['epoch']} (now {optim.epochs})")
    if config.model.checkpoint is not None:
        judged.remedies.append(
            f"regularise toward the pretrained backbone: --set optim.l2sp=1 (now {optim.l2sp:g}; L2-SP) or "
            f"--set distill.weight=10 (now {config.distill.weight:g}; distillation), and/or a lower "
            f"--set optim.backbone_lr={optim.backbone_lr / 3:g} (now {optim.backbone_lr:g})")
    augment = f"--set data.color_jitter=0.2 (now {data.color_jitter:g})" + ("" if data.hflip else " --set data.hflip=true")
    judged.remedies.append(f"more images per identity, or more augmentation: {augment}")


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
    if diagnosis.remedies:  # chance level or overfitting: their own remedies, not the generic list
        return ["the fallback levels address NaN losses, skipped batches and collapsed embeddings; this run's "
                "problem is another", *diagnosis.remedies]
    return [
        "the fallback levels address NaN losses, skipped batches and collapsed embeddings; this run shows none",
        f"train longer: edgeface train --resume {run_dir} --set optim.epochs={optim.epochs * 2}",
        f"let the backbone adapt faster in stage 2: --set optim.backbone_lr={optim.backbone_lr * 3:g} (now {optim.backbone_lr:g})",
        "check the data: mislabelled or duplicated images, identities with one or two images, "
        "val identities missing from training",
    ]
