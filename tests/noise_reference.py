"""An independent reference for the noise-flagging score ``1 - W_l`` and its ROC-AUC (tests only).

Eqs. (8), (10) and (11) of the paper written out in numpy from their definitions (a per-class sort, read
literally), without cromss.selection; the ROC-AUC and average precision are sklearn's. Tests compare the
numbers cromss reports (``val/noise_auc_*`` of a pretraining run, ``measure_noise_detection``) with these.

The arithmetic keeps the dtype of the probabilities it is given: float32 softmax outputs, as cromss computes
them, give float32 weights. (In float64 the same confidences give a slightly different AUC for near-random
networks: a confidence within float32 rounding of its class threshold gets w = 1 in float32, w = 1 - 1e-7 in
float64, and with thousands of such ties the AUC moves by ~1e-3.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

IGNORE = 255


def ramp_alpha(epoch: float, alpha0: float, rampup_epochs: float) -> float:
    """``alpha(e) = 1 - exp(-5 (1 - clip(e / n_s, 0, 1))^2) (1 - alpha0)`` (Sec. III-B), 1 ramp = 1 at n_s = 0."""
    ramp = 1.0 if rampup_epochs == 0 else math.exp(-5.0 * (1.0 - min(max(epoch / rampup_epochs, 0.0), 1.0)) ** 2)
    return 1.0 - ramp * (1.0 - alpha0)


def label_weights(conf: np.ndarray, labels: np.ndarray, alpha: float, num_classes: int) -> np.ndarray:
    """Eq. (11): per class c, threshold = the k_c-th largest confidence, k_c = max(1, floor(alpha N_c));
    w = min(1, f / threshold) (1 where the threshold is 0); 0 at ignored pixels."""
    conf = np.asarray(conf)
    one = conf.dtype.type(1.0)
    out = np.zeros(conf.shape, conf.dtype)
    for c in range(num_classes):
        members = labels == c
        count = int(members.sum())
        if not count:
            continue
        ranked = np.sort(conf[members])[::-1]
        k = min(count, max(1, math.floor(alpha * count + 1e-6)))
        threshold = ranked[k - 1]
        out[members] = one if threshold <= 0 else np.minimum(one, conf[members] / threshold)
    return out


def noise_scores(probs: Mapping[str, np.ndarray], labels: np.ndarray, alpha: float,
                 enhance: bool = True) -> dict[str, np.ndarray]:
    """``1 - W_l`` per modality for one batch: probs ``[B, C, H, W]`` (softmax), labels ``[B, H, W]``.

    f_l = p at the noisy label (eq. 8); with two or more modalities and ``enhance`` the cross-modal
    enhancement f'_d = f_d (1 + mean of the other f) / 2 (eq. 10); then eq. (11) over the whole batch.
    """
    labelled = labels != IGNORE
    safe = np.where(labelled, labels, 0)
    names = list(probs)
    num_classes = next(iter(probs.values())).shape[1]
    dtype = np.asarray(next(iter(probs.values()))).dtype
    conf = {m: np.where(labelled, np.take_along_axis(np.asarray(p), safe[:, None], 1)[:, 0], 0).astype(dtype)
            for m, p in probs.items()}
    if enhance and len(names) > 1:
        conf = {m: (conf[m] * (1 + np.mean([conf[o] for o in names if o != m], axis=0, dtype=dtype)) / 2
                    ).astype(dtype) for m in names}
    return {m: 1 - label_weights(conf[m], labels, alpha, num_classes) for m in names}


def noise_auc(batches: Iterable[tuple[Mapping[str, np.ndarray], np.ndarray, np.ndarray]], alpha: float,
              enhance: bool = True) -> dict[str, dict[str, float]]:
    """sklearn ROC-AUC and average precision of ``1 - W_l`` for ``label != label_true`` over batches of
    ``(probs, labels, truth)``; pixels unlabelled in either label are left out (positives: wrong labels).
    ``auc_1001`` is torchmetrics' ROC-AUC binned at 1001 thresholds (what a training run logs)."""
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score
    from torchmetrics.functional.classification import binary_auroc

    scores: dict[str, list[np.ndarray]] = {}
    targets = []
    for probs, labels, truth in batches:
        known = (labels != IGNORE) & (truth != IGNORE)
        targets.append((labels != truth)[known])
        for m, score in noise_scores(probs, labels, alpha, enhance).items():
            scores.setdefault(m, []).append(score[known])
    target = np.concatenate(targets)
    out = {}
    for m, parts in scores.items():
        score = np.concatenate(parts)
        binned = binary_auroc(torch.from_numpy(score).float(), torch.from_numpy(target).long(), thresholds=1001)
        out[m] = {"auc": float(roc_auc_score(target, score)), "auc_1001": float(binned),
                  "ap": float(average_precision_score(target, score)), "pixels": int(target.size),
                  "noise_rate": float(target.mean())}
    return out


def run_batches(run_dir, split_names: Iterable[str], batch_size: int, **data_changes):
    """``(probs, labels, truth)`` batches of a finished pretraining run's final network (``last.ckpt``) on
    the given splits, in dataset order, ``batch_size`` samples at a time (numpy; float32 softmax, as in cromss)."""
    import dataclasses

    import torch

    from cromss.config import from_dict
    from cromss.data import build_dataset
    from cromss.training import PretrainConfig
    from cromss.weights import load_cromss_net

    net, config = load_cromss_net(run_dir)
    net.eval()
    cfg = from_dict(PretrainConfig, config)
    data_cfg = dataclasses.replace(cfg.data, **data_changes)
    modalities = list(cfg.model.modalities)
    for split in split_names:
        dataset = build_dataset(data_cfg, split, train=False)
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            inputs = {m: torch.stack([s[m] for s in samples]) for m in modalities}
            with torch.no_grad():
                logits = net(inputs)
            probs = {m: logits[m].float().softmax(1).numpy() for m in modalities}
            yield (probs, torch.stack([s["label"] for s in samples]).numpy(),
                   torch.stack([s["label_true"] for s in samples]).numpy())
