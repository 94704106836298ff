"""The one configuration every command shares.

Sources, lowest to highest precedence: defaults, a YAML file (``--config FILE``,
else ``./edgeface.yaml`` when present), named CLI flags, and ``--set section.field=value``
overrides. Defaults are the values that made the seed run stable (lower learning
rates, ArcFace s=32 m=0.3, gradient clipping at 1.0).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config_files import (annotated_yaml, commented_yaml, deep_merge, leaf_paths, model_path_fields, model_setting_names, nest,
                           parse_set_override, paths_relative_to, read_yaml_file)
from .config_files import format_validation_error as _format_problems
from .errors import ConfigError
from .recipes import RECIPE_NAMES, RECIPE_SUMMARIES, moved_aliases, provenance, with_recipe

__all__ = ["EdgeFaceConfig", "build_config", "load_config", "config_from_dict", "read_yaml_file",
           "parse_set_override", "dump_yaml", "commented_default_yaml", "with_absolute_paths", "path_fields",
           "default_of", "setting_names", "format_validation_error", "DEFAULT_CONFIG_FILE"]
from .zoo import DEFAULT_POS_EMB, ZOO

DEFAULT_CONFIG_FILE = "edgeface.yaml"


def on_off_from_yaml(value: Any) -> Any:
    """YAML 1.1 reads a bare on/off (and true/false) as a boolean: `cache: on` means "on", not True."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _on_off_choices(annotation: Any) -> bool:
    """Whether a field is a choice (Literal) that offers "on" or "off": YAML 1.1 booleans mean those words."""
    return get_origin(annotation) is Literal and bool({"on", "off"} & set(get_args(annotation)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans_as_words(cls, data: Any) -> Any:
        """``amp: off``, ``align: off``, ``cache: on``: YAML 1.1 reads the bare words as booleans; in a field
        whose choices include on/off they mean the words (a True where only "off" exists then fails as 'on')."""
        if not isinstance(data, dict):
            return data
        return {key: on_off_from_yaml(value) if key in cls.model_fields
                and _on_off_choices(cls.model_fields[key].annotation) else value for key, value in data.items()}


class ModelSection(_Section):
    arch: str = Field("edgeface_xxs", description="zoo variant: " + ", ".join(ZOO) + "; or auto (detect from the checkpoint)")
    checkpoint: Path | None = Field(None, description="pretrained backbone to fine-tune (--edgeface); none = random init")
    use_pos_emb: list[bool] = Field(
        default_factory=lambda: list(DEFAULT_POS_EMB),
        description="per stage: positional encoding in the XCA block (published layout: [false, true, false, false])",
    )
    embedding_dim: int = Field(512, gt=0, description="embedding size of the backbone's head")
    allow_missing: bool = Field(False, description="train even when checkpoint keys are missing (they are initialised and listed)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in ZOO and value != "auto":
            raise ValueError(f"unknown arch {value!r}; choose one of {', '.join(ZOO)} or auto")
        return value

    @field_validator("use_pos_emb")
    @classmethod
    def _four_stages(cls, value: list[bool]) -> list[bool]:
        if len(value) != 4:
            raise ValueError(f"needs 4 booleans, one per stage, not {len(value)}")
        return value


class DataSection(_Section):
    train_dir: Path | None = Field(None, description="training images, one folder per identity")
    train_rec: Path | None = Field(
        None, description="training images as an insightface RecordIO .rec (with its .idx beside it), instead of train_dir")
    val_dir: Path | None = Field(None, description="validation images, one folder per identity")
    rehearsal_dir: Path | None = Field(
        None, description="public identities (one folder each) mixed into every training batch against forgetting; "
                          "their classes are appended after yours as 'rehearsal/<name>' and never enter val")
    rehearsal_rec: Path | None = Field(
        None, description="public identities as an insightface RecordIO .rec (MS1MV2, ...), instead of rehearsal_dir")
    rehearsal_share: float = Field(
        0.25, gt=0.0, lt=1.0, description="with rehearsal_dir/rehearsal_rec: the share of each batch drawn from the "
                                          "public identities (an epoch is still one pass over your data)")
    rehearsal_target: Literal["classes", "teacher"] = Field(
        "classes", description="with rehearsal_dir/rehearsal_rec: what keeps the public identities known: classes = "
                               "their own classes in the head ('rehearsal/<name>'); teacher = no class, kept close "
                               "to the frozen loaded model by distillation (needs distill.weight > 0)")
    image_size: int = Field(112, ge=32, le=1024, description="square input size in pixels (EdgeFace: 112); a multiple of 16")
    batch_size: int = Field(64, gt=0, le=16384, description="images per batch")
    workers: int = Field(
        2, ge=0, le=128, description="processes decoding files when the cache is off (0 = in the main process)"
    )
    hflip: bool = Field(True, description="random horizontal flip while training")
    color_jitter: float = Field(0.0, ge=0.0, le=1.0, description="random brightness/contrast strength while training (0 = off)")
    non_square: Literal["center_crop", "stretch"] = Field(
        "center_crop", description="non-square images: center_crop keeps face proportions, stretch squashes them to a square"
    )
    align: Literal["off", "best", "largest", "central"] = Field(
        "off", description="raw photos: detect faces (MTCNN) and align the best-scoring, largest or most central one "
                           "to 112x112 as the official EdgeFace pipeline does (off = the images are aligned crops)")
    # The official MTCNN settings (alignment/detector.py): other values make other crops, so they join the recipe.
    min_face_size: float = Field(20.0, ge=12.0, le=4096.0, description="with align: the smallest face looked for, "
                                 "in pixels (smaller finds smaller faces, slower)")
    detection_threshold: float = Field(0.9, gt=0.0, lt=1.0, description="with align: the score MTCNN's final stage "
                                       "needs to call a box a face (lower finds more faces, and more non-faces)")
    cache: Literal["auto", "on", "off"] = Field(
        "auto", description="decoded-image cache: decode and resize each file once (auto = on unless the disk is too full)"
    )
    cache_dir: Path | None = Field(None, description="where decoded-image caches live (default ~/.cache/edgeface)")
    holdout_dir: Path | None = Field(
        None, description="identities never trained on, one folder each: measured before the first step and after "
                          "every epoch, to show what fine-tuning does to everyone else"
    )
    val_bins: list[Path] = Field(
        default_factory=list, description="insightface .bin verification sets (lfw.bin, ...) measured likewise"
    )
    min_images_per_identity: int = Field(
        2, ge=1, description="check-data: val identities with fewer images are flagged (train: a warning below 5)"
    )
    near_duplicate_distance: int = Field(
        4, ge=0, le=32, description="check-data: perceptual hashes (64 bits) this many bits apart or closer are near duplicates"
    )

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16 (EdgeFace is trained at 112)")
        return value

    @model_validator(mode="after")
    def _one_training_source(self) -> "DataSection":
        if self.train_dir is not None and self.train_rec is not None:
            raise ValueError(f"train_dir ({self.train_dir}) and train_rec ({self.train_rec}) are both set: train from "
                             "one of them (drop --train-dir or --train-rec)")
        if self.rehearsal_dir is not None and self.rehearsal_rec is not None:
            raise ValueError(f"rehearsal_dir ({self.rehearsal_dir}) and rehearsal_rec ({self.rehearsal_rec}) are both "
                             "set: rehearse one public set (drop --rehearsal-dir or --rehearsal-rec)")
        return self


class OptimSection(_Section):
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw or sgd")
    stage1_epochs: int = Field(5, ge=0, le=10000, description="epochs training the head alone, backbone frozen")
    epochs: int = Field(30, gt=0, le=10000, description="total epochs, stage 1 included")
    head_lr: float = Field(1e-4, gt=0, description="head learning rate in stage 1")
    backbone_lr: float = Field(3e-6, gt=0, description="backbone learning rate in stage 2")
    head_lr_stage2: float = Field(3e-5, gt=0, description="head learning rate in stage 2")
    weight_decay: float = Field(0.05, ge=0, description="decoupled weight decay (adamw) or L2 (sgd)")
    l2sp: float = Field(
        0.0, ge=0, description="L2-SP: alpha * ||w - w0||^2 toward the loaded backbone in stage 2, against forgetting "
                               "(0 = off)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warmup at the start of each stage (0 = off)")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="decay within each stage")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="cosine floor as a fraction of the stage's lr")
    stage1_cache: bool = Field(
        True, description="stage 1: embed each training image (and its mirror) once, then train the head on those embeddings"
    )

    @model_validator(mode="after")
    def _stage1_within_epochs(self) -> "OptimSection":
        if self.stage1_epochs > self.epochs:
            raise ValueError(f"stage1_epochs ({self.stage1_epochs}) exceeds epochs ({self.epochs}), which count stage 1 "
                             f"too: raise --epochs, or lower --stage1-epochs (e.g. --stage1-epochs {min(self.epochs, 1)})")
        return self


class ArcFaceSection(_Section):
    scale: float = Field(32.0, gt=0, description="logit scale s of the margin loss (every loss.kind)")
    margin: float = Field(0.3, ge=0, description="margin m: radians for arcface, a cosine for cosface, AdaFace's m "
                                                 "(loss.kind combined uses loss.m1/m2/m3 instead)")
    sharded: Literal["auto", "on", "off"] = Field(
        "auto", description="split the class centres across data-parallel ranks (auto = on under torchrun from 100,000 identities)"
    )

    @field_validator("margin")
    @classmethod
    def _below_half_pi(cls, value: float) -> float:
        if value >= math.pi / 2:
            raise ValueError(f"must be below pi/2 = {math.pi / 2:.4f}")
        return value


class LossSection(_Section):
    kind: Literal["arcface", "cosface", "combined", "adaface"] = Field(
        "arcface", description="margin loss, with s = arcface.scale and m = arcface.margin: arcface cos(theta + m), "
                               "cosface cos(theta) - m, combined cos(m1 theta + m2) - m3, adaface (m adapts to image "
                               "quality, read from the feature norm)")
    m1: float = Field(1.0, ge=1.0, le=4.0, description="combined: multiplicative angular margin (SphereFace; 1 = none)")
    m2: float = Field(0.0, ge=0.0, lt=math.pi / 2, description="combined: additive angular margin in radians (ArcFace)")
    m3: float = Field(0.0, ge=0.0, le=1.0, description="combined: additive cosine margin (CosFace)")
    adaface_h: float = Field(0.333, gt=0.0, le=10.0, description="adaface: how strongly the feature norm's z-score "
                                                                 "moves the margin (h)")
    adaface_t_alpha: float = Field(0.01, gt=0.0, le=1.0, description="adaface: weight of each new batch in the running "
                                                                     "mean and std of the feature norms")
    partial_fc_sample_rate: float = Field(
        1.0, gt=0.0, le=1.0, description="Partial FC: share of the negative class centres sampled each step, every "
                                         "positive kept (1 = the full classifier; 0.1-0.3 for 100,000s of identities)")


class AugmentSection(_Section):
    """The EdgeFace paper's degradations (the edgeface-paper recipe turns them on), drawn per image per epoch."""

    downscale_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of shrinking an image to "
                               "downscale_min..downscale_max pixels and back (a low-resolution camera)")
    downscale_min: int = Field(56, ge=8, le=1024, description="smallest size of a downscaled image, in pixels")
    downscale_max: int = Field(89, ge=8, le=1024, description="largest size of a downscaled image, in pixels")
    blur_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a Gaussian blur")
    blur_sigma: float = Field(1.5, gt=0.0, le=10.0, description="largest blur sigma in pixels (each blur draws 0.2 to this)")
    hsv_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of a hue, saturation and value jitter")
    hue: float = Field(0.05, ge=0.0, le=0.5, description="HSV jitter: largest hue shift, in turns of the colour circle")
    saturation: float = Field(0.3, ge=0.0, le=1.0, description="HSV jitter: largest relative saturation change")
    value: float = Field(0.3, ge=0.0, le=1.0, description="HSV jitter: largest relative brightness (value) change")
    grayscale_p: float = Field(0.0, ge=0.0, le=1.0, description="probability of turning an image grey")

    @model_validator(mode="after")
    def _sizes_in_order(self) -> "AugmentSection":
        if self.downscale_min > self.downscale_max:
            raise ValueError(f"downscale_min ({self.downscale_min}) exceeds downscale_max ({self.downscale_max})")
        return self

    def degrades(self) -> bool:
        """Whether any degradation is on (then no two epochs show an image alike)."""
        return any(p > 0 for p in (self.downscale_p, self.blur_p, self.hsv_p, self.grayscale_p))


