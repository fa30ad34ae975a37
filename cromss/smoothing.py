"""Spatial-temporal label smoothing of CromSS (Liu et al., TGRS 2025, Sec. III-C, eqs. 13-15).

``Z' = (1 - beta - mu) Z + beta U + mu (Z * G + <Z>_t * G) / 2``, computed batched on the training
device after cropping. ``G`` is the normalised 2-D Gaussian of std ``sigma`` truncated at radius
``int(4 sigma + 0.5)`` with SciPy's half-sample symmetric ``'reflect'`` border (``d c b a | a b c d``),
i.e. the same numbers as ``scipy.ndimage.gaussian_filter(..., mode='reflect', truncate=4)``.

No value is read back to the host except by the input checks of :func:`smooth_labels`, which a
training step skips with ``validate=False`` (its loader has checked the labels already); the blur
matrices are built once per (size, sigma, dtype, device) and cached.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from cromss.errors import ConfigError, DataError

__all__ = ["gaussian_blur", "gaussian_kernel1d", "smooth_labels"]


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """Normalised 1-D Gaussian of std ``sigma`` on ``[-r, r]``, ``r = int(4 sigma + 0.5)`` (SciPy's rule).

    ``sigma = 0`` gives the identity kernel ``[1]``.
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"smoothing sigma must be >= 0, got {sigma!r}")
    radius = int(4.0 * sigma + 0.5)
    if radius == 0 or sigma == 0:
        return torch.ones(1, dtype=dtype, device=device)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _reflect_indices(size: int, radius: int, device) -> Tensor:
    """Source indices of ``arange(-radius, size + radius)`` under half-sample symmetric reflection.

    Periodic with period ``2 size``, so windows larger than the image are handled as SciPy does.
    """
    positions = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(positions >= size, 2 * size - 1 - positions, positions)


def _blur_matrix(size: int, kernel: Tensor) -> Tensor:
    """``[size, size]`` matrix ``A`` with ``A @ x`` = 1-D Gaussian blur of ``x`` with 'reflect' border.

    Row ``i`` holds the kernel taps ``g_k`` at the reflected source index of ``i + k - r``; taps that
    reflect onto the same pixel are summed, so each row sums to 1.
    """
    radius = (kernel.numel() - 1) // 2
    rows = torch.arange(size, device=kernel.device).repeat_interleave(kernel.numel())
    offsets = torch.arange(kernel.numel(), device=kernel.device).repeat(size)
    cols = _reflect_indices(size, radius, kernel.device)[rows + offsets]
    matrix = torch.zeros(size, size, dtype=kernel.dtype, device=kernel.device)
    matrix.index_put_((rows, cols), kernel.repeat(size), accumulate=True)
    return matrix


