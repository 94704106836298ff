"""The Trainer's parts alone: GuardPolicy decides stops and warnings from synthetic records, without a model;
the training step's rehearsal mask; TrainState through the CheckpointManager; the Validator on a tiny model."""

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
    from edgeface_cli.training.learner import TrainStep

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


def _learner(config: EdgeFaceConfig, classes: int, events: list) -> Any:
    import torch

    from edgeface_cli.model.checkpoints import load_backbone
    from edgeface_cli.model.runtime import FP32
    from edgeface_cli.training.distributed import SINGLE
    from edgeface_cli.training.learner import Learner

    model = config.model
    loaded = load_backbone(None, model.arch, model.use_pos_emb, model.embedding_dim, False)
    return Learner(config, loaded, classes, torch.device("cpu"), FP32, False, SINGLE, False, events.append)


def test_train_state_round_trips_through_the_checkpoint_manager(tmp_path: Any) -> None:
    """A saved TrainState, weights and optimizer moments come back from last.pt; rows past it are dropped."""
    import torch

    from edgeface_cli.rundir import read_metrics
    from edgeface_cli.training.checkpointing import CheckpointManager
    from edgeface_cli.training.distributed import SINGLE
    from edgeface_cli.training.training_state import TrainState

    config = EdgeFaceConfig.model_validate({"model": {"arch": "edgeface_xxs"}, "optim": {"stage1_epochs": 1, "epochs": 5}})
    events: list = []
    torch.manual_seed(0)
    learner = _learner(config, 3, events)
    learner.build_optimizer(2, config)
    for parameter in [*learner.backbone.parameters(), *learner.head.parameters()]:
        parameter.grad = torch.randn_like(parameter)
    learner.optimizer.step()  # AdamW moments to carry over
    rows = [{"epoch": epoch, "stage": 1 + (epoch > 1), "train_acc": epoch / 10} for epoch in (1, 2, 3)]
    state = TrainState(epoch=3, global_step=99, stage_step=7, best_epoch=2, best_score=0.7, stale_epochs=1,
                       records=[*rows, {"event": "escalation", "epoch": 2}])
    checkpoints = CheckpointManager(tmp_path, ["a", "b", "c"], SINGLE, events.append)
    checkpoints.write_metrics([*state.records, {"epoch": 4, "stage": 2, "train_acc": 0.4}])  # killed before last.pt
    checkpoints.save(state, learner, config, is_best=True)
    assert {path.name for path in tmp_path.iterdir()} >= {"best.pt", "backbone.pt", "last.pt", "metrics.jsonl"}
    assert len(read_metrics(tmp_path)) == 5
    weights = {key: value.clone() for key, value in learner.backbone.state_dict().items()}
    centres = learner.head.weight.detach().clone()
    moments = [entry["exp_avg"].clone() for entry in learner.optimizer.state_dict()["state"].values()]

    # Everything the checkpoint holds is lost: weights zeroed, a fresh stage-1 optimizer.
    with torch.no_grad():
        for tensor in [*learner.backbone.parameters(), *learner.head.parameters()]:
            tensor.zero_()
    learner.build_optimizer(1, config)
    saved = checkpoints.last()
    assert saved is not None and saved["format"] == "edgeface-train/1" and saved["class_names"] == ["a", "b", "c"]
    restored = checkpoints.restore(saved, learner, config, steps_per_epoch=4)
    # Every counter but the schedule's position, which follows from the epochs done in stage 2 (epochs 2 and 3).
    assert restored == TrainState(3, 99, 8, 2, 0.7, 1, state.records)
    assert learner.stage == 2
    assert all(torch.equal(learner.backbone.state_dict()[key], value) for key, value in weights.items())
    assert torch.equal(learner.head.weight, centres)
    reloaded = [entry["exp_avg"] for entry in learner.optimizer.state_dict()["state"].values()]
    assert len(moments) == len(reloaded) > 0 and all(torch.equal(a, b) for a, b in zip(moments, reloaded))
    # backbone.pt is the published layout: it loads with strict=True.
    learner.backbone.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True), strict=True)
    assert events == []  # same optimizer, precision and anchor: nothing to warn about


def test_the_validator_alone_fills_the_record_and_reports_progress(sample_dataset: Any) -> None:
    """Validation on a tiny model: the record gets its val figures, progress goes out as events, and stage 1
    re-scores the frozen embeddings instead of embedding again."""
    import torch

    from edgeface_cli.data.folder import ImageSettings, scan_image_folder
    from edgeface_cli.events import ValidationProgress
    from edgeface_cli.training.distributed import SINGLE
    from edgeface_cli.training.validation import Validator

    config = EdgeFaceConfig.model_validate({"model": {"arch": "edgeface_xxs"},
                                            "data": {"image_size": 32, "workers": 0, "batch_size": 8}})
    settings = ImageSettings.from_config(config.data)
    train = scan_image_folder(sample_dataset / "train", settings=settings)
    val = scan_image_folder(sample_dataset / "val", "val", class_names=train.classes, settings=settings)
    events: list = []
    torch.manual_seed(0)
    learner = _learner(config, len(train.classes), events)
    validator = Validator.build(config, val, settings, learner, SINGLE, events.append)
    assert validator.val_images == len(val.samples) == 15
    learner.head.eval()
    learner.backbone.eval()
    first = {"epoch": 1, "stage": 1}
    validator.validate_into(first, learner.head, [])
    assert [(event.epoch, event.done, event.total) for event in events] == [(1, 1, 2), (1, 2, 2)]
    assert all(isinstance(event, ValidationProgress) for event in events)
    assert 0 <= first["val_acc"] <= 1 and 0 <= first["val_auc"] <= 1 and first["val_nonfinite"] == 0
    assert validator.frozen_val is not None
    with torch.no_grad():
        learner.head.weight.mul_(-1)  # a changed head is re-scored on the kept embeddings...
    second = {"epoch": 2, "stage": 1}
    validator.validate_into(second, learner.head, [first])
    assert second["val_auc"] == first["val_auc"]  # ...which the head does not touch
    assert second["val_acc"] != first["val_acc"] or second["val_loss"] != first["val_loss"]
    assert validator.score(second) == (second["val_acc"], "val_acc")
