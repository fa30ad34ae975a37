"""Numerical edge cases of the whole CromSS loss path (issue 7), on top of the unit tests of
selection / smoothing / losses: all pixels ignored, a class absent, confidences of exactly 0, saturated
and low-precision (fp16 / bf16) logits. Selection weights, soft targets, losses and gradients must stay
finite; where a value is known by hand it is checked.
"""

from __future__ import annotations

import math

import pytest
import torch

from cromss.losses import consistency_loss, segmentation_loss
from cromss.selection import entity_confidence, label_confidence, selection_weights
from cromss.smoothing import smooth_labels

IGN = 255
C = 4


def _pipeline(
    logits: dict[str, torch.Tensor],
    labels_all: torch.Tensor,
    season: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 1.0,
    dice: str = "paper",
):
    """Eq. (1): selection (8-12), smoothing (13-15), CE + Dice (6) and KL (7) for two modalities."""
    labels = labels_all[torch.arange(labels_all.shape[0]), season]
    probs = {m: x.float().softmax(dim=1) for m, x in logits.items()}
    weights = selection_weights(probs, labels, alpha, gamma, C, IGN)
    targets = smooth_labels(labels_all, season, C, beta=0.05, mu=0.15, sigma=1.0, ignore_index=IGN)
    loss = segmentation_loss(logits["s1"], targets, weights["s1"]["w_l"], dice=dice)
    loss = loss + segmentation_loss(logits["s2"], targets, weights["s2"]["w_l"], dice=dice)
    loss = loss + consistency_loss(logits["s1"], probs["s2"], weights["s2"]["w_e"])
    loss = loss + consistency_loss(logits["s2"], probs["s1"], weights["s1"]["w_e"])
    return loss, weights, targets


def _scenario(name: str, generator: torch.Generator):
    """(logits s1, logits s2, labels of all seasons [B, T, H, W]) of one edge case, float32."""
    shape = (2, C, 6, 6)
    s1 = torch.randn(shape, generator=generator)
    s2 = torch.randn(shape, generator=generator)
    labels = torch.randint(0, C, (2, 4, 6, 6), generator=generator)
    if name == "all_ignored":
        labels.fill_(IGN)
    elif name == "class_absent":
        labels[labels == 3] = 1  # class 3 nowhere in the batch
        labels[:, :, 0] = IGN
    elif name == "zero_confidence":
        # both modalities put all mass on class (label + 1) % C: label confidence exactly 0 after softmax
        wrong = (labels[:, 0] + 1) % C
        s1 = torch.nn.functional.one_hot(wrong, C).permute(0, 3, 1, 2).float() * 200.0 - 100.0
        s2 = s1.clone()
    elif name == "one_hot_confident":
        right = labels[:, 0]
        s1 = torch.nn.functional.one_hot(right, C).permute(0, 3, 1, 2).float() * 200.0 - 100.0
        s2 = s1.clone()
    elif name == "saturated":
        s1 = s1 * 1e4
        s2 = (s2 * 3e4).clamp(-6e4, 6e4)  # up to the fp16 maximum (65504), not beyond
    elif name == "single_pixel_labelled":
        labels.fill_(IGN)
        labels[1, :, 3, 4] = 2
    return s1, s2, labels


SCENARIOS = [
    "all_ignored",
    "class_absent",
    "zero_confidence",
    "one_hot_confident",
    "saturated",
    "single_pixel_labelled",
]


