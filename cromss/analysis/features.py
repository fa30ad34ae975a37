"""PCA of encoder features (Fig. 13): the accumulated explained-variance ratio of encoder modules 1-5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cromss.errors import CheckpointError, DataError


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


def pca_curves(encoder: torch.nn.Module, images: torch.Tensor, pixels_per_image: int = 0,
               seed: int = 0) -> list[np.ndarray]:
    """Accumulated explained-variance curves of modules 1-5 of ``encoder`` on ``images`` (Fig. 13)."""
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    features = stage_features(encoder, images, pixels_per_image, generator)
    return [pca_curve(f) for f in features]


def encoder_input(images: torch.Tensor, image_bands: Sequence[str] | None, encoder: torch.nn.Module,
                  encoder_bands: Sequence[str] | None, modality: str, where: str) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` as the encoder takes them: its bands picked BY NAME from the data's
    (:mod:`cromss.bands`, ``B02`` is ``B2``) when both sides name their bands, else as they are; a band
    the data lacks, or a band count that differs, is one DataError line."""
    from cromss import bands as band_ids

    conv = next((m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)), None)
    channels = int(conv.in_channels) if conv is not None else images.shape[1]
    if image_bands is not None and encoder_bands is not None and len(encoder_bands) == channels:
        missing = band_ids.missing_bands(image_bands, encoder_bands, modality)
        if missing:
            raise DataError(f"{where} was trained on {modality} bands {list(encoder_bands)}; the data lacks "
                            f"{missing} (it has {list(image_bands)})")
        return images[:, band_ids.pick(image_bands, encoder_bands, modality)]
    if images.shape[1] != channels:
        raise DataError(f"{where} takes {channels} {modality} bands but the data's {modality} images have "
                        f"{images.shape[1]}" + (f" ({', '.join(image_bands)})" if image_bands else "")
                        + "; give --data / --modality with the encoder's bands")
    return images


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
