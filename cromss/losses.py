"""Weighted losses of CromSS (Liu et al., TGRS 2025, Sec. III-A, eqs. 6-7).

Shapes: ``logits`` ``[B, C, H, W]`` (raw scores), ``target_probs`` ``[B, C, H, W]`` (soft labels or
the other modality's softmax), ``weights`` ``[B, H, W]`` (selection masks, 0 at ignored pixels).
Both losses are weighted averages over pixels (``/ sum_i w_i``, Fig. 5 right), computed in float32
(float64 stays float64) with ``log_softmax``; an all-zero weight mask gives a loss of exactly 0 that
still has a gradient path. No value is read back to the host (the all-zero case is a ``torch.where``):
both losses run inside a training step without a host synchronisation.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cromss.errors import ConfigError, DataError

__all__ = ["DICE_MODES", "consistency_loss", "segmentation_loss"]

#: Accepted values of ``segmentation_loss(..., dice=...)``.
DICE_MODES: tuple[str, ...] = ("paper", "per_class", "none")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_shapes(logits: Tensor, target_probs: Tensor, weights: Tensor, what: str) -> None:
    if logits.dim() != 4:
        raise DataError(f"{what}: logits must have shape [B, C, H, W], got {tuple(logits.shape)}")
    if target_probs.shape != logits.shape:
        raise DataError(
            f"{what}: target_probs shape {tuple(target_probs.shape)} differs from logits "
            f"{tuple(logits.shape)}"
        )
    expected = logits.shape[:1] + logits.shape[2:]
    if weights.shape != expected:
        raise DataError(
            f"{what}: weights must have shape [B, H, W] = {tuple(expected)}, got {tuple(weights.shape)}"
        )


def segmentation_loss(
    logits: Tensor,
    target_probs: Tensor,
    weights: Tensor,
    dice: Literal["paper", "per_class", "none"] = "paper",
) -> Tensor:
    """Weighted cross-entropy + Dice of eq. (6), a scalar.

    ``CE = sum_i w_i sum_c -z'_ic log q_ic / sum_i w_i`` and, with ``dice='paper'`` (eq. 6, sums over
    pixels AND classes), ``Dice = 1 - 2 sum_ic w_i z'_ic q_ic / sum_ic w_i (z'_ic + q_ic)``.
    ``dice='per_class'`` is the authors' code: ``1 - mean_c [2 sum_i w z' q / sum_i w (z' + q)]_c``
    over all ``C`` classes (sums over batch and pixels per class). ``dice='none'`` gives CE only.
    ``target_probs`` and ``weights`` are constants: both are detached.

    Args:
        logits: raw scores ``[B, C, H, W]`` (``q = softmax(logits)``).
        target_probs: soft targets ``z'`` ``[B, C, H, W]`` (one-hot or smoothed; 0 rows allowed).
        weights: ``[B, H, W]`` pixel weights ``w_l`` (0 at ignored pixels).
        dice: one of :data:`DICE_MODES`.

    Returns:
        scalar loss (float32, or float64 for float64 logits); 0 with a gradient path if all w are 0.
    """
    if dice not in DICE_MODES:
        raise ConfigError(f"dice must be one of {list(DICE_MODES)}, got {dice!r}")
    _check_shapes(logits, target_probs, weights, "segmentation_loss")
    dtype = _compute_dtype(logits.dtype)
    log_q = F.log_softmax(logits.to(dtype), dim=1)
    target = target_probs.detach().to(dtype)  # labels are constants, never trained
    w = weights.detach().to(dtype).unsqueeze(1)  # [B, 1, H, W]; selection masks are constants
    weight_sum = w.sum()
    selected = weight_sum > 0
    # no host read: with all weights 0 the loss is an exact 0 that keeps a gradient path; the
    # denominators are made 1 there so that no 0/0 leaks NaN into the (unused) branch's gradient
    safe_sum = torch.where(selected, weight_sum, torch.ones_like(weight_sum))
    cross_entropy = -(w * target * log_q).sum() / safe_sum
    if dice == "none":
        loss = cross_entropy
    else:
        q = log_q.exp()
        if dice == "paper":
            overlap = (w * target * q).sum()
            total = (w * (target + q)).sum()
            dice_loss = 1.0 - 2.0 * overlap / torch.where(selected, total, torch.ones_like(total))
        else:
            dims = (0, 2, 3)
            overlap = (w * target * q).sum(dim=dims)
            total = (w * (target + q)).sum(dim=dims)
            # total > 0 for every class because q > 0 and sum w > 0; clamp guards underflow only.
            dice_loss = 1.0 - (2.0 * overlap / total.clamp_min(torch.finfo(dtype).tiny)).mean()
        loss = cross_entropy + dice_loss
    return torch.where(selected, loss, (logits.to(dtype) * 0.0).sum())


def consistency_loss(student_logits: Tensor, target_probs: Tensor, weights: Tensor) -> Tensor:
    """Weighted KL consistency of eq. (7), a scalar: ``sum_i w_i KL(p_i || q_i) / sum_i w_i``.

    ``p`` = ``target_probs`` (the other modality's softmax; DETACHED here, so no gradient reaches
    it) and ``q = softmax(student_logits)``. ``KL = sum_c xlogy(p, p) - p log q``: classes with
    ``p = 0`` contribute 0.

    Args:
        student_logits: raw scores of the trained modality ``[B, C, H, W]``.
        target_probs: target distribution ``[B, C, H, W]`` (rows sum to 1).
        weights: ``[B, H, W]`` pixel weights ``w_e`` of the target modality.

    Returns:
        scalar loss >= 0; 0 with a gradient path if all weights are 0.
    """
    _check_shapes(student_logits, target_probs, weights, "consistency_loss")
    dtype = _compute_dtype(student_logits.dtype)
    log_q = F.log_softmax(student_logits.to(dtype), dim=1)
    p = target_probs.detach().to(dtype)
    w = weights.detach().to(dtype)
    weight_sum = w.sum()
    selected = weight_sum > 0  # no host read; see segmentation_loss
    kl_per_pixel = (torch.special.xlogy(p, p) - p * log_q).sum(dim=1)  # [B, H, W]
    loss = (w * kl_per_pixel).sum() / torch.where(selected, weight_sum, torch.ones_like(weight_sum))
    return torch.where(selected, loss, (student_logits.to(dtype) * 0.0).sum())
