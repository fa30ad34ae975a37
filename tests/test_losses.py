"""Tests of cromss.losses (eqs. 6-7) against hand-computed values and properties."""

from __future__ import annotations

import math

import pytest
import torch

from cromss.errors import ConfigError, DataError
from cromss.losses import consistency_loss, segmentation_loss


def _two_pixels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel 0: logits [0, 0] (q = [.5, .5]), class 0; pixel 1: [ln 3, 0] (q = [.75, .25]), class 1."""
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    weights = torch.tensor([[[1.0, 0.5]]], dtype=torch.float64)
    return logits, target, weights


def test_segmentation_loss_hand_values() -> None:
    logits, target, weights = _two_pixels()
    # CE = (1 * -ln .5 + .5 * -ln .25) / 1.5 = 0.924196
    ce = 0.9241962407
    assert segmentation_loss(logits, target, weights, dice="none").item() == pytest.approx(ce, abs=1e-9)
    # paper Dice: 1 - 2 (1*.5 + .5*.25) / (1*(1+1) + .5*(1+1)) = 1 - 1.25 / 3
    loss = segmentation_loss(logits, target, weights)
    assert loss.item() == pytest.approx(ce + 1 - 1.25 / 3, abs=1e-9)
    # per-class Dice: class 0: 2*.5 / 1.875; class 1: 2*.125 / 1.125
    per_class = segmentation_loss(logits, target, weights, dice="per_class")
    assert per_class.item() == pytest.approx(ce + 1 - (1 / 1.875 + 0.25 / 1.125) / 2, abs=1e-9)


def test_segmentation_loss_all_weights_zero_is_finite_with_grad() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.zeros(2, 3, 4, 4)
    loss = segmentation_loss(logits, target, torch.zeros(2, 4, 4))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_segmentation_loss_low_precision_finite_and_target_gets_no_grad() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(2, 4, 8, 8) * 30).requires_grad_()
    target = torch.softmax(torch.randn(2, 4, 8, 8), 1).requires_grad_()
    weights = torch.rand(2, 8, 8)
    reference = segmentation_loss(logits, target, weights)
    for dtype in (torch.float16, torch.bfloat16):
        value = segmentation_loss(logits.to(dtype), target.to(dtype), weights.to(dtype))
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert value.item() == pytest.approx(reference.item(), rel=0.05)
    reference.backward()
    assert torch.isfinite(logits.grad).all()
    assert target.grad is None


def test_segmentation_loss_bad_input() -> None:
    logits, target, weights = _two_pixels()
    with pytest.raises(ConfigError, match=r"dice must be one of \['paper', 'per_class', 'none'\], got 'smp'"):
        segmentation_loss(logits, target, weights, dice="smp")
    with pytest.raises(DataError, match=r"weights must have shape \[B, H, W\] = \(1, 1, 2\), got \(1, 2\)"):
        segmentation_loss(logits, target, weights[0])
    with pytest.raises(DataError, match=r"target_probs shape \(1, 1, 1, 2\) differs from logits \(1, 2, 1, 2\)"):
        segmentation_loss(logits, target[:, :1], weights)


def test_consistency_loss_hand_values() -> None:
    # pixel 0: p = [.5, .5], q = [.75, .25]: KL = .5 ln(.5/.75) + .5 ln 2 = 0.143841
    # pixel 1: p = [1, 0], q = [.5, .5]: KL = ln 2 (the p = 0 term is 0)
    p = torch.tensor([[0.5, 1.0], [0.5, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    student = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], dtype=torch.float64).reshape(1, 2, 1, 2)
    weights = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    kl0 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)
    expected = (kl0 + 3 * math.log(2.0)) / 4
    assert consistency_loss(student, p, weights).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.5558206445, abs=1e-9)


def test_consistency_loss_properties() -> None:
    torch.manual_seed(2)
    student = torch.randn(3, 5, 6, 6, requires_grad=True)
    target = torch.softmax(torch.randn(3, 5, 6, 6), 1).requires_grad_()
    weights = torch.rand(3, 6, 6)
    loss = consistency_loss(student, target, weights)
    assert loss.item() > 0
    loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert target.grad is None  # the target is detached inside
    same = consistency_loss(student.detach(), student.detach().softmax(1), weights)
    assert abs(same.item()) < 1e-6
    zero = consistency_loss(student, target, torch.zeros(3, 6, 6))
    assert zero.item() == 0.0 and zero.requires_grad
    for dtype in (torch.float16, torch.bfloat16):
        value = consistency_loss((student * 40).to(dtype), target.to(dtype), weights)
        assert torch.isfinite(value) and value.item() >= 0
