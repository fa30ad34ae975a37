"""Per-sample figures: selection-mask panels (Fig. 11) and segmentation maps side by side (Figs. 6, 7, 9, 10)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cromss.analysis.plots import _pyplot
from cromss.errors import DataError


def _hex_rgb(color: str) -> tuple[float, float, float]:
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def label_rgb(labels: np.ndarray | torch.Tensor, classes: Any = None) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` in the class table's colours; ignored pixels white."""
    from cromss.schema import DW_CLASSES

    classes = classes or DW_CLASSES
    ids = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    palette = np.ones((256, 3))
    for index, color in enumerate(classes.colors):
        palette[index] = _hex_rgb(color)
    return palette[np.clip(ids, 0, 255).astype(np.int64)]


def image_rgb(image: np.ndarray | torch.Tensor, modality: str, bands: Sequence[str] | None = None) -> np.ndarray:
    """A display RGB ``[H, W, 3]`` of a normalised input ``[C, H, W]`` (2-98 % stretch).

    True colour BY BAND NAME (:func:`cromss.bands.true_color`: the sensor's red, green, blue — Sentinel-2
    B4, B3, B2 in any spelling and order, ``B04`` is ``B4`` — or bands named red, green, blue): from
    ``bands`` (the input's band names), else from the published table of the sensor with as many bands
    (13 L1C, 12 L2A, 9). S1 and other 2-band inputs: false colour (VV, VH, VV); 1 band: grey; others:
    the first three channels.
    """
    from cromss import bands as band_ids

    x = image.detach().cpu().float().numpy() if torch.is_tensor(image) else np.asarray(image, np.float32)
    names = list(bands) if bands is not None and len(bands) == x.shape[0] else band_ids.known_table(modality, x.shape[0])
    channels = band_ids.true_color(names, modality) if names is not None else None
    if channels is None:
        if x.shape[0] == 1:
            channels = (0, 0, 0)
        elif x.shape[0] == 2 or modality == "s1":
            channels = (0, 1, 0)
        else:
            channels = (0, 1, 2)
    rgb = np.stack([x[c] for c in channels], axis=-1)
    low, high = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return np.clip((rgb - low) / max(high - low, 1e-6), 0, 1)


def _legend(fig: Any, classes: Any) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, edgecolor="k", label=n.replace("_", " ")) for n, c in
               zip(classes.names, classes.colors)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 9), fontsize=8, frameon=False)


MASK_COLUMNS: tuple[tuple[str, str], ...] = (
    ("f_l", "$F_l$"), ("f_l_enh", "$F_l'$"), ("w_l", "$W_l$"),
    ("f_e", "$F_e$"), ("f_e_enh", "$F_e'$"), ("w_e", "$W_e$"),
)


