"""Metrics of an audit against a reference label: ROC-AUC, AP and precision at the top k % flagged.

Streamed in constant memory: each score is counted into :data:`BINS` bins per (class, wrong?), so
a dataset of any size costs ``scores x C x 2 x BINS`` counters. The metrics are then computed by
scikit-learn on the bins (one weighted sample per bin and outcome): exact for the binned scores, i.e.
pixels whose scores fall into one bin of width 1/4096 count as ties. The class of a pixel is its
(noisy) label's class, the one a user sees in the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: Score bins on [0, 1].
BINS: int = 4096
#: Top-k % of the labelled pixels (ranked by score) at which precision is reported.
TOP_PERCENT: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 20.0)


class BinnedScores:
    """Counts of scores per (score name, class, wrong?) in :data:`BINS` bins."""

    def __init__(self, names: Sequence[str], num_classes: int) -> None:
        self.names = list(names)
        self.num_classes = num_classes
        self.counts = torch.zeros(len(self.names), num_classes, 2, BINS, dtype=torch.int64)

    def add(self, scores: dict[str, Tensor], labels: Tensor, wrong: Tensor, keep: Tensor) -> None:
        """Count the pixels where ``keep``: ``scores[name]`` in [0, 1], ``labels`` class ids, ``wrong`` bool."""
        classes = labels[keep].long()
        outcome = wrong[keep].long()
        for index, name in enumerate(self.names):
            value = scores[name][keep].float().clamp(0.0, 1.0)
            bins = (value * BINS).long().clamp(max=BINS - 1)
            key = (classes * 2 + outcome) * BINS + bins
            self.counts[index] += torch.bincount(key, minlength=self.num_classes * 2 * BINS).view(
                self.num_classes, 2, BINS)

    def metrics(self, class_names: Sequence[str]) -> dict[str, Any]:
        """``{name: {auc, ap, precision_at, pixels, wrong, per_class: {class: {...}}}}``."""
        out = {}
        for index, name in enumerate(self.names):
            counts = self.counts[index].numpy()
            result = binned_metrics(counts.sum(axis=0))
            result["per_class"] = {str(class_names[c]): binned_metrics(counts[c])
                                   for c in range(self.num_classes) if counts[c].sum() > 0}
            out[name] = result
        return out


def binned_metrics(counts: np.ndarray) -> dict[str, Any]:
    """AUC, AP and precision at the top k % from ``counts [2, BINS]`` (row 0 clean, row 1 wrong)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    clean, wrong = counts[0].astype(np.float64), counts[1].astype(np.float64)
    pixels, errors = int(clean.sum() + wrong.sum()), int(wrong.sum())
    result: dict[str, Any] = {"pixels": pixels, "wrong": errors,
                              "wrong_fraction": errors / pixels if pixels else None}
    if errors == 0 or errors == pixels:
        result.update(auc=None, ap=None, precision_at={f"{k:g}%": None for k in TOP_PERCENT})
        return result
    centres = (np.arange(BINS) + 0.5) / BINS
    used = (clean + wrong) > 0
    score = np.concatenate([centres[used], centres[used]])
    target = np.concatenate([np.zeros(used.sum()), np.ones(used.sum())])
    weight = np.concatenate([clean[used], wrong[used]])
    result["auc"] = float(roc_auc_score(target, score, sample_weight=weight))
    result["ap"] = float(average_precision_score(target, score, sample_weight=weight))
    result["precision_at"] = {f"{k:g}%": precision_at_top(clean, wrong, k / 100.0) for k in TOP_PERCENT}
    return result


def precision_at_top(clean: np.ndarray, wrong: np.ndarray, fraction: float) -> float | None:
    """Fraction of wrong labels among the top ``fraction`` of pixels by score (bins from the top; the
    last bin taken in part counts in proportion: the expected precision under random tie-breaking)."""
    total = clean.sum() + wrong.sum()
    wanted = fraction * total
    if wanted <= 0:
        return None
    taken = hits = 0.0
    for b in range(len(clean) - 1, -1, -1):
        size = clean[b] + wrong[b]
        if size == 0:
            continue
        part = min(1.0, (wanted - taken) / size)
        taken += part * size
        hits += part * wrong[b]
        if taken >= wanted - 1e-9:
            break
    return float(hits / taken) if taken else None


def flag_quality(flagged: int, flagged_wrong: int, wrong: int) -> dict[str, float | None]:
    """Precision, recall and F1 of the flagged pixels against the reference."""
    precision = flagged_wrong / flagged if flagged else None
    recall = flagged_wrong / wrong if wrong else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"precision": precision, "recall": recall, "f1": f1}
