"""A checkpoint against an architecture: which keys differ, why (another variant, other positional
encodings, a wrapper), how to repair it, and loading the backbone it holds.

The files themselves are read by ``checkpoint_io`` (safely: no pickle code ever runs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..zoo import KEY_PREFIX, ZOO
from .backbones import EdgeFace, key_shapes
from .checkpoint_io import LoadedCheckpoint, read_checkpoint

# ------------------------------------------------------------------ comparing


@dataclass
class ShapeMismatch:
    key: str
    checkpoint_shape: tuple[int, ...]
    model_shape: tuple[int, ...]


@dataclass
class KeyReport:
    matched: list[str]
    missing: list[str]  # in the architecture, not in the checkpoint
    unexpected: list[str]  # in the checkpoint, not in the architecture
    mismatched: list[ShapeMismatch]

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def differences(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)


def compare_keys(checkpoint_shapes: Mapping[str, tuple[int, ...]], model_shapes: Mapping[str, tuple[int, ...]]) -> KeyReport:
    matched, missing, mismatched = [], [], []
    for key, shape in model_shapes.items():
        if key not in checkpoint_shapes:
            missing.append(key)
        elif tuple(checkpoint_shapes[key]) != tuple(shape):
            mismatched.append(ShapeMismatch(key, tuple(checkpoint_shapes[key]), tuple(shape)))
        else:
            matched.append(key)
    unexpected = [key for key in checkpoint_shapes if key not in model_shapes]
    return KeyReport(matched, missing, unexpected, mismatched)


def shapes_of(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def pos_emb_layout(keys: list[str] | Mapping[str, Any]) -> tuple[bool, bool, bool, bool]:
    """Which stages hold positional encodings, read off the key names."""
    layout = [False] * 4
    for key in keys:
        match = re.match(rf"{re.escape(KEY_PREFIX)}stages\.(\d)\..*\.pos_embd\.", key)
        if match and int(match.group(1)) < 4:
            layout[int(match.group(1))] = True
    return (layout[0], layout[1], layout[2], layout[3])


def embedding_dim_of(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for key in ("model.head.fc.weight", "model.head.fc.linear2.weight"):
        if key in shapes:
            return int(shapes[key][0])
    return None


@dataclass
class ArchMatch:
    arch: str
    use_pos_emb: tuple[bool, ...]
    embedding_dim: int
    differences: int

    @property
    def exact(self) -> bool:
        return self.differences == 0


def detect_arch(state: Mapping[str, torch.Tensor]) -> ArchMatch:
    """The zoo variant (with pos-emb layout and embedding size) closest to the checkpoint."""
    shapes = shapes_of(state)
    layout = pos_emb_layout(list(shapes))
    embedding_dim = embedding_dim_of(shapes) or 512
    candidates = []
    for arch in ZOO:
        report = compare_keys(shapes, key_shapes(arch, layout, embedding_dim))
        candidates.append(ArchMatch(arch, layout, embedding_dim, report.differences))
    return min(candidates, key=lambda match: match.differences)


def _stage_list(stages: list[int]) -> str:
    return ", ".join(str(stage) for stage in sorted(set(stages)))


def _pos_emb_stages(keys: list[str]) -> list[int]:
    return [int(re.search(r"stages\.(\d)\.", key).group(1)) for key in keys if re.search(r"stages\.(\d)\.", key)]  # type: ignore[union-attr]


def _yaml_bools(flags: tuple[bool, ...] | list[bool]) -> str:
    return "[" + ",".join("true" if flag else "false" for flag in flags) + "]"


def diagnose(
    report: KeyReport,
    checkpoint_state: Mapping[str, torch.Tensor],
    arch: str,
    use_pos_emb: tuple[bool, ...] | list[bool],
) -> list[str]:
    """Plain-language reasons for the difference, each with the setting that fixes it."""
    if report.clean:
        return [f"the checkpoint matches {arch} exactly ({len(report.matched)} tensors)"]
    notes: list[str] = []
    differing = report.missing + report.unexpected + [item.key for item in report.mismatched]
    checkpoint_layout = pos_emb_layout(list(checkpoint_state))
    if all(".pos_embd." in key for key in differing):
        if report.missing:
            notes.append(
                f"{len(report.missing)} missing keys are the positional encodings (pos_embd) of the XCA blocks "
                f"in stage(s) {_stage_list(_pos_emb_stages(report.missing))}: the architecture was built with "
                f"use_pos_emb={_yaml_bools(use_pos_emb)}, but the checkpoint was trained without them there"
            )
        if report.unexpected:
            notes.append(
                f"{len(report.unexpected)} unexpected keys are positional encodings the checkpoint has in stage(s) "
                f"{_stage_list(_pos_emb_stages(report.unexpected))} that the architecture lacks"
            )
        notes.append(
            f"set model.use_pos_emb: {_yaml_bools(checkpoint_layout)} "
            f"(--set 'model.use_pos_emb={_yaml_bools(checkpoint_layout)}') to load this checkpoint exactly; "
            "--write-fixed initialises the missing encodings instead (they then start untrained)"
        )
        return notes
    detected = detect_arch(checkpoint_state)
    if detected.exact and detected.arch != arch:
        notes.append(
            f"this is an {detected.arch} checkpoint, not {arch}: use --arch {detected.arch} (or --arch auto)"
        )
        return notes
    head_keys = [item for item in report.mismatched if item.key.startswith("model.head.fc")]
    if head_keys and len(head_keys) == report.differences:
        notes.append(
            f"only the embedding layer differs: the checkpoint embeds to {head_keys[0].checkpoint_shape[0]} "
            f"dimensions, the architecture to {head_keys[0].model_shape[0]}; set model.embedding_dim accordingly"
        )
        return notes
    if detected.exact:  # same arch, other layout
        notes.append(
            f"the checkpoint is {detected.arch} with use_pos_emb={_yaml_bools(detected.use_pos_emb)}; "
            f"set --set 'model.use_pos_emb={_yaml_bools(detected.use_pos_emb)}'"
        )
        return notes
    notes.append(
        f"{report.differences} tensors differ from {arch}; the closest zoo variant is {detected.arch} with "
        f"{detected.differences} differences, so this is probably not an EdgeFace backbone of a known layout"
    )
    if report.missing:
        notes.append("missing keys would start from random values: never train on them silently")
    return notes


def group_by_module(keys: list[str]) -> dict[str, list[str]]:
    """``model.stages.2.blocks.5.pos_embd.token_projection.weight`` -> module ``...token_projection``: [weight]."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    return groups


