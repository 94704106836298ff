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


def _rehearsal_step() -> tuple[Any, Any, Any]:
    import torch
    from torch import nn

    from edgeface_cli.model.heads import MarginHead
    from edgeface_cli.model.runtime import BackboneForward
    from edgeface_cli.training.anchor import Anchor
    from edgeface_cli.training.trainer import TrainStep

    torch.manual_seed(0)
    backbone = nn.Linear(6, 8)
    head = MarginHead(4, 8, scale=16.0, margin=0.2)
    anchor = Anchor(backbone, l2sp=0.0, distill=1.0)
    with torch.no_grad():
        backbone.weight.add_(0.3 * torch.randn_like(backbone.weight))  # the student drifts from its teacher
    step = TrainStep(backbone, head, BackboneForward(backbone, False, lambda text: None), anchor, unclassified=True)
    return step, head, anchor


def test_train_step_classifies_only_labelled_samples_and_anchors_the_whole_batch() -> None:
    """Label -1 (rehearsal kept close to the teacher): the head sees only labels >= 0, the distillation all."""
    import torch

    step, head, anchor = _rehearsal_step()
    inputs = torch.randn(6, 6)
    labels = torch.tensor([0, -1, 2, -1, 3, 1])
    loss, correct = step(labels, inputs, None, True)
    embeddings = step.backbone(inputs)
    keep = labels >= 0
    head_loss, head_correct = head.loss_and_correct(embeddings[keep], labels[keep])
    penalty = anchor.penalty(step.backbone, inputs, embeddings)
    assert penalty.item() > 0.01
    torch.testing.assert_close(loss, head_loss + penalty)
    assert correct.tolist() == head_correct.tolist() and len(correct) == 4
    # Leaving the unlabelled samples in would change the classification loss: the mask is what made it equal.
    assert not torch.isclose(head.loss_and_correct(embeddings, labels.clamp(min=0))[0] + penalty, loss)

    # A batch of rehearsal samples only: the head is skipped (a zero gradient), the penalty alone trains.
    none = torch.full((6,), -1)
    loss, correct = step(none, inputs, None, True)
    torch.testing.assert_close(loss, penalty)
    assert len(correct) == 0
    loss.backward()
    assert head.weight.grad is not None and not head.weight.grad.any()
    assert step.backbone.weight.grad is not None and step.backbone.weight.grad.abs().sum() > 0

    # Stage 1 (frozen embeddings, no anchor): still a loss backward can run through.
    head.weight.grad = None
    loss, _ = step(none, None, embeddings.detach(), False)
    assert loss.item() == 0.0
    loss.backward()
    assert head.weight.grad is not None and not head.weight.grad.any()
