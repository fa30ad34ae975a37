"""Curve figures: BN-KL vs epoch (Fig. 8c, d), weight KL bars (Fig. 12), PCA curves (Fig. 13)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt: Any, fig: Any, out: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; returns the path."""
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bn_kl(curves: Mapping[str, Sequence[Mapping[str, float]]], out: str | Path,
               window: int = 1) -> Path:
    """Fig. 8c, d: BN-KL vs epoch, encoder and decoder side by side; one line per compared pair.

    ``window`` > 1 smooths with a moving average (the paper: 5).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=False)
    for ax, part in zip(axes, ("encoder", "decoder")):
        for label, curve in curves.items():
            epochs = np.array([row["epoch"] for row in curve])
            values = np.array([row[part] for row in curve])
            if window > 1 and len(values) >= window:
                values = np.convolve(values, np.ones(window) / window, mode="valid")
                epochs = epochs[window - 1:]
            ax.plot(epochs, values, marker="o", ms=3, label=label)
        ax.set_title(f"BN statistics KL: {part}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("KL divergence")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _save_figure(plt, fig, out)


def plot_weight_kl(results: Mapping[str, Mapping[str, Mapping[str, float]]], out: str | Path) -> Path:
    """Fig. 12: bars of ``-1/log(KL)`` of encoder and decoder weights, one group per compared pair."""
    plt = _pyplot()
    labels = list(results)
    parts = ("encoder", "decoder")
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(labels) + 2), 3.4))
    x = np.arange(len(labels))
    for k, part in enumerate(parts):
        values = [results[label].get(part, {}).get("display", np.nan) for label in labels]
        ax.bar(x + (k - 0.5) * 0.38, values, width=0.38, label=part)
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("-1 / log(KL)")
    ax.set_title("weights before vs after fine-tuning")
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, out)


def plot_pca(curves: Mapping[str, Sequence[np.ndarray]], out: str | Path, title: str = "") -> Path:
    """Fig. 13: one panel per encoder, one curve per module vs the proportion of PCs, plus the diagonal."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.2), squeeze=False)
    for ax, (label, module_curves) in zip(axes[0], curves.items()):
        for index, curve in enumerate(module_curves, start=1):
            ax.plot(np.arange(1, len(curve) + 1) / len(curve), curve, label=f"module {index}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("number of PCs (proportion)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("accumulated variance ratio")
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(plt, fig, out)
