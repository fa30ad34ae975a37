"""Label-error scores of an audit: ``1 - W_l`` of eqs. (8)-(11) with thresholds over the WHOLE dataset.

Pure tensor functions. In training, the per-class threshold of eq. (11) is the ``k_c``-th largest
enhanced label confidence of class ``c`` in the batch (:func:`cromss.selection.label_weights`). An
audit scores a whole dataset, so its thresholds are the same order statistic over every labelled pixel
of the dataset, found exactly in constant memory by a two-pass radix selection on the float32 bit
patterns (:class:`DatasetThresholds`): the bit pattern of a non-negative float32 read as an integer is
monotonic in its value, so pass 1 counts the upper 16 bits per class (``C x 65536`` counters) and
finds the bucket holding the ``k_c``-th largest value, pass 2 counts the lower 16 bits of the values in
that bucket only, which gives the value itself. ``W_l = min(1, f / f_c)`` is then computed exactly as
in training. Shapes: confidences, labels and weights ``[B, H, W]`` (any shape, flat inside),
probabilities ``[B, C, H, W]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cromss.errors import ConfigError

#: ``p_y`` (only summed and reported) is stored as integers 0..LEVELS (uint16).
LEVELS: int = 65535
#: Buckets of one radix pass (16 bits).
_BUCKETS: int = 1 << 16
#: floor(alpha * N_c) with the same rounding guard as cromss.selection (0.29 * 100 -> 29).
_FLOOR_SLACK = 1e-6
#: How the per-modality scores combine into one score (docs/audit.md, "Combined score").
COMBINE: tuple[str, ...] = ("mean", "product", "max", "min")
#: What a pixel's score is (docs/audit.md, "Which score"): ``weight`` = ``1 - W_l`` (the method's own
#: trust, clipped at the class threshold: the upper alpha0 share of every class ties at 0), ``ratio`` =
#: ``1 / (1 + f / f_c)`` (the same order below the threshold, continued above it: no ties), ``confidence``
#: = ``1 - f`` (the enhanced label confidence of eq. (10) without the per-class normalisation).
SCORES: tuple[str, ...] = ("weight", "ratio", "confidence")


def quantize(conf: Tensor) -> Tensor:
    """Values in [0, 1] -> int32 levels ``round(conf * LEVELS)`` (NaN -> 0)."""
    conf = torch.nan_to_num(conf.float(), nan=0.0).clamp(0.0, 1.0)
    return torch.round(conf * LEVELS).to(torch.int32)


def confidence_bits(conf: Tensor) -> Tensor:
    """float32 confidences (NaN and negatives -> 0, as :func:`cromss.selection.label_weights`) as their
    int64 bit patterns, monotonic in the value."""
    conf = torch.nan_to_num(conf.detach().float(), nan=0.0).clamp_min(0.0).contiguous()
    return conf.view(torch.int32).to(torch.int64)


def class_histogram(values: Tensor, labels: Tensor, num_classes: int, ignore_index: int,
                    keep: Tensor | None = None) -> Tensor:
    """Counts ``[C, 65536]`` (int64) of integer ``values`` in 0..65535 per labelled class (``keep``: a
    further pixel mask)."""
    mask = labels != ignore_index
    if keep is not None:
        mask &= keep
    key = labels[mask].long() * _BUCKETS + values[mask].long()
    return torch.bincount(key, minlength=num_classes * _BUCKETS)[: num_classes * _BUCKETS].view(num_classes, _BUCKETS)


def num_selected(counts: Tensor, alpha: float) -> Tensor:
    """``k_c = max(1, floor(alpha N_c))`` capped at ``N_c`` (eq. 11, footnote 5), int64."""
    k = torch.floor(counts.double() * alpha + _FLOOR_SLACK).long()
    return torch.minimum(k.clamp(min=1), counts.clamp(min=1))


def kth_largest_bucket(histogram: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Per row ``c`` of ``histogram [C, B]``: the bucket holding the ``k[c]``-th largest value and the
    rank of that value within its bucket (1 = the bucket's largest). Rows with fewer than ``k`` values
    (e.g. empty) give bucket -1."""
    from_top = histogram.flip(1).cumsum(1).flip(1)  # [c, b] = values in buckets >= b
    enough = from_top >= k.unsqueeze(1)
    buckets = torch.arange(histogram.shape[1], device=histogram.device).expand_as(enough)
    bucket = torch.where(enough, buckets, torch.full_like(buckets, -1)).max(dim=1).values
    safe = bucket.clamp(min=0)
    above = from_top.gather(1, safe.unsqueeze(1)).squeeze(1) - histogram.gather(1, safe.unsqueeze(1)).squeeze(1)
    return bucket, k - above


