"""The Trainer's parts alone: GuardPolicy decides stops and warnings from synthetic records, without a model."""

from __future__ import annotations

from typing import Any

from edgeface_cli.config import EdgeFaceConfig, GuardSection
from edgeface_cli.training.guard_policy import GuardPolicy
from edgeface_cli.training.outcome import GuardStop


def _epoch(**changes: Any) -> dict[str, Any]:
    record = {"epoch": 3, "stage": 2, "train_loss": 1.5, "optimizer_steps": 10, "batches": 10,
              "skipped_batches": 0, "skipped_steps": 0, "train_acc": 0.5, "val_acc": 0.5,
              "val_sim_pos": 0.6, "val_sim_neg": 0.1}
    return {**record, **changes}


def test_guard_policy_returns_the_stop_a_record_calls_for_and_none_for_a_healthy_epoch() -> None:
    policy = GuardPolicy(GuardSection())
    assert policy.stop_for(_epoch()) is None
    nan = policy.stop_for(_epoch(train_loss=float("nan"), skipped_batches=2))
    assert isinstance(nan, GuardStop) and (nan.kind, nan.epoch, nan.skipped) == ("nan_loss", 3, 2)
    assert nan.reason == "mean train loss is nan at epoch 3"
    none_taken = policy.stop_for(_epoch(optimizer_steps=0, skipped_steps=10))
    assert none_taken is not None and none_taken.kind == "skipped" and "no optimizer step" in none_taken.reason
    # 3 of 10 skipped is past the default 25%; 2 of 10 is not.
    assert policy.stop_for(_epoch(skipped_batches=2)) is None
    too_many = policy.stop_for(_epoch(skipped_batches=1, skipped_steps=2))
    assert too_many is not None and too_many.reason.startswith("3 of 10 batches skipped at epoch 3 (30% > ")


def test_guard_policy_counts_batches_over_every_rank() -> None:
    """3 skipped of 10 batches per rank on 2 ranks is 15%: no stop, where a single rank would stop."""
    record = _epoch(skipped_batches=3)
    assert GuardPolicy(GuardSection(), world_size=1).stop_for(record) is not None
    assert GuardPolicy(GuardSection(), world_size=2).stop_for(record) is None


def test_guard_policy_warning_signs_follow_the_guard_settings() -> None:
    guard = EdgeFaceConfig.model_validate({"guard": {"patience": 2}}).guard
    policy = GuardPolicy(guard)
    assert policy.warning_signs(_epoch(), [], best_epoch=3, stale_epochs=0) == []
    assert policy.warning_signs(_epoch(val_sim_pos=0.9995), [], 3, 0) == [
        "same-identity similarity is 0.9995: embeddings may have collapsed"]
    assert "do not separate identities" in policy.warning_signs(_epoch(val_sim_neg=0.595), [], 3, 0)[0]
    history = [_epoch(epoch=1, stage=1), _epoch(epoch=2)]
    assert policy.warning_signs(_epoch(epoch=4), history, best_epoch=2, stale_epochs=1) == []
    assert policy.warning_signs(_epoch(epoch=4), history, best_epoch=2, stale_epochs=2) == [
        "val accuracy has not improved for 2 epochs after stage 1: model not learning"]
    # Non-finite val embeddings say only that, whatever else the record holds; a forgetting text is appended.
    assert policy.warning_signs(_epoch(val_nonfinite=4, val_sim_pos=1.0), [], 3, 9, "forgetting")[0].startswith(
        "4 val embeddings are NaN or infinite")
    assert policy.warning_signs(_epoch(), [], 3, 0, "forgetting") == ["forgetting"]