class GuardSection(_Section):
    max_grad_norm: float = Field(1.0, gt=0, description="clip backbone and head gradients separately to this norm")
    holdout_drop: float = Field(
        0.01, ge=0, le=1, description="warn when held-out quality (TAR at eval.operating_far) falls this far below "
                                      "the pretrained model's (1 point by default)"
    )
    max_skip_fraction: float = Field(0.25, ge=0, le=1, description="stop when more than this fraction of an epoch's batches were skipped")
    patience: int = Field(5, ge=1, description="warn when val accuracy has not improved for this many stage-2 epochs")
    collapse_similarity: float = Field(0.999, gt=0, le=1, description="same-identity similarity at or above this means collapse")
    min_similarity_gap: float = Field(0.01, ge=0, description="same minus different similarity below this means collapse")
    fp16_overflow_allowance: int = Field(
        20, ge=0, description="fp16: overflow steps per epoch tolerated while the GradScaler finds its scale; more count as skipped"
    )
    fp16_min_scale: float = Field(256.0, gt=0, description="fp16: an overflow with the loss scale below this counts as skipped")


class DistillSection(_Section):
    weight: float = Field(
        0.0, ge=0, description="feature distillation from the frozen loaded backbone in stage 2: "
                               "weight * (1 - cos(student, teacher)), against forgetting (0 = off)"
    )


