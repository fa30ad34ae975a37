"""Cross-modal sample selection of CromSS (Liu et al., TGRS 2025, Sec. III-B, eqs. 8-12).

Pure tensor functions: probabilities and labels in, confidences and loss weights out. Shapes:
``probs`` ``[B, C, H, W]`` (softmax outputs), ``labels`` ``[B, H, W]`` integer class ids with
``ignore_index`` at unlabelled pixels, confidences and weights ``[B, H, W]``.

Low-precision inputs (fp16/bf16) are computed in float32 and returned as float32; float64 stays
float64. All weights are detached: the thresholds of eq. (11) never carry a gradient.

The wiring used for training is :func:`selection_weights`; see ``docs/method.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cromss.errors import ConfigError, DataError

__all__ = [
    "alpha_at",
    "cross_modal_enhance",
    "entity_confidence",
    "entity_weights",
    "gamma_at",
    "label_confidence",
    "label_weights",
    "rampup",
    "selection_weights",
]

# floor(alpha * N_c) is taken with this absolute slack so that e.g. 0.29 * 100 = 28.999999999999996
# still gives k = 29, as a user reading "29 %" expects.
_FLOOR_SLACK = 1e-6


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_probs_labels(probs: Tensor, labels: Tensor, name: str = "probs") -> None:
    if probs.dim() != 4:
        raise DataError(f"{name} must have shape [B, C, H, W], got {tuple(probs.shape)}")
    if labels.dim() != 3 or labels.shape != probs.shape[:1] + probs.shape[2:]:
        raise DataError(
            f"labels must have shape [B, H, W] = {tuple(probs.shape[:1] + probs.shape[2:])} to match "
            f"{name} {tuple(probs.shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def _check_label_values(labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise DataError naming the first label value that is neither a class id nor ignore_index."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise DataError(
            f"label value {value} is not a class id in 0..{num_classes - 1} "
            f"nor the ignore index {ignore_index}"
        )


# ----------------------------------------------------------------------------- step 1: confidences
def label_confidence(probs: Tensor, labels: Tensor, ignore_index: int, validate: bool = True) -> Tensor:
    """Label-based confidence ``f_l,i = p_{i, y_i}`` (eq. 8); 0 at ignored pixels.

    Args:
        probs: softmax probabilities ``[B, C, H, W]``.
        labels: noisy class ids ``[B, H, W]`` (int), ``ignore_index`` where unlabelled.
        ignore_index: label value of unlabelled pixels.
        validate: check the label values (a host read; see :func:`label_weights`).

    Returns:
        ``[B, H, W]`` confidences in [0, 1] (detached from the graph only if ``probs`` is).
    """
    _check_probs_labels(probs, labels)
    num_classes = probs.shape[1]
    if validate:
        _check_label_values(labels, num_classes, ignore_index)
    probs = probs.to(_compute_dtype(probs.dtype))
    labelled = labels != ignore_index
    # Ignored pixels gather class 0 (any valid index) and are zeroed afterwards.
    safe_labels = torch.where(labelled, labels, torch.zeros_like(labels)).long()
    at_label = probs.gather(1, safe_labels.unsqueeze(1)).squeeze(1)
    return torch.where(labelled, at_label, torch.zeros_like(at_label))


def entity_confidence(probs: Tensor) -> Tensor:
    """Entity-based confidence ``f_e,i = 1 - H_i / log C`` (eq. 9), clamped to [0, 1].

    The entropy uses ``xlogy(p, p)``, so a class with ``p = 0`` contributes exactly 0 and a one-hot
    prediction gets confidence 1 (the authors' code turned the resulting NaN into 0 instead).
    With ``C = 1`` there is no uncertainty and the confidence is 1.

    Args:
        probs: softmax probabilities ``[B, C, H, W]``.

    Returns:
        ``[B, H, W]`` confidences.
    """
    if probs.dim() != 4:
        raise DataError(f"probs must have shape [B, C, H, W], got {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    probs = probs.to(_compute_dtype(probs.dtype))
    if num_classes == 1:
        return torch.ones_like(probs[:, 0])
    entropy = -torch.special.xlogy(probs, probs).sum(dim=1)
    return (1.0 - entropy / math.log(num_classes)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- step 2: enhancement
def cross_modal_enhance(confs: list[Tensor]) -> list[Tensor]:
    """Cross-modal confidence enhancement (eq. 10), one enhanced mask per modality.

    For two modalities ``F'_d = F_d (1 + F_d') / 2 = (F_d + F_1 F_2) / 2`` exactly as eq. (10).
    For ``M >= 3`` modalities we use ``F'_d = F_d (1 + mean_{d' != d} F_d') / 2``: it reduces to
    eq. (10) for ``M = 2``, stays in [0, 1], and keeps the output scale independent of ``M`` (for
    equal confidences ``f`` every ``M`` gives ``f (1 + f) / 2``), so the same ``alpha`` schedule
    behaves alike. ``M = 1`` returns the input unchanged.

    Args:
        confs: ``M`` confidence masks of equal shape (``[B, H, W]``).

    Returns:
        list of ``M`` enhanced masks, same order.
    """
    confs = list(confs)
    if not confs:
        raise DataError("cross_modal_enhance needs at least one confidence mask, got an empty list")
    shape = confs[0].shape
    for index, conf in enumerate(confs):
        if conf.shape != shape:
            raise DataError(
                f"confidence mask {index} has shape {tuple(conf.shape)}, mask 0 has {tuple(shape)}"
            )
    if len(confs) == 1:
        return [confs[0]]
    num_modalities = len(confs)
    dtype = _compute_dtype(confs[0].dtype)
    stacked = torch.stack([conf.to(dtype) for conf in confs])
    total = stacked.sum(dim=0)
    enhanced = []
    for conf in stacked:
        mean_others = (total - conf) / (num_modalities - 1)
        enhanced.append(conf * (1.0 + mean_others) / 2.0)
    return enhanced


# ----------------------------------------------------------------------------- step 3: thresholds
def _validate_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"selection ratio alpha must be a number > 0, got {alpha!r}")


def _class_order(conf: Tensor, class_ids: Tensor) -> Tensor:
    """Permutation sorting pixels by class ascending, then confidence descending.

    ``conf`` must be >= 0. For float32 one integer sort suffices: the bit pattern of a non-negative
    float32, read as an integer, is monotonic in its value, so ``class * 2^32 + (2^31 - 1 - bits)``
    orders by (class, confidence descending) exactly. Other dtypes use two stable sorts.
    """
    if conf.dtype == torch.float32:
        bits = conf.contiguous().view(torch.int32).to(torch.int64)
        key = class_ids.to(torch.int64) * (1 << 32) + ((1 << 31) - 1 - bits)
        return torch.argsort(key)
    by_conf = torch.argsort(conf, descending=True, stable=True)
    by_class = torch.argsort(class_ids[by_conf], stable=True)
    return by_conf[by_class]


def _kth_per_class(
    sorted_conf: Tensor, counts: Tensor, kth: Tensor
) -> Tensor:
    """Per class c, the ``kth[c]``-th largest (1-based) value of its segment of ``sorted_conf``.

    ``sorted_conf`` holds the values of class 0, then class 1, ... each segment sorted descending;
    ``counts[c]`` is the segment length. Classes with ``counts[c] == 0`` get 0.
    """
    starts = torch.cumsum(counts, 0) - counts
    present = counts > 0
    index = (starts + kth.clamp(min=1) - 1).clamp(0, max(sorted_conf.numel() - 1, 0))
    if sorted_conf.numel() == 0:
        return torch.zeros(counts.shape, dtype=sorted_conf.dtype, device=sorted_conf.device)
    values = sorted_conf[index]
    return torch.where(present, values, torch.zeros_like(values))


def _num_selected(counts: Tensor, alpha: float) -> Tensor:
    """``k_c = max(1, floor(alpha * N_c))``, capped at ``N_c`` (int64)."""
    k = torch.floor(counts.to(torch.float64) * alpha + _FLOOR_SLACK).to(torch.int64)
    return torch.minimum(k.clamp(min=1), counts.clamp(min=1))


def _dist_world() -> tuple[Any, int]:
    """(torch.distributed module, world size) when a process group is initialised, else (None, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_world_size()
    return None, 1


#: Bits per round of the radix selection of :func:`_sync_thresholds` (256 bins per class and round).
_RADIX_BITS = 8


def _class_counts(class_ids: Tensor, num_buckets: int) -> Tensor:
    """Pixels per bucket ``0..num_buckets-1`` (int64) without a host read (``bincount`` sizes its output
    from the maximum, which on CUDA reads it back)."""
    counts = torch.zeros(num_buckets, dtype=torch.int64, device=class_ids.device)
    return counts.scatter_add_(0, class_ids, torch.ones_like(class_ids))


def _sync_thresholds(conf: Tensor, class_ids: Tensor, num_classes: int, alpha: float, dist: Any) -> Tensor:
    """Exact per-class thresholds over the concatenation of every rank's batch, by radix selection.

    The ``k_c``-th largest confidence of class ``c`` over all ranks is found digit by digit of its bit
    pattern (a non-negative float's bits, read as an integer, are monotonic in its value): per round,
    every rank histograms the next 8 bits of its pixels that still match the prefix found so far, one
    ``all_reduce`` sums the ``C x 256`` histograms, and every rank picks the same digit. 4 rounds for
    float32 (8 for float64) give the exact bit pattern of the global threshold. Fixed-size collectives
    and no value read back to the host: batches of any size per rank, no synchronisation of the host.

    Args:
        conf: ``[N]`` confidences >= 0 (float32 or float64), this rank's pixels.
        class_ids: ``[N]`` int64 class of each pixel, ``num_classes`` for ignored pixels (never counted).
        num_classes: ``C``.
        alpha: selection ratio (``k_c = max(1, floor(alpha N_c))`` with the GLOBAL ``N_c``).
        dist: ``torch.distributed`` (an initialised group).

    Returns:
        ``[C]`` thresholds (0 for classes without pixels on any rank), dtype of ``conf``.
    """
    device = conf.device
    if conf.dtype == torch.float32:
        keys, total_bits = conf.contiguous().view(torch.int32).to(torch.int64), 31
    else:
        keys, total_bits = conf.to(torch.float64).contiguous().view(torch.int64), 63
    keys = keys.clamp_min(0)  # -0.0 has the sign bit set: same value as +0.0
    bins = 1 << _RADIX_BITS
    labelled = class_ids < num_classes
    dump = num_classes * bins  # histogram slot of pixels that are ignored or off the prefix
    prefix = torch.zeros(num_classes, dtype=torch.int64, device=device)
    kth = None
    present = None
    shifts = list(range(((total_bits - 1) // _RADIX_BITS) * _RADIX_BITS, -1, -_RADIX_BITS))
    safe_class = torch.where(labelled, class_ids, torch.zeros_like(class_ids))
    for round_index, shift in enumerate(shifts):
        digit = (keys >> shift) & (bins - 1)
        member = labelled if round_index == 0 else labelled & ((keys >> (shift + _RADIX_BITS)) == prefix[safe_class])
        slot = torch.where(member, safe_class * bins + digit, torch.full_like(digit, dump))
        hist = torch.zeros(dump + 1, dtype=torch.int64, device=device).scatter_add_(0, slot, torch.ones_like(slot))
        dist.all_reduce(hist)  # sum over ranks
        hist = hist[:dump].view(num_classes, bins)
        if kth is None:  # the first round sees every labelled pixel: global counts -> k_c
            counts = hist.sum(1)
            present = counts > 0
            kth = _num_selected(counts, alpha)
        at_or_above = hist.flip(1).cumsum(1).flip(1)  # [C, 256]: members with digit >= d
        chosen = ((at_or_above >= kth.unsqueeze(1)).sum(1) - 1).clamp(min=0)  # largest d with >= k above
        above = (at_or_above - hist).gather(1, chosen.unsqueeze(1)).squeeze(1)  # members with digit > d
        kth = kth - above
        prefix = (prefix << _RADIX_BITS) | chosen
    if conf.dtype == torch.float32:
        values = prefix.to(torch.int32).view(torch.float32)
    else:
        values = prefix.view(torch.float64).to(conf.dtype)
    return torch.where(present, values, torch.zeros_like(values))


def label_weights(
    conf: Tensor,
    labels: Tensor,
    alpha: float,
    num_classes: int,
    ignore_index: int,
    sync: bool = False,
    validate: bool = True,
) -> Tensor:
    """Label-based selection mask ``W_l`` (eq. 11), thresholded per class (footnote 5).

    For class ``c`` with ``N_c`` labelled pixels in the batch, ``k_c = max(1, floor(alpha N_c))``
    and the threshold ``f_c`` is the ``k_c``-th largest confidence of class ``c``; then
    ``w_i = min(1, f_i / f_c)`` for ``y_i = c`` (``w_i = 1`` if ``f_c <= 0``). ``alpha >= 1``
    gives 1 on every labelled pixel; ignored pixels get 0. Loop-free: one stable sort by
    confidence, one by class.

    Args:
        conf: (enhanced) label confidence ``[B, H, W]``, values in [0, 1].
        labels: class ids ``[B, H, W]``, ``ignore_index`` where unlabelled.
        alpha: selection ratio, > 0.
        num_classes: number of classes ``C``.
        ignore_index: label value of unlabelled pixels.
        sync: with an initialised ``torch.distributed`` group of size > 1, compute the thresholds
            over the concatenation of all ranks' batches (exact; see docs/method.md for the cost).
            Every rank must call it (a collective). Without a group it is the local computation.
        validate: check that every label value is a class id or ``ignore_index`` (DataError naming
            the first bad value). The check reads a value back to the host (a device sync on GPU):
            the training step passes False, its loader has checked the labels.

    Returns:
        ``[B, H, W]`` detached weights in [0, 1].
    """
    _validate_alpha(alpha)
    if conf.dim() != 3 or labels.shape != conf.shape:
        raise DataError(
            f"conf and labels must both have shape [B, H, W], got {tuple(conf.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if validate:
        _check_label_values(labels, num_classes, ignore_index)
    dist, world = _dist_world() if sync else (None, 1)

    with torch.no_grad():
        conf = conf.detach().to(_compute_dtype(conf.dtype))
        # Confidences live in [0, 1]; NaN or negative values (not produced by eqs. 8-10) count as 0.
        conf = torch.nan_to_num(conf, nan=0.0).clamp_min(0.0)
        labelled = labels != ignore_index
        if alpha >= 1.0:
            # k_c = N_c: the threshold is the class minimum, so every labelled weight is 1.
            return labelled.to(conf.dtype)
        # Ignored pixels go to an extra bucket C, sorted last and never used as a threshold.
        class_ids = torch.where(labelled, labels.long(), torch.full_like(labels, num_classes).long())
        flat_conf = conf.reshape(-1)
        flat_class = class_ids.reshape(-1)
        if dist is not None and world > 1:
            thresholds = _sync_thresholds(flat_conf, flat_class, num_classes, alpha, dist)
        else:
            counts = _class_counts(flat_class, num_classes + 1)[:num_classes]
            sorted_conf = flat_conf[_class_order(flat_conf, flat_class)]
            thresholds = _kth_per_class(sorted_conf, counts, _num_selected(counts, alpha))
        # Bucket C (ignored) gets threshold 1; its weight is zeroed below anyway.
        thresholds = torch.cat([thresholds, thresholds.new_ones(1)])
        pixel_threshold = thresholds[class_ids]
        ratio = conf / torch.where(pixel_threshold > 0, pixel_threshold, torch.ones_like(pixel_threshold))
        weights = torch.where(pixel_threshold > 0, ratio.clamp(0.0, 1.0), torch.ones_like(ratio))
        return torch.where(labelled, weights, torch.zeros_like(weights))


def entity_weights(conf: Tensor, gamma: float) -> Tensor:
    """Entity-based selection mask ``w_e = (1 - gamma) + gamma f_e`` (eq. 12).

    Args:
        conf: (enhanced) entity confidence ``[B, H, W]`` in [0, 1].
        gamma: moderator in [0, 1] (see :func:`gamma_at`).

    Returns:
        ``[B, H, W]`` detached weights.
    """
    if not (isinstance(gamma, int | float) and 0.0 <= gamma <= 1.0):
        raise ConfigError(f"entity moderator gamma must be in [0, 1], got {gamma!r}")
    conf = conf.detach().to(_compute_dtype(conf.dtype))
    return (1.0 - gamma) + gamma * conf


# ----------------------------------------------------------------------------- ramps
def rampup(epoch: float, rampup_epochs: float) -> float:
    """Ramp ``r(e) = exp(-5 (1 - clip(e / n_s, 0, 1))^2)``; ``r = 1`` when ``n_s = 0``."""
    if not (isinstance(rampup_epochs, int | float) and rampup_epochs >= 0):
        raise ConfigError(f"rampup_epochs must be >= 0, got {rampup_epochs!r}")
    if rampup_epochs == 0:
        return 1.0
    progress = min(max(float(epoch) / float(rampup_epochs), 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - progress) ** 2)


def alpha_at(epoch: float, alpha0: float, rampup_epochs: float) -> float:
    """Selection ratio at (fractional) ``epoch``: ``alpha = 1 - r(e) (1 - alpha0)`` (Sec. III-B).

    Ramps from ~1 down to ``alpha0`` over the first ``rampup_epochs`` (paper: 0.5 and 80).
    """
    if not (isinstance(alpha0, int | float) and 0.0 < alpha0 <= 1.0):
        raise ConfigError(f"alpha0 must be in (0, 1], got {alpha0!r}")
    return 1.0 - rampup(epoch, rampup_epochs) * (1.0 - alpha0)


def gamma_at(epoch: float, rampup_epochs: float) -> float:
    """Entity moderator at (fractional) ``epoch``: ``gamma = r(e)``, ramping from ~0 up to 1."""
    return rampup(epoch, rampup_epochs)


# ----------------------------------------------------------------------------- the wiring
def selection_weights(
    probs: dict[str, Tensor],
    labels: Tensor,
    alpha: float,
    gamma: float,
    num_classes: int,
    ignore_index: int,
    enhance: bool = True,
    sync: bool = False,
    validate: bool = True,
) -> dict[str, dict[str, Tensor]]:
    """All selection masks of one training step (Fig. 5), per modality.

    Args:
        probs: modality name -> softmax probabilities ``[B, C, H, W]`` (detached inside).
        labels: noisy class ids ``[B, H, W]`` shared by all modalities.
        alpha: selection ratio for eq. (11) (see :func:`alpha_at`).
        gamma: entity moderator for eq. (12) (see :func:`gamma_at`).
        num_classes: ``C``.
        ignore_index: label value of unlabelled pixels.
        enhance: apply the cross-modal enhancement of eq. (10) (off: ``*_enh`` equal the raw masks).
        sync: synchronise the eq. (11) thresholds across ranks (see :func:`label_weights`).
        validate: check the label values once (DataError naming the first bad one). It reads a value
            back to the host; the training step passes False (its loader checked the labels), which
            makes the whole call free of host synchronisations.

    Returns:
        ``{modality: {"f_l", "f_e", "f_l_enh", "f_e_enh", "w_l", "w_e"}}``, each ``[B, H, W]``,
        detached. ``w_l[d]`` weights the segmentation loss of modality ``d``; ``w_e[d]`` weights the
        consistency term whose TARGET is modality ``d`` (eq. 7), i.e. the loss that trains the other
        modality. Both are 0 at ignored pixels.
    """
    if not probs:
        raise DataError("selection_weights needs the probabilities of at least one modality")
    names = list(probs)
    detached = {}
    for name in names:
        p = probs[name].detach()
        _check_probs_labels(p, labels, name=f"probs[{name!r}]")
        if p.shape[1] != num_classes:
            raise DataError(
                f"probs[{name!r}] has {p.shape[1]} classes in dim 1, expected num_classes={num_classes}"
            )
        detached[name] = p
    if validate:
        _check_label_values(labels, num_classes, ignore_index)
    f_l = [label_confidence(detached[name], labels, ignore_index, validate=False) for name in names]
    f_e = [entity_confidence(detached[name]) for name in names]
    f_l_enh = cross_modal_enhance(f_l) if enhance else list(f_l)
    f_e_enh = cross_modal_enhance(f_e) if enhance else list(f_e)
    labelled = labels != ignore_index
    result: dict[str, dict[str, Tensor]] = {}
    for index, name in enumerate(names):
        w_l = label_weights(f_l_enh[index], labels, alpha, num_classes, ignore_index, sync=sync, validate=False)
        w_e = entity_weights(f_e_enh[index], gamma)
        w_e = torch.where(labelled, w_e, torch.zeros_like(w_e))
        result[name] = {
            "f_l": f_l[index],
            "f_e": f_e[index],
            "f_l_enh": f_l_enh[index],
            "f_e_enh": f_e_enh[index],
            "w_l": w_l,
            "w_e": w_e,
        }
    return result
