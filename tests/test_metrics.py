"""Tests of cromss.metrics against hand-computed numbers and against torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from cromss.errors import DataError
from cromss.metrics import SegmentationMetrics, from_confusion

# rows = true class, columns = predicted class; class 3 never occurs in the ground truth but is
# predicted once (a pixel of class 1).
HAND_CONFUSION = [
    [5, 1, 0, 0],
    [2, 6, 1, 1],
    [0, 1, 3, 0],
    [0, 0, 0, 0],
]
# Worked by hand: total 20, trace 14; supports 6, 10, 4, 0; predicted totals 7, 8, 4, 1.
EXPECTED = {
    "oa": 14 / 20,
    "recall": [5 / 6, 6 / 10, 3 / 4],
    "aa": (5 / 6 + 3 / 5 + 3 / 4) / 3,  # = 131/180
    "iou": [5 / 8, 6 / 12, 3 / 5],  # TP / (support + predicted - TP)
    "miou": (5 / 8 + 1 / 2 + 3 / 5) / 3,  # = 0.575
    "f1": [10 / 13, 12 / 18, 6 / 8],  # 2 TP / (support + predicted)
    "mf1": 341 / 468,
}


def test_from_confusion_hand_computed() -> None:
    result = from_confusion(torch.tensor(HAND_CONFUSION))
    assert result["oa"] == pytest.approx(0.7)
    assert result["aa"] == pytest.approx(131 / 180)
    assert result["aa"] == pytest.approx(EXPECTED["aa"])
    assert result["miou"] == pytest.approx(0.575)
    assert result["mf1"] == pytest.approx(EXPECTED["mf1"])
    assert result["recall"][:3] == pytest.approx(EXPECTED["recall"])
    assert result["iou"][:3] == pytest.approx(EXPECTED["iou"])
    assert result["f1"][:3] == pytest.approx(EXPECTED["f1"])
    # the absent class is NaN per class and left out of the means
    assert math.isnan(result["recall"][3]) and math.isnan(result["iou"][3]) and math.isnan(result["f1"][3])
    assert result["precision"][3] == 0.0  # predicted once, never right
    assert result["precision"][0] == pytest.approx(5 / 7)
    assert result["support"] == [6, 10, 4, 0]


def test_from_confusion_rejects_non_square() -> None:
    with pytest.raises(DataError, match="square"):
        from_confusion(torch.zeros(3, 4))


def test_empty_confusion_gives_nan() -> None:
    result = from_confusion(torch.zeros(3, 3, dtype=torch.long))
    assert math.isnan(result["oa"]) and math.isnan(result["miou"])


def _pixels_of(confusion: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(true, pred) pixel vectors realising a confusion matrix."""
    true, pred = [], []
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            true += [i] * count
            pred += [j] * count
    return torch.tensor(true), torch.tensor(pred)


def test_accumulator_matches_hand_matrix_with_ignored_pixels() -> None:
    true, pred = _pixels_of(HAND_CONFUSION)  # 20 pixels
    # 4 ignored pixels with arbitrary predictions, spread over two batches of shape [1, 2, 6]
    true = torch.cat([true, torch.full((4,), 255)])
    pred = torch.cat([pred, torch.tensor([0, 1, 2, 3])])
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))
    true, pred = true[perm].reshape(2, 1, 2, 6), pred[perm].reshape(2, 1, 2, 6)

    metrics = SegmentationMetrics(num_classes=4)
    # first batch as logits [B, C, H, W] (one-hot scores), second as class ids
    logits = torch.nn.functional.one_hot(pred[0], 4).permute(0, 3, 1, 2).float() * 3.0
    metrics.update(logits, true[0])
    metrics.update(pred[1], true[1])
    result = metrics.compute()
    assert result["confusion"] == HAND_CONFUSION
    assert result["oa"] == pytest.approx(0.7)
    assert result["miou"] == pytest.approx(0.575)

    metrics.reset()
    metrics.update(pred[1], true[1])
    assert sum(map(sum, metrics.compute()["confusion"])) == int((true[1] != 255).sum())


def test_accumulator_rejects_bad_labels_and_shapes() -> None:
    metrics = SegmentationMetrics(num_classes=3)
    with pytest.raises(DataError, match="label value 7"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 255]]]))
    with pytest.raises(DataError, match="shape"):
        metrics.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(DataError, match="classes"):
        metrics.update(torch.zeros(1, 5, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_agrees_with_torchmetrics_when_all_classes_present() -> None:
    torch.manual_seed(0)
    num_classes = 5
    target = torch.randint(0, num_classes, (4, 16, 16))
    target[:, :3] = 255  # an unlabeled stripe
    noisy = torch.randint(0, num_classes, target.shape)
    preds = torch.where(torch.rand(target.shape) < 0.6, target.clamp(max=num_classes - 1), noisy)

    ours = SegmentationMetrics(num_classes)
    ours.update(preds[:2], target[:2])
    ours.update(preds[2:], target[2:])
    result = ours.compute()

    kwargs = {"num_classes": num_classes, "ignore_index": 255}
    references = {
        "oa": MulticlassAccuracy(average="micro", **kwargs),
        "aa": MulticlassAccuracy(average="macro", **kwargs),
        "miou": MulticlassJaccardIndex(average="macro", **kwargs),
        "mf1": MulticlassF1Score(average="macro", **kwargs),
    }
    for name, metric in references.items():
        # feed the whole set at once: the references need not be split like ours
        assert result[name] == pytest.approx(float(metric(preds, target)), abs=1e-6), name