class EvalSection(_Section):
    threshold: float | None = Field(
        None, ge=-1, le=1,
        description="similarity threshold of verify and identify when eval recorded none for the model in use",
    )
    operating_far: float = Field(
        1e-3, gt=0, lt=1,
        description="eval stores the threshold that keeps the false-accept rate (different people accepted) at or "
                    "below this: the operating point of verify and identify",
    )
    far_targets: list[float] = Field(
        [0.01, 0.1], description="false-alarm rates at which identify --probe-dir reports the detection-and-identification rate"
    )


class RuntimeSection(_Section):
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    amp: Literal["auto", "fp16", "bf16", "off"] = Field("auto", description="auto = fp16 with GradScaler on CUDA, fp32 on CPU")
    seed: int = Field(0, description="random seed; CPU runs are repeatable")
    out: Path | None = Field(None, description="run directory (default runs/<timestamp>)")
    select_best: Literal["val", "holdout"] = Field(
        "val", description="what best.pt means: val accuracy, or held-out quality (data.holdout_dir / data.val_bins)"
    )
    compile: bool = Field(False, description="run the backbone through torch.compile (falls back to eager, with a message, if it fails)")
    collective_timeout_s: int = Field(
        600, ge=1, description="under torchrun: how long a rank waits in a collective for one that died or hangs"
    )
    rank0_timeout_s: int = Field(
        86400, ge=1, description="under torchrun: how long the other ranks wait for work rank 0 does alone (the data "
                                 "scan and cache, validation, held-out checks, writing checkpoints)"
    )


