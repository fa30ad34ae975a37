"""benchmarks/audit.py at toy size: the cleanlab K-fold path and the NDWI ceiling on the real chip.

Skips without cleanlab (the ``bench`` extra) or without ../shared. The benchmark's numbers are checked
against references computed here: the NDWI-margin AUC by sklearn on the whole chip, cleanlab's pixel
scores against the self-confidence of its out-of-sample probabilities, precision@k by hand.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cleanlab")

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_audit", ROOT / "benchmarks" / "audit.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_audit"] = module
    spec.loader.exec_module(module)
    return module


def test_exact_metrics_by_hand():
    bench = _bench()
    score = np.array([0.9, 0.8, 0.8, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    wrong = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    result = bench.exact_metrics(score, wrong)
    # top 10 % = the 0.9 pixel (wrong); with 20 % the pair tied at 0.8 is taken whole
    assert result["p@10%"] == 1.0
    from sklearn.metrics import roc_auc_score

    assert result["auc"] == pytest.approx(roc_auc_score(wrong, score))
    # 5 % of 10 pixels rounds to 1 pixel as well
    assert result["p@5%"] == 1.0 and result["p@1%"] == 1.0


def test_toy_benchmark_cleanlab_kfold_and_ndwi_ceiling(shared_dir, tmp_path, monkeypatch):
    import rasterio
    from sklearn.metrics import roc_auc_score

    bench = _bench()
    monkeypatch.setattr(bench, "CHIP", shared_dir / "data" / "sen1floods11" / "Spain_7370579")
    assert bench.main(["--out", str(tmp_path), "--toy", "--parts", "floods", "--methods", "cleanlab"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    block = results["datasets"]["sen1floods11"]
    # the setup: 262,045 labelled pixels, 9.3 % of the NDWI label wrong against the hand label
    assert block["pixels"] == 262045 and round(100 * block["wrong_fraction"], 1) == 9.3
    stem = shared_dir / "data" / "sen1floods11" / "Spain_7370579"
    with rasterio.open(f"{stem}_S2Hand.tif") as src:
        s2 = src.read().astype(np.float64)
    with rasterio.open(f"{stem}_LabelHand.tif") as src:
        hand = src.read(1)
    ndwi = (s2[2] - s2[7]) / np.maximum(s2[2] + s2[7], 1.0)
    keep = ~(s2 == 0).all(axis=0) & (hand != -1)
    expected = roc_auc_score(((ndwi > 0).astype(int) != hand)[keep], -np.abs(ndwi)[keep])
    assert block["methods"]["NDWI-margin ceiling (-abs NDWI)"]["auc"] == pytest.approx(expected, abs=1e-9)
    # cleanlab's pixel score is the self-confidence p[label] of the out-of-sample softmax: recomputed here from
    # each fold's run on its held-out tiles (sklearn AUC of 1 - p[label] for the wrong NDWI labels); with 2
    # classes the normalized margin (p[label] - p[other] + 1) / 2 ranks the pixels the same way
    from noise_reference import run_batches

    scores, wrong = [], []
    for k in range(2):
        batches = run_batches(tmp_path / "floods" / "runs" / f"single-S2-fold{k}", ("test",), 4,
                              root=str(tmp_path / "floods" / "folds" / f"fold{k}"), crop_size=None, eval_crop=None,
                              eval_seasons="all", max_samples=None)
        for probs, labels, truth in batches:
            known = (labels != 255) & (truth != 255)
            confidence = np.take_along_axis(probs["s2"], np.where(known, labels, 0)[:, None], 1)[:, 0]
            scores.append(1.0 - confidence[known])
            wrong.append((labels != truth)[known])
    assert sum(w.size for w in wrong) == block["pixels"]
    self_confidence_auc = roc_auc_score(np.concatenate(wrong), np.concatenate(scores))
    for name in ("cleanlab pixel scores, 2-fold S2", "cleanlab normalized margin, 2-fold S2"):
        assert block["methods"][name]["auc"] == pytest.approx(self_confidence_auc, abs=1e-6), name
    # the flags of find_label_issues are 0/1 scores: their ROC-AUC is (TPR + TNR) / 2, from the reported
    # recall (TPR) and flagged fraction over the 262,045 pixels, 9.3 % of them wrong
    flags = block["methods"]["cleanlab find_label_issues, 2-fold S2"]
    n, positives = block["pixels"], round(block["wrong_fraction"] * block["pixels"])
    true_positives = flags["recall"] * positives
    false_positive_rate = (flags["flagged_fraction"] * n - true_positives) / (n - positives)
    assert flags["auc"] == pytest.approx((flags["recall"] + 1 - false_positive_rate) / 2, abs=1e-9)
    # every location was predicted out of sample exactly once: each fold's held-out rows are its test split
    folds = [bench.samples_of(tmp_path / "floods" / "folds" / f"fold{k}") for k in range(2)]
    held = [{r["location"] for r in rows if r["split"] == "test"} for rows in folds]
    assert held[0].isdisjoint(held[1]) and len(held[0] | held[1]) == 16
    assert "| cleanlab pixel scores, 2-fold S2 |" in (tmp_path / "results.md").read_text()