@pytest.mark.parametrize("dice", ["paper", "per_class"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_loss_path_is_finite(scenario, dtype, dice):
    generator = torch.Generator().manual_seed(7)
    s1, s2, labels_all = _scenario(scenario, generator)
    s1 = s1.to(dtype).requires_grad_()
    s2 = s2.to(dtype).requires_grad_()
    season = torch.tensor([0, 2])
    loss, weights, targets = _pipeline({"s1": s1, "s2": s2}, labels_all, season, dice=dice)
    assert torch.isfinite(loss), f"{scenario}/{dtype}: loss {loss}"
    for masks in weights.values():
        for key, value in masks.items():
            assert torch.isfinite(value).all(), f"{key} not finite"
            assert value.min() >= 0 and value.max() <= 1 + 1e-6, key
    assert torch.isfinite(targets).all()
    loss.backward()
    for x in (s1, s2):
        assert x.grad is not None and torch.isfinite(x.grad.float()).all()
    labels = labels_all[torch.arange(2), season]
    if scenario == "all_ignored":
        assert loss.item() == 0.0
        assert all(float(x.grad.float().abs().sum()) == 0.0 for x in (s1, s2))
        assert float(targets.abs().sum()) == 0.0
    if scenario == "single_pixel_labelled":
        # one labelled pixel: its own class threshold -> weight 1; all others 0
        expected = torch.zeros(2, 6, 6)
        expected[1, 3, 4] = 1.0
        assert torch.equal(weights["s1"]["w_l"], expected)
    assert (weights["s1"]["w_l"][labels == IGN] == 0).all()


def test_zero_confidence_weights_and_loss_by_hand():
    """Two classes, every prediction certain and wrong: f_l = 0 -> threshold 0 -> w_l = 1 (eq. 11 note).

    With logits (+60, -60) and label 1: q_1 = e^-120 underflows to 0 in float32 (f_l = 0 exactly) while
    log_softmax stays finite: log q_1 = -120 - log(1 + e^-120), so CE = 120; Dice (eq. 6) = 1 - 2*0/(1 + 1) = 1 on the unsmoothed one-hot target.
    """
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 60.0
    logits[:, 1] = -60.0
    labels = torch.ones(1, 2, 2, dtype=torch.long)
    probs = logits.softmax(1)
    assert torch.equal(label_confidence(probs, labels, IGN), torch.zeros(1, 2, 2))
    weights = selection_weights({"a": probs}, labels, 0.5, 1.0, 2, IGN)["a"]
    assert torch.equal(weights["w_l"], torch.ones(1, 2, 2))
    # entropy of an (almost) one-hot prediction ~ 0: entity confidence 1 within 1e-6
    assert torch.allclose(entity_confidence(probs), torch.ones(1, 2, 2), atol=1e-6)
    one_hot = torch.nn.functional.one_hot(labels, 2).permute(0, 3, 1, 2).float()
    loss = segmentation_loss(logits, one_hot, weights["w_l"], dice="none")
    assert loss.item() == pytest.approx(120.0 + math.log1p(math.exp(-120.0)), rel=1e-6)
    dice_only = segmentation_loss(logits, one_hot, weights["w_l"], dice="paper") - loss
    assert dice_only.item() == pytest.approx(1.0, abs=1e-6)


def test_fp16_overflowed_logits_give_nan_which_the_trainer_skips():
    """fp16 logits that overflowed to inf make the loss NaN: documented, it is the case the training
    module's non-finite-step guard handles (tests/test_reliability_training.py)."""
    logits = torch.zeros(1, 3, 2, 2, dtype=torch.float16)
    logits[0, 0, 0, 0] = float("inf")
    logits[0, 1, 0, 0] = float("inf")
    target = (
        torch.nn.functional.one_hot(torch.zeros(1, 2, 2, dtype=torch.long), 3).permute(0, 3, 1, 2).float()
    )
    loss = segmentation_loss(logits, target, torch.ones(1, 2, 2))
    assert not torch.isfinite(loss)


def test_smoothing_of_an_all_ignored_stack_is_all_zero():
    labels = torch.full((1, 4, 5, 5), IGN)
    out = smooth_labels(labels, torch.tensor([1]), C, beta=0.05, mu=0.15, sigma=3.0, ignore_index=IGN)
    assert torch.equal(out, torch.zeros(1, C, 5, 5))
    # one labelled pixel in another season only: the fed season is all-ignored, still zero rows
    labels[0, 2, 2, 2] = 1
    out = smooth_labels(labels, torch.tensor([1]), C, beta=0.05, mu=0.15, sigma=3.0, ignore_index=IGN)
    assert torch.equal(out, torch.zeros(1, C, 5, 5))
    # fed season labelled at that pixel: a distribution summing to 1 there
    out = smooth_labels(labels, torch.tensor([2]), C, beta=0.05, mu=0.15, sigma=3.0, ignore_index=IGN)
    assert out[0, :, 2, 2].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(out).all()
