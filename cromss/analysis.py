"""What did the pretrained models learn? The analyses of Sec. IV-D/IV-E of the paper.

Pure functions (tensors / arrays in, numbers out):

* :func:`bn_kl` — KL divergence between the batch-norm statistics of two models (Fig. 8c, d);
* :func:`weight_kl` — discrete KL divergence between weight histograms (Fig. 12), shown as
  :func:`neg_inv_log` ``= -1 / log(KL)``;
* :func:`pca_curve` — accumulated explained-variance ratio of a feature set (Fig. 13);
* :func:`stage_features` — image-level / pixel-level features of each encoder stage (modules 1-5).

Glue (checkpoints, datasets, figures) lives below them: :func:`load_state_dict`,
:func:`bn_kl_curve`, :func:`mask_panels`, :func:`map_panels`, :func:`pca_curves`. The definitions
are documented in ``docs/analysis.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cromss.errors import CheckpointError, DataError

#: Suffixes of batch-norm buffers: they are statistics, not weights (excluded from :func:`weight_kl`).
BN_BUFFER_SUFFIXES: tuple[str, ...] = (".running_mean", ".running_var", ".num_batches_tracked")

#: Added to every bin of both histograms in :func:`weight_kl` so that empty bins give finite KL.
WEIGHT_KL_EPS: float = 1e-10


# ============================================================================ pure functions
def gaussian_kl(mean_a: torch.Tensor, var_a: torch.Tensor, mean_b: torch.Tensor,
                var_b: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(mean_a, var_a) || N(mean_b, var_b)) of 1-D Gaussians (same shapes).

    ``0.5 * (log(var_b / var_a) + (var_a + (mean_a - mean_b)^2) / var_b - 1)``.
    """
    var_a = var_a.double()
    var_b = var_b.double()
    diff = mean_a.double() - mean_b.double()
    return 0.5 * (torch.log(var_b / var_a) + (var_a + diff * diff) / var_b - 1.0)