@torch.no_grad()
def selection_masks(net: torch.nn.Module, batch: Mapping[str, Any], alpha: float, gamma: float,
                    enhance: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Selection masks (eqs. 8-12) of a pretraining net on a batch: ``{modality: {f_l, ..., w_e}}``."""
    from cromss.schema import IGNORE_INDEX
    from cromss.selection import selection_weights

    net.eval()
    probs = {m: torch.softmax(net.forward_modality(m, batch[m]).float(), dim=1) for m in net.modalities}
    num_classes = next(iter(probs.values())).shape[1]
    return selection_weights(probs, batch["label"], alpha, gamma, num_classes, IGNORE_INDEX, enhance=enhance)


def mask_panels(net: torch.nn.Module, batch: Mapping[str, Any], out_dir: str | Path, alpha: float,
                gamma: float, enhance: bool = True, classes: Any = None, title: str = "",
                bands: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """One PNG per sample: per modality the input, noisy label, true label (if known), F_l, F_l', W_l,
    F_e, F_e', W_e (Fig. 11), with the class legend and a [0, 1] colour bar."""
    from cromss.schema import DW_CLASSES

    classes = classes or DW_CLASSES
    plt = _pyplot()
    masks = selection_masks(net, batch, alpha, gamma, enhance)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    has_true = "label_true" in batch
    columns = ["input", "noisy label"] + (["true label"] if has_true else []) + [t for _, t in MASK_COLUMNS]
    modalities = list(masks)
    written = []
    for i in range(batch["label"].shape[0]):
        fig, axes = plt.subplots(len(modalities), len(columns), figsize=(1.9 * len(columns),
                                                                           2.0 * len(modalities) + 0.9),
                                 squeeze=False)
        image = None
        for r, modality in enumerate(modalities):
            panels = [image_rgb(batch[modality][i], modality, (bands or {}).get(modality)),
                      label_rgb(batch["label"][i], classes)]
            if has_true:
                panels.append(label_rgb(batch["label_true"][i], classes))
            for c, panel in enumerate(panels):
                axes[r, c].imshow(panel, interpolation="nearest")
            for c, (key, _) in enumerate(MASK_COLUMNS, start=len(panels)):
                image = axes[r, c].imshow(masks[modality][key][i].cpu().numpy(), vmin=0, vmax=1,
                                          cmap="viridis", interpolation="nearest")
            axes[r, 0].set_ylabel(modality.upper())
        for c, name in enumerate(columns):
            axes[0, c].set_title(name, fontsize=9)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        sample_id = str(batch["id"][i]) if "id" in batch else str(i)
        fig.suptitle(f"{title} {sample_id}  (alpha={alpha:.2f}, gamma={gamma:.2f})".strip(), fontsize=10)
        fig.subplots_adjust(left=0.04, right=0.93, top=0.85, bottom=0.2, wspace=0.05, hspace=0.08)
        if image is not None:
            fig.colorbar(image, cax=fig.add_axes((0.94, 0.25, 0.012, 0.55)))
        _legend(fig, classes)
        written.append(_save_panel(plt, fig, out_dir, "masks", i, sample_id))
    return written


def _save_panel(plt: Any, fig: Any, out_dir: Path, prefix: str, index: int, sample_id: str) -> Path:
    """Save one per-sample figure as ``<prefix>_<index>_<safe id>.png`` and close it."""
    path = out_dir / f"{prefix}_{index:02d}_{re.sub(r'[^A-Za-z0-9._-]', '_', sample_id)}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def map_panels(nets: Mapping[str, torch.nn.Module], batch: Mapping[str, Any], out_dir: str | Path,
               classes: Any = None, bands: Mapping[str, Sequence[str]] | None = None) -> list[Path]:
    """One PNG per sample: the inputs, the labels, then the map of every (run, modality) side by side
    (Figs. 6, 7, 9, 10). Invalid input pixels are shown as ignored (white)."""
    from cromss.schema import DW_CLASSES, IGNORE_INDEX

    classes = classes or DW_CLASSES
    plt = _pyplot()
    maps: dict[str, torch.Tensor] = {}
    for label, net in nets.items():
        net.eval()
        for modality in net.modalities:
            if modality not in batch:
                raise DataError(f"run '{label}' needs {modality.upper()} input, which the data do not load")
            pred = net.forward_modality(modality, batch[modality]).argmax(dim=1)
            if "valid" in batch:
                pred = torch.where(batch["valid"], pred, torch.full_like(pred, IGNORE_INDEX))
            maps[f"{label} ({modality.upper()})"] = pred
    used = [m for net in nets.values() for m in net.modalities]
    inputs = [m for m in dict.fromkeys(["s2", "s1", *used]) if m in batch and torch.is_tensor(batch[m])]
    label_keys = [k for k in ("label", "label_true") if k in batch]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(batch["label"].shape[0]):
        panels = [(m.upper(), image_rgb(batch[m][i], m, (bands or {}).get(m))) for m in inputs]
        panels += [("noisy label" if k == "label" else "true label", label_rgb(batch[k][i], classes))
                   for k in label_keys]
        panels += [(name, label_rgb(pred[i], classes)) for name, pred in maps.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 3.1), squeeze=False)
        for ax, (name, panel) in zip(axes[0], panels):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        sample_id = str(batch["id"][i]) if "id" in batch else str(i)
        fig.suptitle(sample_id, fontsize=9)
        fig.subplots_adjust(left=0.02, right=0.98, top=0.8, bottom=0.2, wspace=0.05)
        _legend(fig, classes)
        written.append(_save_panel(plt, fig, out_dir, "maps", i, sample_id))
    return written