@functools.lru_cache(maxsize=32)
def _cached_blur_matrix(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    # built on the CPU (the same numbers as before the cache), moved once: no upload per training step
    return _blur_matrix(size, gaussian_kernel1d(sigma, dtype=dtype)).to(device=device)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of every channel of ``maps`` ``[B, C, H, W]`` (SciPy 'reflect' border).

    The 1-D blurs along H and W are applied as banded matrix products ``A_H @ X @ A_W^T``: on CPU
    this is several times faster than a depthwise ``conv2d`` for crop sizes up to a few hundred
    pixels, and the reflection (including windows larger than the image) is folded into ``A``.
    """
    kernel = gaussian_kernel1d(sigma)
    if kernel.numel() == 1:
        return maps.clone()
    height, width = maps.shape[-2:]
    along_h = _cached_blur_matrix(height, float(sigma), maps.dtype, maps.device)
    along_w = _cached_blur_matrix(width, float(sigma), maps.dtype, maps.device)
    return torch.matmul(torch.matmul(along_h, maps), along_w.T)


def smooth_labels(
    labels_all_seasons: Tensor,
    season: Tensor,
    num_classes: int,
    beta: float,
    mu: float,
    sigma: float = 3.0,
    ignore_index: int = 255,
    num_timestamps: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """Smoothed soft labels ``Z'`` of the chosen season (eqs. 13-15).

    ``Z`` is the one-hot label of season ``season[b]``, ``<Z>_t`` the mean one-hot over all ``T``
    seasons, and the spatial-temporal prior ``P = (Z * G + <Z>_t * G) / 2``. Ignored pixels are
    all-zero one-hot rows, so they contribute nothing to ``P``; ``P`` is then renormalised to sum
    to 1 over classes at each labelled pixel (a no-op where every pixel in the window is labelled in
    every season). Labelled pixels get ``Z' = (1 - beta - mu) Z + beta / C + mu P`` (sums to 1);
    pixels whose chosen-season label is ignored get an all-zero row (they have weight 0 in the
    loss). ``beta = mu = 0`` returns exactly the one-hot labels.

    Args:
        labels_all_seasons: class ids ``[B, T, H, W]`` (int), ``ignore_index`` where unlabelled.
        season: ``[B]`` index into ``T`` of the season fed to the model.
        num_classes: ``C``.
        beta: weight of the uniform distribution (paper: 0.05).
        mu: weight of the spatial-temporal prior (paper: 0.15).
        sigma: std of the Gaussian in pixels (official code: 3, radius 12).
        ignore_index: label value of unlabelled pixels.
        num_timestamps: ``[B]`` number of real timestamps of each sample when ``labels_all_seasons`` is
            padded (locations with fewer timestamps than ``T``): ``<Z>_t`` averages the first
            ``num_timestamps[b]`` only. None = all ``T`` are real. With one timestamp ``<Z>_t = Z`` and
            the prior is the spatial term ``Z * G`` alone.
        validate: check the VALUES of ``season``, ``labels_all_seasons`` and ``num_timestamps``
            (DataError naming the first bad one). Each check reads a value back to the host (a
            device synchronisation on GPU); the training step passes False because its loader
            (:class:`cromss.data.core.SegmentationDataset`) has checked every sample. Shapes, dtypes
            and the parameters are always checked. Out-of-range values with ``validate=False`` give
            wrong numbers or a device-side index error.

    Returns:
        ``[B, C, H, W]`` float32 soft labels on the labels' device.
    """
    for name, value in (("beta", beta), ("mu", mu)):
        if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise ConfigError(f"smoothing {name} must be a number >= 0, got {value!r}")
    if beta + mu > 1.0 + 1e-12:
        raise ConfigError(f"smoothing beta + mu must be <= 1, got beta={beta} mu={mu}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if labels_all_seasons.dim() != 4:
        raise DataError(
            f"labels_all_seasons must have shape [B, T, H, W], got {tuple(labels_all_seasons.shape)}"
        )
    if labels_all_seasons.dtype.is_floating_point or labels_all_seasons.dtype == torch.bool:
        raise DataError(f"labels_all_seasons must be an integer tensor, got {labels_all_seasons.dtype}")
    batch, num_seasons, height, width = labels_all_seasons.shape
    season = torch.as_tensor(season, device=labels_all_seasons.device).reshape(-1).long()
    if season.numel() != batch:
        raise DataError(f"season must have one entry per sample ({batch}), got shape {tuple(season.shape)}")
    if validate and batch and (bool((season < 0).any()) or bool((season >= num_seasons).any())):
        raise DataError(f"season index out of range 0..{num_seasons - 1}: {season.tolist()}")
    labels = labels_all_seasons.long()
    labelled = labels != ignore_index
    if validate:
        bad = labelled & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            raise DataError(
                f"label value {int(labels[bad][0])} is not a class id in 0..{num_classes - 1} "
                f"nor the ignore index {ignore_index}"
            )

    # One-hot by comparison: ignored pixels match no class and get an all-zero row.
    class_ids = torch.arange(num_classes, device=labels.device).view(1, 1, num_classes, 1, 1)
    one_hot_all = (labels.unsqueeze(2) == class_ids).to(torch.float32)  # [B, T, C, H, W]
    batch_index = torch.arange(batch, device=labels.device)
    current = one_hot_all[batch_index, season]  # Z: [B, C, H, W]
    current_labelled = labelled[batch_index, season]  # [B, H, W]
    if beta == 0 and mu == 0:
        return current

    smoothed = (1.0 - beta - mu) * current + beta / num_classes
    if mu > 0:
        # Convolution is linear: blur (Z + <Z>_t) / 2 once instead of Z and <Z>_t separately.
        if num_timestamps is None:
            temporal = one_hot_all.mean(dim=1)
        else:
            counts = torch.as_tensor(num_timestamps, device=labels.device).reshape(-1).long()
            out_of_range = validate and (bool((counts < 1).any()) or bool((counts > num_seasons).any()))
            if counts.numel() != batch or out_of_range:
                raise DataError(f"num_timestamps must be [B] values in 1..{num_seasons}, got {counts.tolist()}")
            real = torch.arange(num_seasons, device=labels.device).view(1, -1) < counts.view(-1, 1)  # [B, T]
            weights = real.to(torch.float32) / counts.view(-1, 1).to(torch.float32)
            temporal = (one_hot_all * weights.view(batch, num_seasons, 1, 1, 1)).sum(dim=1)
        prior = gaussian_blur((current + temporal) / 2.0, sigma)
        prior = prior / prior.sum(dim=1, keepdim=True).clamp_min(torch.finfo(prior.dtype).tiny)
        smoothed = smoothed + mu * prior
    return smoothed * current_labelled.unsqueeze(1).to(smoothed.dtype)