def bn_layers(state: Mapping[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Names (without the ``.running_mean`` suffix) of the batch-norm layers under ``prefix``."""
    return sorted(
        key[: -len(".running_mean")]
        for key in state
        if key.startswith(prefix) and key.endswith(".running_mean")
        and key[: -len(".running_mean")] + ".running_var" in state
    )


def bn_kl(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], prefix: str = "",
          eps: float = 1e-5) -> float:
    """Mean KL divergence of the batch-norm statistics of model A from model B (Fig. 8c, d).

    Every BN channel stores the running mean and variance of the feature it normalises; we treat
    them as a Gaussian ``N(running_mean, running_var + eps)`` (``eps`` as BatchNorm adds it) and
    compute ``KL(N_a || N_b)`` per channel, average over the channels of a layer, then average the
    layers (so wide layers do not dominate). Only keys that start with ``prefix`` (e.g.
    ``"encoders.s2."`` or ``"decoder."``) are used.

    Args:
        state_a, state_b: state dicts holding ``<layer>.running_mean`` / ``<layer>.running_var``.
        prefix: key prefix selecting the part of the model (encoder or decoder).
        eps: variance floor, as ``torch.nn.BatchNorm2d.eps``.

    Returns:
        The mean KL divergence (>= 0; 0 for identical statistics).

    Raises:
        DataError: no BN layer under ``prefix`` in A, or B lacks a layer or has another width.
    """
    layers = bn_layers(state_a, prefix)
    if not layers:
        raise DataError(f"no batch-norm layer (keys '*.running_mean') starts with prefix '{prefix}'")
    per_layer = []
    for layer in layers:
        key_mean, key_var = layer + ".running_mean", layer + ".running_var"
        if key_mean not in state_b or key_var not in state_b:
            raise DataError(f"batch-norm layer '{layer}' is missing in the second model")
        mean_a, var_a = state_a[key_mean], state_a[key_var]
        mean_b, var_b = state_b[key_mean], state_b[key_var]
        if mean_a.shape != mean_b.shape:
            raise DataError(f"batch-norm layer '{layer}' has {tuple(mean_a.shape)} channels in the first "
                            f"model but {tuple(mean_b.shape)} in the second")
        kl = gaussian_kl(mean_a, var_a.double() + eps, mean_b, var_b.double() + eps)
        per_layer.append(float(kl.mean()))
    return float(np.mean(per_layer))


def weight_tensors(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Floating-point weights (conv/linear/BN affine weights and biases) under ``prefix``.

    BN running statistics and counters are buffers, not learned weights, and are left out.
    """
    return {
        key: value for key, value in state.items()
        if key.startswith(prefix) and not key.endswith(BN_BUFFER_SUFFIXES)
        and torch.is_tensor(value) and value.is_floating_point()
    }


def _flatten(tensors: Iterable[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
    values = tensors.values() if isinstance(tensors, Mapping) else tensors
    parts = [t.detach().reshape(-1).double().cpu() for t in values]
    if not parts or sum(p.numel() for p in parts) == 0:
        raise DataError("weight_kl got no weights (empty tensor list or no key matches the prefix)")
    return torch.cat(parts)


def weight_kl(tensors_before: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
              tensors_after: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
              bins: int = 100, eps: float = WEIGHT_KL_EPS) -> float:
    """Discrete KL divergence ``KL(P_before || P_after)`` of two weight distributions (Fig. 12).

    All values of each set are pooled into one vector; both vectors are binned into ``bins`` equal
    bins spanning the JOINT range ``[min, max]`` of both sets; counts are turned into probabilities,
    ``eps`` is added to every bin (so empty bins do not give log 0 or division by zero) and the
    distributions are renormalised. Identical sets give exactly 0.

    Args:
        tensors_before, tensors_after: tensors (or a name -> tensor mapping) of any shapes.
        bins: number of equal-width bins (the paper uses n = 100).
        eps: pseudo-probability added to every bin.

    Returns:
        ``sum_k p_k log(p_k / q_k)`` in nats.
    """
    if bins < 1:
        raise DataError(f"weight_kl: bins must be >= 1, got {bins}")
    before, after = _flatten(tensors_before), _flatten(tensors_after)
    low = float(min(before.min(), after.min()))
    high = float(max(before.max(), after.max()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise DataError("weight_kl: the weights contain NaN or infinite values")
    if high <= low:  # every weight has the same value in both sets
        return 0.0
    p = torch.histc(before, bins=bins, min=low, max=high)
    q = torch.histc(after, bins=bins, min=low, max=high)
    p = p / p.sum() + eps
    q = q / q.sum() + eps
    p, q = p / p.sum(), q / q.sum()
    return float(torch.sum(p * torch.log(p / q)).clamp_min(0.0))


def neg_inv_log(kl: float) -> float:
    """The display value ``-1 / log(KL)`` of Fig. 12 (0 for KL = 0; grows with KL for KL < 1).

    Meaningful for ``0 <= KL < 1``; KL >= 1 gives ``inf`` (the paper's KL values are far below 1).
    """
    if kl <= 0.0:
        return 0.0
    if kl >= 1.0:
        return math.inf
    return -1.0 / math.log(kl)


def pca_curve(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accumulated explained-variance ratio of a feature set (Fig. 13), via sklearn PCA.

    Args:
        features: ``[N, D]`` array, one feature vector per row (image or pixel).

    Returns:
        ``[min(N, D)]`` float64 array: entry k is the fraction of the total variance explained by the
        first k + 1 principal components; non-decreasing, last entry 1. Plot it against
        ``np.arange(1, K + 1) / K`` for the paper's "number of PCs in proportion".
    """
    from sklearn.decomposition import PCA

    x = features.detach().cpu().double().numpy() if torch.is_tensor(features) else np.asarray(features,
                                                                                             np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise DataError(f"pca_curve needs features of shape [N >= 2, D >= 1], got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("pca_curve: the features contain NaN or infinite values")
    if float(np.var(x, axis=0).sum()) <= 0.0:
        raise DataError("pca_curve: all feature vectors are identical (zero variance)")
    pca = PCA(n_components=min(x.shape), svd_solver="full").fit(x)
    curve = np.cumsum(pca.explained_variance_ratio_)
    # float rounding can leave the sum at 1 - 1e-16 or push a step below its predecessor
    curve = np.maximum.accumulate(curve / curve[-1])
    return curve


@torch.no_grad()
def stage_features(encoder: torch.nn.Module, images: torch.Tensor, pixels_per_image: int = 0,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Features of encoder modules 1-5 (smp encoder outputs 1..5, input to bottleneck), Fig. 13.

    Args:
        encoder: an smp encoder (its forward returns ``[input, stage1, ..., stage5]``).
        images: ``[B, C, H, W]`` model input.
        pixels_per_image: 0 -> image-level features (global average pooling, ``[B, D_s]`` per
            stage); k > 0 -> pixel-level features, k pixels sampled uniformly at random per image and
            stage (``[B * k, D_s]``; fewer if a stage has fewer pixels).
        generator: random source of the pixel sampling (for reproducible curves).

    Returns:
        One ``[rows, D_s]`` float32 tensor per stage (5 for a ResNet).
    """
    outputs = encoder(images)[1:]
    result = []
    for feature in outputs:
        b, d, h, w = feature.shape
        if pixels_per_image <= 0:
            result.append(feature.mean(dim=(2, 3)).float())
            continue
        flat = feature.permute(0, 2, 3, 1).reshape(b, h * w, d)
        k = min(pixels_per_image, h * w)
        rows = [flat[i, torch.randperm(h * w, generator=generator)[:k]] for i in range(b)]
        result.append(torch.cat(rows).float())
    return result


# ============================================================================ checkpoints
def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """Tensors of a checkpoint and the epoch it was saved at (None if unknown).

    Accepts a pretrain/fine-tune run folder (its ``checkpoints/last.ckpt`` or ``best.ckpt``), a
    Lightning ``.ckpt`` (read with ``weights_only=True``), a plain ``.pt``/``.pth`` state dict or a
    ``.safetensors`` file. A leading ``net.`` (Lightning module attribute) is removed from the keys.
    """
    from cromss.fetch import resolve_weights  # a published name (cromss/13b-midf) -> its cached file

    path = Path(resolve_weights(path))
    if path.is_dir():
        from cromss.weights import find_run_checkpoint

        path = find_run_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    epoch = None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file for the user
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    else:
        from cromss.checkpoints import safe_torch_load

        raw = safe_torch_load(path)
        if isinstance(raw, dict) and isinstance(raw.get("epoch"), int):
            epoch = int(raw["epoch"])
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
    if not isinstance(raw, dict) or not any(torch.is_tensor(v) for v in raw.values()):
        raise CheckpointError(f"{path} holds no state dict (no tensors found)")
    state = {k: v for k, v in raw.items() if torch.is_tensor(v)}
    if all(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items()}
    return state, epoch


#: Key prefixes of the encoder / decoder of ``modality`` in the layouts cromss meets, in search order:
#: CromSSNet (``encoders.s2.``), the authors' mid/late fusion checkpoints (``encoder1.`` = S1,
#: ``encoder.`` = S2, ``model1.``/``model2.``), a fine-tuned smp model (``model.encoder.``) and a bare
#: smp model or an exported encoder (``encoder.`` / no prefix).
def _prefix_candidates(part: str, modality: str) -> list[str]:
    late = "model1." if modality == "s1" else "model2."
    if part == "encoder":
        official = ["encoder1."] if modality == "s1" else ["encoder."]
        return [f"encoders.{modality}.", *official, late + "encoder.", "model.encoder.", "encoder.", ""]
    if part == "decoder":
        return ["decoders.shared.", f"decoders.{modality}.", late + "decoder.", "model.decoder.", "decoder."]
    raise DataError(f"unknown model part {part!r}; expected 'encoder' or 'decoder'")


def part_prefix(state: Mapping[str, torch.Tensor], part: str, modality: str = "s2") -> str:
    """The key prefix of the ``part`` (``'encoder'``/``'decoder'``) of ``modality`` in ``state``."""
    for prefix in _prefix_candidates(part, modality):
        if prefix == "":
            if any(k.startswith(("conv1.", "layer1.", "stem.", "features.")) for k in state):
                return ""  # a bare encoder state dict (e.g. an exported encoder)
            continue
        if any(k.startswith(prefix) for k in state):
            return prefix
    sample = ", ".join(sorted(state)[:5])
    raise DataError(f"no {modality.upper()} {part} found in the state dict (first keys: {sample}); pass "
                    f"the key prefix explicitly")


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_series(run: str | Path) -> dict[int, Path]:
    """Epoch -> checkpoint of a run folder (all ``checkpoints/*.ckpt``) or of one checkpoint file."""
    run = Path(run)
    if run.is_file():
        files = [run]
    elif run.is_dir():
        folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
        files = sorted(folder.glob("*.ckpt"))
    else:
        raise CheckpointError(f"run folder or checkpoint not found: {run}")
    if not files:
        raise CheckpointError(f"{run} holds no *.ckpt checkpoints")
    series: dict[int, Path] = {}
    for file in files:
        match = re.search(r"epoch[=_-]?(\d+)", file.name)
        epoch = int(match.group(1)) if match else read_state_dict(file)[1]
        if epoch is None:
            raise CheckpointError(f"{file}: cannot tell its epoch (no 'epoch' entry, no epoch=N in the name)")
        series.setdefault(epoch, file)
    return dict(sorted(series.items()))


def bn_kl_curve(run_a: str | Path, run_b: str | Path, modality: str = "s2",
                prefixes: Mapping[str, tuple[str, str]] | None = None) -> list[dict[str, float]]:
    """BN-KL of encoder and decoder of ``modality`` between two runs, per common saved epoch (Fig. 8c, d).

    Args:
        run_a, run_b: run folders (every ``checkpoints/*.ckpt``) or single checkpoints.
        modality: which U-Net (its encoder and its — possibly shared — decoder) to compare.
        prefixes: optional ``{"encoder": (prefix_a, prefix_b), "decoder": (...)}`` overriding detection.

    Returns:
        ``[{"epoch": e, "encoder": kl, "decoder": kl}, ...]`` sorted by epoch.
    """
    series_a, series_b = checkpoint_series(run_a), checkpoint_series(run_b)
    if Path(run_a).is_file() and Path(run_b).is_file():
        epochs = [next(iter(series_a))]
        series_b = {epochs[0]: next(iter(series_b.values()))}
    else:
        epochs = sorted(set(series_a) & set(series_b))
    if not epochs:
        raise DataError(f"{run_a} (epochs {sorted(series_a)}) and {run_b} (epochs {sorted(series_b)}) "
                        "have no saved epoch in common")
    curve = []
    for epoch in epochs:
        state_a, _ = read_state_dict(series_a[epoch])
        state_b, _ = read_state_dict(series_b[epoch])
        row: dict[str, float] = {"epoch": float(epoch)}
        for part in ("encoder", "decoder"):
            if prefixes and part in prefixes:
                pa, pb = prefixes[part]
            else:
                pa, pb = part_prefix(state_a, part, modality), part_prefix(state_b, part, modality)
            row[part] = bn_kl(sub_state(state_a, pa), sub_state(state_b, pb))
        curve.append(row)
    return curve


def weight_kl_parts(before: str | Path, after: str | Path, modality: str = "s2", bins: int = 100,
                    parts: Sequence[str] = ("encoder", "decoder")) -> dict[str, dict[str, float]]:
    """Weight KL of encoder and decoder before vs after fine-tuning (Fig. 12).

    Returns ``{part: {"kl": kl, "display": -1/log(kl)}}``; a part missing in either file is skipped.
    """
    state_before, _ = read_state_dict(before)
    state_after, _ = read_state_dict(after)
    result = {}
    for part in parts:
        try:
            pb, pa = part_prefix(state_before, part, modality), part_prefix(state_after, part, modality)
        except DataError:
            continue
        kl = weight_kl(weight_tensors(state_before, pb), weight_tensors(state_after, pa), bins=bins)
        result[part] = {"kl": kl, "display": neg_inv_log(kl)}
    if not result:
        raise DataError(f"neither an encoder nor a decoder was found in both {before} and {after}")
    return result


# ============================================================================ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


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

    With ``bands`` (the input's band names): true colour B4, B3, B2 (or red, green, blue) when present.
    Else S2: true colour B4, B3, B2 of the 13/9-band tables; S1 and other 2-band inputs: false colour
    (VV, VH, VV); 1 band: grey; others: the first three channels.
    """
    x = image.detach().cpu().float().numpy() if torch.is_tensor(image) else np.asarray(image, np.float32)
    channels = None
    if bands is not None:
        lookup = {str(b).lower(): i for i, b in enumerate(bands)}
        for names in (("b4", "b3", "b2"), ("red", "green", "blue"), ("r", "g", "b")):
            if all(n in lookup for n in names):
                channels = tuple(lookup[n] for n in names)
                break
    if channels is None:
        if modality == "s2" and x.shape[0] in (13, 9):
            channels = (3, 2, 1) if x.shape[0] == 13 else (2, 1, 0)  # 9-band order starts B2, B3, B4
        elif x.shape[0] == 1:
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


def pca_curves(encoder: torch.nn.Module, images: torch.Tensor, pixels_per_image: int = 0,
               seed: int = 0) -> list[np.ndarray]:
    """Accumulated explained-variance curves of modules 1-5 of ``encoder`` on ``images`` (Fig. 13)."""
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    features = stage_features(encoder, images, pixels_per_image, generator)
    return [pca_curve(f) for f in features]


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


def load_encoder(source: str | Path, modality: str = "s2") -> torch.nn.Module:
    """An smp encoder (depth 5, eval mode) with the weights of any source cromss.weights reads
    (pretrain run/checkpoint, export, official CromSS or SSL4EO-S12 ResNet file)."""
    import segmentation_models_pytorch as smp

    from cromss.weights import encoder_state_dict, load_into

    _, info = encoder_state_dict(source, modality)
    name = info.get("encoder")
    if not name:
        raise CheckpointError(f"{source}: cannot tell the encoder architecture of these weights")
    encoder = smp.encoders.get_encoder(name, in_channels=int(info["in_channels"]), depth=5, weights=None)
    load_into(encoder, source, modality)  # strict: every weight must fit
    return encoder.eval()