# ------------------------------------------------------------------ loading into a model


def initialise_tensor(key: str, template: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The seed's Fix 1, made explicit: xavier for matrices, zeros for biases, ones for norm weights."""
    leaf = key.rpartition(".")[2]
    tensor = torch.empty_like(template, device="cpu")
    if not template.is_floating_point():
        return template.detach().clone().cpu(), "kept architecture default"
    if leaf == "weight" and template.dim() >= 2:
        nn.init.xavier_uniform_(tensor)
        return tensor, "xavier_uniform"
    if leaf == "bias":
        return tensor.zero_(), "zeros"
    if leaf == "weight":
        return tensor.fill_(1.0), "ones"
    return template.detach().clone().cpu(), "kept architecture default"


@dataclass
class FixResult:
    state_dict: dict[str, torch.Tensor]
    initialised: list[tuple[str, str]]  # (key, method)
    dropped: list[str]


def fix_state_dict(checkpoint_state: Mapping[str, torch.Tensor], model: nn.Module) -> FixResult:
    """A state_dict in the architecture's layout: unexpected keys dropped, missing/mismatched ones initialised."""
    model_state = model.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    initialised: list[tuple[str, str]] = []
    for key, template in model_state.items():
        value = checkpoint_state.get(key)
        if value is not None and tuple(value.shape) == tuple(template.shape):
            fixed[key] = value.detach().to(dtype=template.dtype)
        else:
            fixed[key], method = initialise_tensor(key, template)
            initialised.append((key, method))
    dropped = [key for key in checkpoint_state if key not in model_state]
    return FixResult(fixed, initialised, dropped)


class CheckpointMismatch(CheckpointError):
    """The checkpoint does not fit the architecture and the user did not allow initialising the gap."""

    def __init__(self, message: str, report: KeyReport, diagnosis: list[str]) -> None:
        super().__init__(message)
        self.report = report
        self.diagnosis = diagnosis


@dataclass
class BackboneLoad:
    backbone: EdgeFace
    checkpoint: LoadedCheckpoint | None
    report: KeyReport | None
    diagnosis: list[str]
    initialised: list[tuple[str, str]]


def resolve_arch(
    arch: str, checkpoint: LoadedCheckpoint | None, use_pos_emb: tuple[bool, ...] | list[bool], embedding_dim: int
) -> tuple[str, tuple[bool, ...], int]:
    """``auto`` picks the zoo variant, pos-emb layout and embedding size that match the checkpoint."""
    if arch != "auto":
        return arch, tuple(use_pos_emb), embedding_dim
    if checkpoint is None:
        raise CheckpointError("--arch auto needs a checkpoint to detect the variant from; pass --edgeface PATH")
    detected = detect_arch(checkpoint.state_dict)
    return detected.arch, tuple(detected.use_pos_emb), detected.embedding_dim


@dataclass
class Inspection:
    checkpoint: LoadedCheckpoint
    model: EdgeFace  # freshly built, not loaded
    report: KeyReport
    diagnosis: list[str]


def inspect_checkpoint(
    checkpoint_path: Path, arch: str, use_pos_emb: tuple[bool, ...] | list[bool], embedding_dim: int,
    trust_code: bool = False,
) -> Inspection:
    """Read a checkpoint, build the architecture (``arch='auto'``: the matching variant) and diff them.
    ``trust_code``: a TorchScript archive (a program) may be loaded."""
    checkpoint = read_checkpoint(checkpoint_path, trust_code)
    arch, layout, embedding_dim = resolve_arch(arch, checkpoint, use_pos_emb, embedding_dim)
    model = EdgeFace(arch, layout, embedding_dim)
    report = compare_keys(shapes_of(checkpoint.state_dict), shapes_of(model.state_dict()))
    return Inspection(checkpoint, model, report, diagnose(report, checkpoint.state_dict, arch, layout))


def load_backbone(
    checkpoint_path: Path | None,
    arch: str,
    use_pos_emb: tuple[bool, ...] | list[bool],
    embedding_dim: int,
    allow_missing: bool,
    trust_code: bool = False,
) -> BackboneLoad:
    """Build the backbone and load the checkpoint through the same reader and key report as inspect-keys.

    Missing keys are never ignored silently: without ``allow_missing`` any difference raises
    CheckpointMismatch carrying the diagnosis; with it they are initialised and listed.
    """
    if checkpoint_path is None:
        _, layout, embedding_dim = resolve_arch(arch, None, use_pos_emb, embedding_dim)
        return BackboneLoad(EdgeFace(arch, layout, embedding_dim), None, None, [], [])
    inspection = inspect_checkpoint(checkpoint_path, arch, use_pos_emb, embedding_dim, trust_code)
    report, diagnosis, backbone = inspection.report, inspection.diagnosis, inspection.model
    if not report.clean and not allow_missing:
        # allow_missing was made for the seed's case: a few positional-encoding tensors missing. Offered for
        # anything else (another variant: 185 keys) it would train an almost random model.
        differing = report.missing + report.unexpected + [mismatch.key for mismatch in report.mismatched]
        positional_gaps = all(".pos_embd." in key for key in differing)
        offer = ". To train anyway with the gaps initialised, set model.allow_missing: true" if positional_gaps else ""
        raise CheckpointMismatch(
            f"{checkpoint_path} does not fit {backbone.arch}: {len(report.missing)} missing, {len(report.unexpected)} "
            f"unexpected, {len(report.mismatched)} mismatched keys. " + "; ".join(diagnosis) + offer,
            report,
            diagnosis,
        )
    fix = fix_state_dict(inspection.checkpoint.state_dict, backbone)
    backbone.load_state_dict(fix.state_dict, strict=True)
    return BackboneLoad(backbone, inspection.checkpoint, report, diagnosis, fix.initialised)
