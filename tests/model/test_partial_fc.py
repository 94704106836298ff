"""Partial FC: at sample rate 1 it is the full classifier; below, its sampling keeps every positive, draws the
negatives uniformly, and the optimizer moves only the rows it sampled.

"Unbiased" here means what Partial FC rests on: every negative centre is equally likely to be drawn, so the
sampled negatives' part of the softmax denominator, divided by the inclusion probability, is an unbiased
estimate of the full classifier's (the loss itself, a softmax over fewer classes, is a lower bound of the
full one, and arcface_torch makes no correction for that either).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from edgeface_cli.model.heads import MarginHead
from edgeface_cli.model.losses import build_loss
from edgeface_cli.model.partial_fc import PartialFCHead, sample_rows

CLASSES, DIM, BATCH = 200, 16, 8


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(CLASSES, DIM, generator=generator)
    embeddings = torch.randn(BATCH, DIM, generator=generator)
    labels = torch.randint(CLASSES, (BATCH,), generator=generator)
    return weight, embeddings, labels


def adamw(parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=0.05, weight_decay=0.05)


def test_at_sample_rate_1_loss_gradients_and_adamw_steps_equal_the_full_fc() -> None:
    weight, _, _ = problem()
    full = MarginHead(CLASSES, DIM, weight=weight.clone(), loss=build_loss("cosface", 64.0, 0.4))
    partial = PartialFCHead(CLASSES, DIM, build_loss("cosface", 64.0, 0.4), 1.0, BATCH, weight=weight.clone())
    full_optimizer, partial_optimizer = adamw([full.weight]), adamw(list(partial.parameters()))
    partial.bind_optimizer(partial_optimizer)
    for step in range(3):
        _, embeddings, labels = problem(step + 1)
        embeddings_full, embeddings_partial = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
        loss_full, correct_full = full.loss_and_correct(embeddings_full, labels)
        loss_partial, correct_partial = partial.loss_and_correct(embeddings_partial, labels)
        for optimizer, loss in ((full_optimizer, loss_full), (partial_optimizer, loss_partial)):
            optimizer.zero_grad()
            loss.backward()
        torch.testing.assert_close(loss_partial, loss_full)
        torch.testing.assert_close(partial.active.grad, full.weight.grad)  # every row sampled, in order
        torch.testing.assert_close(embeddings_partial.grad, embeddings_full.grad)
        assert torch.equal(correct_partial, correct_full)
        full_optimizer.step()
        partial_optimizer.step()
    torch.testing.assert_close(partial.full_state_dict()["weight"], full.weight.detach())


def test_the_sample_always_holds_every_positive_and_draws_negatives_uniformly() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([3, 3, 17, 150, 199, 0, 42, 42])
    positives = set(labels.tolist())
    count = int(0.1 * CLASSES)
    draws = 4000
    seen = torch.zeros(CLASSES)
    for _ in range(draws):
        index = sample_rows(labels, CLASSES, count)
        assert len(index) == count and torch.equal(index, index.unique())  # sorted, no repeats
        assert positives <= set(index.tolist())
        seen[index] += 1
    negatives = torch.tensor([c for c in range(CLASSES) if c not in positives])
    q = (count - len(positives)) / (CLASSES - len(positives))
    frequency = seen[negatives] / draws
    # binomial: each negative's frequency within 5 standard deviations of q, and their mean within 1e-3
    assert (frequency - q).abs().max() < 5 * math.sqrt(q * (1 - q) / draws)
    assert abs(frequency.mean().item() - q) < 1e-3
    # When the positives outnumber the sample size, the sample is the positives.
    assert torch.equal(sample_rows(labels, CLASSES, 2), torch.tensor([0, 3, 17, 42, 150, 199]))


def test_the_rate_corrected_sampled_denominator_is_unbiased_for_the_full_one() -> None:
    torch.manual_seed(1)
    weight, embeddings, labels = problem()
    scale = 8.0
    logits = scale * F.normalize(embeddings[:1]) @ F.normalize(weight).t()
    positive = int(labels[0])
    full_negatives = logits[0].exp().sum() - logits[0, positive].exp()
    count = 40  # sample rate 0.2
    q = (count - 1) / (CLASSES - 1)
    estimates = []
    for _ in range(3000):
        index = sample_rows(labels[:1], CLASSES, count)
        negatives = index[index != positive]
        estimates.append(logits[0, negatives].exp().sum() / q)
    estimates = torch.stack(estimates)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - full_negatives) < 4 * standard_error
    assert standard_error < 0.02 * full_negatives  # the check has the power to see a bias of a few percent


def test_adamw_moves_only_the_sampled_rows_and_their_moments() -> None:
    torch.manual_seed(2)
    weight, embeddings, labels = problem()
    head = PartialFCHead(CLASSES, DIM, build_loss("arcface", 32.0, 0.3), 0.1, BATCH, weight=weight.clone())
    optimizer = adamw(list(head.parameters()))
    head.bind_optimizer(optimizer)
    steps = []
    for step in range(2):
        before = head.full_state_dict()
        loss, _ = head.loss_and_correct(embeddings, labels if step == 0 else (labels + 1) % CLASSES)
        index = head.index.clone()
        # The sampled rows, as a plain AdamW on a parameter holding exactly them would step them.
        reference = torch.nn.Parameter(before["weight"][index].clone())
        reference_optimizer = adamw([reference])
        if step:
            reference_optimizer.state[reference] = {"step": torch.tensor(float(step)),
                                                    "exp_avg": before["state_exp_avg"][index].clone(),
                                                    "exp_avg_sq": before["state_exp_avg_sq"][index].clone()}
        optimizer.zero_grad()
        loss.backward()
        reference.grad = head.active.grad.clone()
        optimizer.step()
        reference_optimizer.step()
        after = head.full_state_dict()
        untouched = torch.ones(CLASSES, dtype=torch.bool)
        untouched[index] = False
        for key in ("weight", "state_exp_avg", "state_exp_avg_sq"):
            if key in before:
                assert torch.equal(after[key][untouched], before[key][untouched]), key
        torch.testing.assert_close(after["weight"][index], reference.detach())
        torch.testing.assert_close(after["state_exp_avg"][index], reference_optimizer.state[reference]["exp_avg"])
        steps.append(index)
    assert not torch.equal(steps[0], steps[1])


def test_a_checkpoint_of_the_head_and_optimizer_resumes_exactly() -> None:
    weight, embeddings, labels = problem()

    def fresh() -> tuple[PartialFCHead, torch.optim.Optimizer]:
        head = PartialFCHead(CLASSES, DIM, build_loss("adaface", 32.0, 0.4), 0.2, BATCH, weight=weight.clone())
        optimizer = adamw(list(head.parameters()))
        head.bind_optimizer(optimizer)
        return head, optimizer

    def step(head: PartialFCHead, optimizer: torch.optim.Optimizer) -> None:
        loss, _ = head.loss_and_correct(embeddings, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    torch.manual_seed(3)
    head, optimizer = fresh()
    step(head, optimizer)
    # as a checkpoint holds them: copies, not views of the live tensors
    saved_head, saved_optimizer = copy.deepcopy(head.full_state_dict()), copy.deepcopy(optimizer.state_dict())
    rng = torch.get_rng_state()
    step(head, optimizer)
    resumed, resumed_optimizer = fresh()
    resumed.load_full_state_dict(saved_head)
    resumed_optimizer.load_state_dict(saved_optimizer)
    torch.set_rng_state(rng)
    step(resumed, resumed_optimizer)
    for key, value in head.full_state_dict().items():
        torch.testing.assert_close(resumed.full_state_dict()[key], value, msg=key)
