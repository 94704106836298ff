"""Held-out quality in one number and in words (torch-free: the CLI renders it before anything heavy)."""

from __future__ import annotations

from typing import Any


def held_out_score(row: dict[str, Any]) -> float | None:
    """What "better for everyone else" means in one number: held-out TAR at the operating FAR, else its AUC,
    else the mean .bin accuracy."""
    if row.get("holdout_tar_at_far") is not None:
        return float(row["holdout_tar_at_far"])
    if row.get("holdout_auc") is not None:
        return float(row["holdout_auc"])
    accuracies = [value for key, value in row.items() if key.startswith("bin_") and value is not None]
    return sum(accuracies) / len(accuracies) if accuracies else None


def describe_generality(row: dict[str, Any]) -> str:
    """``held out: AUC 0.951, TAR@FAR 0.001 61.2% | lfw 97.10%`` for a row."""
    parts = []
    if row.get("holdout_auc") is not None:
        tar = row.get("holdout_tar_at_far")
        parts.append(f"held out: AUC {row['holdout_auc']:.4f}, TAR@FAR {row.get('holdout_far', 0.001):g} "
                     + ("n/a" if tar is None else f"{tar:.2%}"))
    parts += [f"{key[4:-4]} {value:.2%}" for key, value in row.items()
              if key.startswith("bin_") and key.endswith("_acc") and value is not None]
    return " | ".join(parts)
