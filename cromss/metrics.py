"""Segmentation metrics of the paper (OA, AA, mIoU, mF1) from one confusion matrix.

The confusion matrix is accumulated with torchmetrics over a whole split (not averaged per batch),
so every metric is a ratio of pixel counts over the full test set. Conventions:

* ``confusion[i, j]`` counts pixels whose TRUE class is ``i`` and PREDICTED class is ``j``.
* Pixels labelled ``IGNORE_INDEX`` (255) never enter the matrix.
* Per-class ``recall``, ``iou`` and ``f1`` are NaN for a class without ground-truth pixels, and such
  classes are left out of AA, mIoU and mF1 (a class that is absent from the test labels cannot be
  scored; false positives of it still lower the precision/IoU of the true classes via the row sums).
  torchmetrics' macro averages instead count a predicted-but-absent class with score 0, so the two
  agree exactly when every class occurs in the ground truth.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from cromss.errors import DataError
from cromss.schema import IGNORE_INDEX

#: Scalar metric names, in the paper's column order.
SCALAR_METRICS: tuple[str, ...] = ("oa", "aa", "miou", "mf1")


def _nanmean(values: Tensor) -> float:
    present = values[~torch.isnan(values)]
    return float(present.mean()) if present.numel() else math.nan


def from_confusion(confusion: Tensor) -> dict[str, Any]:
    """OA, AA, mIoU, mF1 and per-class scores from a confusion matrix.

    Args:
        confusion: ``[C, C]`` counts, rows = true class, columns = predicted class.

    Returns:
        ``oa`` (trace / total), ``aa`` (mean per-class recall), ``miou`` (mean of
        TP / (TP + FP + FN)), ``mf1`` (mean of 2 TP / (2 TP + FP + FN)) as floats in [0, 1]; per-class
        lists ``recall``, ``precision``, ``iou``, ``f1`` (NaN where the class has no ground truth;
        precision NaN where the class is never predicted) and ``support`` (ground-truth pixels per class).
        Classes without ground truth are excluded from AA, mIoU and mF1. An empty matrix gives NaN.
    """
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DataError(f"confusion matrix must be square [C, C], got shape {tuple(confusion.shape)}")
    counts = confusion.detach().to(torch.float64).cpu()
    true_positives = counts.diagonal()
    support = counts.sum(dim=1)  # ground-truth pixels per class
    predicted = counts.sum(dim=0)
    total = counts.sum()
    present = support > 0
    nan = torch.tensor(math.nan, dtype=torch.float64)

    recall = torch.where(present, true_positives / support.clamp(min=1), nan)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), nan)
    union = support + predicted - true_positives
    iou = torch.where(present, true_positives / union.clamp(min=1), nan)
    f1 = torch.where(present, 2 * true_positives / (support + predicted).clamp(min=1), nan)
    return {
        "oa": float(true_positives.sum() / total) if total > 0 else math.nan,
        "aa": _nanmean(recall),
        "miou": _nanmean(iou),
        "mf1": _nanmean(f1),
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "iou": iou.tolist(),
        "f1": f1.tolist(),
        "support": [int(v) for v in support.tolist()],
    }


def support_note(support: list[int], class_names: list[str] | None = None) -> str | None:
    """A note to print next to metrics whose ground truth has at most one class, else None.

    With one class only, OA is that class's recall and AA, mIoU and mF1 average a single class: a 100 %
    then says nothing about telling the classes apart (e.g. a label whose other class was read as nodata).
    """
    present = [i for i, count in enumerate(support) if count > 0]
    if len(present) > 1:
        return None
    if not present:
        return "no ground-truth pixel in this split: the metrics are undefined"
    index = present[0]
    name = class_names[index] if class_names and index < len(class_names) else f"class {index}"
    return (f"only class {name!r} has ground-truth pixels ({support[index]}) in this split: OA, AA, mIoU and "
            f"mF1 score that one class, not a segmentation of {len(support)} classes")


class SegmentationMetrics(nn.Module):
    """Accumulates a confusion matrix over batches and turns it into :func:`from_confusion` metrics.

    A thin wrapper of ``torchmetrics.classification.MulticlassConfusionMatrix`` (so the matrix is
    summed across DDP ranks on ``compute()``). Being an ``nn.Module`` it follows its owner's device.

    Example:
        >>> metrics = SegmentationMetrics(num_classes=9)
        >>> metrics.update(logits, batch["label"])   # logits [B, C, H, W] or class ids [B, H, W]
        >>> metrics.compute()["miou"]
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        from torchmetrics.classification import MulticlassConfusionMatrix

        if num_classes < 2:
            raise DataError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # validate_args=False: we check the label range ourselves to name the offending value.
        self.confusion = MulticlassConfusionMatrix(
            num_classes, ignore_index=ignore_index, validate_args=False
        )

    def update(self, preds_or_logits: Tensor, target: Tensor) -> None:
        """Add a batch: logits/probabilities ``[B, C, H, W]`` or class ids ``[B, H, W]``; target ``[B, H, W]``."""
        if preds_or_logits.ndim == target.ndim + 1:
            if preds_or_logits.shape[1] != self.num_classes:
                raise DataError(
                    f"logits have {preds_or_logits.shape[1]} classes, metrics expect {self.num_classes}"
                )
            preds = preds_or_logits.argmax(dim=1)
        else:
            preds = preds_or_logits
        if preds.shape != target.shape:
            raise DataError(
                f"prediction shape {tuple(preds.shape)} does not match label shape {tuple(target.shape)}"
            )
        labelled = target != self.ignore_index
        bad = labelled & ((target < 0) | (target >= self.num_classes))
        if bool(bad.any()):
            raise DataError(
                f"label value {int(target[bad][0])} is outside the classes 0..{self.num_classes - 1} "
                f"and is not the ignore value {self.ignore_index}"
            )
        if preds.is_floating_point():
            preds = preds.long()
        # The ignore value must also be a valid index for the predictions: map it to 0 where ignored.
        preds = torch.where(labelled, preds, torch.zeros_like(preds))
        self.confusion.update(preds, target)

    def compute(self) -> dict[str, Any]:
        """Metrics over everything seen since the last reset, plus ``confusion`` as a nested list."""
        confusion = self.confusion.compute()
        result = from_confusion(confusion)
        result["confusion"] = confusion.cpu().tolist()
        return result

    def reset(self) -> None:
        """Forget all accumulated pixels."""
        self.confusion.reset()

    def forward(self, preds_or_logits: Tensor, target: Tensor) -> None:  # noqa: D401
        """Same as :meth:`update` (so the module can be called)."""
        self.update(preds_or_logits, target)