class DebugSection(_Section):
    inject_nan_at: list[int] = Field(default_factory=list, description="global steps whose loss is replaced by NaN (tests the guards)")
    inject_nan_rank: int | None = Field(None, ge=0, description="under torchrun: inject only on this rank (none = every rank)")
    crash_rank_at_step: list[int] = Field(
        default_factory=list, description="[rank, step]: that process dies abruptly at that global step (tests that the others stop)"
    )
    slow_scan_s: float = Field(
        0.0, ge=0, le=3600, description="seconds the scanning rank sleeps in its data scan (tests that the others wait "
                                        "for it beyond runtime.collective_timeout_s)"
    )


class EdgeFaceConfig(_Section):
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    arcface: ArcFaceSection = Field(default_factory=ArcFaceSection)
    loss: LossSection = Field(default_factory=LossSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    guard: GuardSection = Field(default_factory=GuardSection)
    distill: DistillSection = Field(default_factory=DistillSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    runtime: RuntimeSection = Field(default_factory=RuntimeSection)
    debug: DebugSection = Field(default_factory=DebugSection)
    troubleshoot_level: int = Field(0, ge=0, le=4, description="fallback level applied by `edgeface troubleshoot`")
    recipe: Literal[RECIPE_NAMES] = Field(  # type: ignore[valid-type]
        "none", description="a preset that fills every setting it names which no file, flag or --set gives: "
                            + "; ".join(f"{name}: {text}" for name, text in RECIPE_SUMMARIES.items()))

    @model_validator(mode="before")
    @classmethod
    def _aliases_then_recipe(cls, data: Any) -> Any:
        """The seed's ``arcface.kind`` is ``loss.kind`` now; then the recipe fills what is still unset."""
        return with_recipe(moved_aliases(data)) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _teacher_needs_distillation(self) -> "EdgeFaceConfig":
        data = self.data
        rehearsing = data.rehearsal_dir is not None or data.rehearsal_rec is not None
        if rehearsing and data.rehearsal_target == "teacher" and self.distill.weight == 0:
            raise ValueError("data.rehearsal_target is teacher (--rehearsal-target): the public identities are kept "
                             "close to the frozen loaded model by distillation, which is off (distill.weight 0); pass "
                             "--set distill.weight=10 (any weight > 0), or --rehearsal-target classes")
        return self

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------- resolving


def setting_names() -> list[str]:
    """Every dotted setting name (``optim.head_lr``, ...), for suggestions."""
    return model_setting_names(EdgeFaceConfig)


def format_validation_error(error: ValidationError, sources: dict[str, str] | None = None) -> str:
    """One line per problem, each naming the field and, when known, where its value came from."""
    return _format_problems(error, sources, setting_names())


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EdgeFaceConfig:
    """The Python API's config: defaults < the YAML file ``path`` < ``overrides`` (dotted names, as --set:
    ``{"data.train_dir": "data/train", "optim.epochs": 10}``). Unlike the CLI, no ./edgeface.yaml is read
    unless named."""
    return build_config(Path(path) if path is not None else None, overrides, [], search_default_file=False,
                        flag_names={dotted: f"overrides[{dotted!r}]" for dotted in overrides or {}})


def build_config(
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    search_default_file: bool = True,
    flag_names: dict[str, str] | None = None,
) -> EdgeFaceConfig:
    """Resolve the config: defaults < recipe < YAML file < named flags < --set overrides.

    ``flags`` maps dotted names (``model.checkpoint``) to values; None means "not given". ``flag_names`` says
    how the user spelt each (``--batch-size``), so that a bad value names what they typed.
    """
    return build_config_with_sources(config_file, flags, overrides, search_default_file, flag_names)[0]


def build_config_with_sources(
    config_file: Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    search_default_file: bool = True,
    flag_names: dict[str, str] | None = None,
) -> tuple[EdgeFaceConfig, dict[str, str]]:
    """``build_config``, and who set each setting that is not at its default (dotted name -> source: the file,
    the flag as spelt, ``--set ...``, or ``recipe NAME``)."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}  # dotted field -> who set it (later sources win)
    if config_file is None and search_default_file and Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = Path(DEFAULT_CONFIG_FILE)
    if config_file is not None:
        # A path written in a config file means the same file wherever the command runs: relative to the file.
        merged = paths_relative_to(read_yaml_file(config_file),
                                   Path(os.path.normpath(config_file.expanduser().absolute())).parent, path_fields())
        sources.update((dotted, str(config_file)) for dotted in leaf_paths(merged))
    for dotted, value in (flags or {}).items():
        if value is not None:
            merged = deep_merge(merged, nest(dotted.split("."), value))
            sources.pop(dotted, None)
            sources[dotted] = (flag_names or {}).get(dotted) or f"the setting {dotted}"
    for text in overrides or []:
        path, value = parse_set_override(text)
        merged = deep_merge(merged, nest(path, value))
        dotted = ".".join(path)
        sources.pop(dotted, None)
        sources[dotted] = f"--set {text}"
    try:
        config = EdgeFaceConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("invalid configuration:\n" + format_validation_error(exc, sources)) from None
    return config, provenance(sources, config.recipe)


def config_from_dict(data: dict[str, Any], origin: str) -> EdgeFaceConfig:
    try:
        return EdgeFaceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration in {origin}:\n" + format_validation_error(exc)) from None


def default_of(dotted: str) -> Any:
    """A field's default, for help texts: ``default_of("optim.epochs") == 30``."""
    section, name = dotted.split(".")
    return getattr(getattr(EdgeFaceConfig(), section), name)


def path_fields() -> list[tuple[str, str, bool]]:
    """(section, field, is a list) of every path setting: data, checkpoint, cache, held-out, .bin and output paths."""
    return model_path_fields(EdgeFaceConfig)


def with_absolute_paths(config: EdgeFaceConfig) -> EdgeFaceConfig:
    """Every path setting made absolute (flags and --set are relative to the current folder; a config file's
    were anchored at its folder when read): a run's config.yaml then works from any folder, --resume included."""

    def absolute(value: Any) -> Any:
        if isinstance(value, list):
            return [absolute(item) for item in value]
        return None if value is None else value.expanduser().absolute()

    updates: dict[str, dict[str, Any]] = {}
    for section, name, _ in path_fields():
        updates.setdefault(section, {})[name] = absolute(getattr(getattr(config, section), name))
    return config.model_copy(update={
        section: getattr(config, section).model_copy(update=fields) for section, fields in updates.items()
    })


def dump_yaml(config: EdgeFaceConfig) -> str:
    """The config as YAML, its paths absolute: a config file's relative paths are read relative to the file,
    so a file written with CWD-relative ones (troubleshoot's config.level<N>.yaml in a run folder) would name
    other files when read back."""
    return yaml.safe_dump(with_absolute_paths(config).to_yaml_dict(), sort_keys=False)


def yaml_with_sources(config: EdgeFaceConfig, sources: dict[str, str]) -> str:
    """``dump_yaml``, each setting that is not at its default followed by a comment saying who set it."""
    return annotated_yaml(with_absolute_paths(config).to_yaml_dict(), sources)


def commented_default_yaml() -> str:
    """The default config as YAML with each field's meaning as a comment above it."""
    return commented_yaml(EdgeFaceConfig(), [
        "# edgeface configuration. Precedence: defaults < this file < flags < --set section.field=value", ""])