class DatasetThresholds:
    """Exact per-class thresholds of eq. (11) over a stream of batches (constant memory).

    Feed every batch to :meth:`add_coarse`, call :meth:`end_coarse`, feed every batch again to
    :meth:`add_fine`, then :attr:`thresholds` holds per class the ``k_c``-th largest confidence of all
    labelled pixels of class ``c`` (``k_c = max(1, floor(alpha N_c))``) — the value
    :func:`cromss.selection.label_weights` would find on the concatenation of every batch.
    """

    def __init__(self, num_classes: int, alpha: float, ignore_index: int) -> None:
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
            raise ConfigError(f"selection ratio alpha must be a number > 0, got {alpha!r}")
        self.num_classes, self.alpha, self.ignore_index = num_classes, float(alpha), ignore_index
        self.coarse = torch.zeros(num_classes, _BUCKETS, dtype=torch.int64)
        self.fine = torch.zeros(num_classes, _BUCKETS, dtype=torch.int64)
        self.bucket: Tensor | None = None
        self.rank: Tensor | None = None
        self._thresholds: Tensor | None = None

    def add_coarse(self, conf: Tensor, labels: Tensor) -> None:
        bits = confidence_bits(conf)
        self.coarse += class_histogram(bits >> 16, labels.cpu(), self.num_classes, self.ignore_index).cpu()

    def end_coarse(self) -> None:
        self.counts = self.coarse.sum(dim=1)
        k = num_selected(self.counts, min(self.alpha, 1.0))
        self.bucket, self.rank = kth_largest_bucket(self.coarse, k)

    def add_fine(self, conf: Tensor, labels: Tensor) -> None:
        assert self.bucket is not None, "call end_coarse() after the first pass"
        bits = confidence_bits(conf)
        labels = labels.cpu()
        classes = torch.where(labels != self.ignore_index, labels.long(), torch.zeros_like(labels, dtype=torch.long))
        in_bucket = (bits >> 16) == self.bucket[classes]
        self.fine += class_histogram(bits & 0xFFFF, labels, self.num_classes, self.ignore_index, in_bucket)

    @property
    def thresholds(self) -> Tensor:
        """float32 ``[C]``: the thresholds (0 for classes without labelled pixels)."""
        if self._thresholds is None:
            assert self.bucket is not None and self.rank is not None
            low, _ = kth_largest_bucket(self.fine, self.rank)
            bits = (self.bucket.clamp(min=0) << 16) | low.clamp(min=0)
            value = bits.to(torch.int32).view(torch.float32)
            self._thresholds = torch.where(self.counts > 0, value, torch.zeros_like(value))
        return self._thresholds


def weights_from_thresholds(conf: Tensor, labels: Tensor, thresholds: Tensor, ignore_index: int) -> Tensor:
    """``W_l = min(1, f / f_c)`` of eq. (11) with given per-class thresholds, in float32 exactly as
    :func:`cromss.selection.label_weights`: 1 where ``f_c <= 0``, 0 at ignored pixels."""
    conf = torch.nan_to_num(conf.detach().float(), nan=0.0).clamp_min(0.0)
    labelled = labels != ignore_index
    classes = torch.where(labelled, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    threshold = thresholds.to(conf.device)[classes]
    ratio = conf / torch.where(threshold > 0, threshold, torch.ones_like(threshold))
    weights = torch.where(threshold > 0, ratio.clamp(0.0, 1.0), torch.ones_like(ratio))
    return torch.where(labelled, weights, torch.zeros_like(weights))


def ratio_to_threshold(conf: Tensor, labels: Tensor, thresholds: Tensor, ignore_index: int) -> Tensor:
    """``r = f / f_c`` per pixel (unclipped; ``inf`` where ``f_c <= 0``, 0 at ignored pixels)."""
    conf = torch.nan_to_num(conf.detach().float(), nan=0.0).clamp_min(0.0)
    labelled = labels != ignore_index
    classes = torch.where(labelled, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    threshold = thresholds.to(conf.device)[classes]
    ratio = torch.where(threshold > 0, conf / torch.where(threshold > 0, threshold, torch.ones_like(threshold)),
                        torch.full_like(conf, math.inf))
    return torch.where(labelled, ratio, torch.zeros_like(ratio))


def pixel_scores(conf: Tensor, labels: Tensor, thresholds: Tensor, ignore_index: int,
                 score: str = "weight") -> Tensor:
    """The audit score in [0, 1] of every pixel (0 at ignored pixels) from its enhanced label confidence
    ``conf`` and the per-class thresholds ``[C]`` (:data:`SCORES`). Any shape; ``labels`` alike."""
    labelled = labels != ignore_index
    if score == "weight":
        value = 1.0 - weights_from_thresholds(conf, labels, thresholds, ignore_index)
    elif score == "ratio":
        value = 1.0 / (1.0 + ratio_to_threshold(conf, labels, thresholds, ignore_index))
    elif score == "confidence":
        value = 1.0 - torch.nan_to_num(conf.detach().float(), nan=0.0).clamp(0.0, 1.0)
    else:
        raise ConfigError(f"--score {score!r} is not one of {list(SCORES)}")
    return torch.where(labelled, value, torch.zeros_like(value))


def combine_scores(scores: Tensor, how: str = "mean") -> Tensor:
    """One score from the per-modality scores ``[M, ...]`` (each in [0, 1], e.g. ``1 - W_l``).

    ``mean``: the average; ``product``: ``1 - prod(W_l)`` (high if any modality distrusts the label);
    ``max``: the most suspicious modality; ``min``: only what every modality distrusts.
    """
    if how == "mean":
        return scores.mean(dim=0)
    if how == "product":
        return 1.0 - (1.0 - scores).prod(dim=0)
    if how == "max":
        return scores.max(dim=0).values
    if how == "min":
        return scores.min(dim=0).values
    raise ConfigError(f"combined score {how!r} is not one of {list(COMBINE)}")


def label_probability(probs: dict[str, Tensor], labels: Tensor, ignore_index: int) -> Tensor:
    """``p_y``: the mean over modalities of the softmax probability of the label (0 at ignored pixels).

    ``1 - p_y`` summed over a sample is the audit's estimate of its wrong pixels.
    """
    labelled = labels != ignore_index
    index = torch.where(labelled, labels.long(), torch.zeros_like(labels, dtype=torch.long)).unsqueeze(1)
    p = torch.stack([probs[m].float().gather(1, index).squeeze(1) for m in probs]).mean(dim=0)
    return torch.where(labelled, p, torch.zeros_like(p))


def consensus_class(probs: dict[str, Tensor]) -> Tensor:
    """The class every modality predicts (argmax), -1 where they disagree. ``[B, H, W]`` int64."""
    argmax = torch.stack([probs[m].argmax(dim=1) for m in probs])
    agree = (argmax == argmax[0]).all(dim=0)
    return torch.where(agree, argmax[0], torch.full_like(argmax[0], -1))
