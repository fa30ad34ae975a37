"""Tests of cromss.smoothing (eqs. 13-15) against hand values and scipy.ndimage.gaussian_filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cromss.errors import ConfigError, DataError
from cromss.smoothing import gaussian_blur, gaussian_kernel1d, smooth_labels

IGN = 255


def _scipy_blur(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each [H, W] plane of an [..., H, W] array with SciPy (mode 'reflect', truncate 4)."""
    out = np.empty_like(maps)
    for index in np.ndindex(maps.shape[:-2]):
        out[index] = gaussian_filter(maps[index], sigma=sigma, mode="reflect", truncate=4.0)
    return out


def _scipy_smooth(labels_all: np.ndarray, season: np.ndarray, num_classes: int, beta: float, mu: float,
                  sigma: float) -> np.ndarray:
    """Eq. (13)-(15) with SciPy blur and the documented ignore handling, in float64."""
    batch, seasons, height, width = labels_all.shape
    one_hot = np.zeros((batch, seasons, num_classes, height, width))
    for c in range(num_classes):
        one_hot[:, :, c] = labels_all == c
    current = one_hot[np.arange(batch), season]
    prior = (_scipy_blur(current, sigma) + _scipy_blur(one_hot.mean(axis=1), sigma)) / 2
    prior = prior / np.maximum(prior.sum(axis=1, keepdims=True), 1e-300)
    smoothed = (1 - beta - mu) * current + beta / num_classes + mu * prior
    labelled = labels_all[np.arange(batch), season] != IGN
    return smoothed * labelled[:, None]


def test_kernel_matches_scipy_radius_and_weights() -> None:
    kernel = gaussian_kernel1d(3.0, dtype=torch.float64)
    assert kernel.numel() == 25  # radius int(4 * 3 + 0.5) = 12
    impulse = np.zeros(41)
    impulse[20] = 1.0
    expected = gaussian_filter(impulse, sigma=3.0, truncate=4.0)[8:33]
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-15)
    assert gaussian_kernel1d(0.0).tolist() == [1.0]


@pytest.mark.parametrize("shape,sigma", [((9, 11), 1.5), ((5, 7), 3.0), ((1, 6), 2.0), ((3, 2), 3.0)])
def test_gaussian_blur_matches_scipy_reflect_including_large_windows(shape, sigma) -> None:
    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 3, *shape, generator=generator, dtype=torch.float64)
    expected = _scipy_blur(maps.numpy(), sigma)
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)


def test_beta_mu_zero_is_exactly_one_hot() -> None:
    labels = torch.tensor([[[[0, 2], [IGN, 1]], [[1, 1], [1, 1]]]])  # [1, 2, 2, 2]
    out = smooth_labels(labels, torch.tensor([0]), num_classes=3, beta=0.0, mu=0.0)
    expected = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]]])
    assert torch.equal(out, expected)


def test_uniform_only_and_constant_maps_by_hand() -> None:
    labels = torch.ones(1, 1, 4, 4, dtype=torch.long)
    out = smooth_labels(labels, torch.tensor([0]), num_classes=4, beta=0.2, mu=0.0)
    torch.testing.assert_close(out[0, :, 2, 3], torch.tensor([0.05, 0.85, 0.05, 0.05]))
    # constant map: the blur of a constant is the constant -> (1 - beta) one-hot + beta / C
    out = smooth_labels(labels, torch.tensor([0]), num_classes=3, beta=0.05, mu=0.15)
    torch.testing.assert_close(out[0, :, 1, 1], torch.tensor([0.05 / 3, 0.95 + 0.05 / 3, 0.05 / 3]))


def test_temporal_term_by_hand() -> None:
    # season 0 all class 0, season 1 all class 1; chosen season 0 -> Z = [1, 0], <Z>_t = [.5, .5]
    # prior = ([1, 0] + [.5, .5]) / 2 = [.75, .25]; Z' = .8 Z + .025 + .15 prior = [.9375, .0625]
    labels = torch.stack([torch.zeros(6, 5), torch.ones(6, 5)]).long().unsqueeze(0)
    out = smooth_labels(labels, torch.tensor([0]), num_classes=2, beta=0.05, mu=0.15, sigma=1.0)
    torch.testing.assert_close(out[0, :, 3, 2], torch.tensor([0.9375, 0.0625]))
    out = smooth_labels(labels, torch.tensor([1]), num_classes=2, beta=0.05, mu=0.15, sigma=1.0)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.0625, 0.9375]))


def test_matches_scipy_on_random_one_hot_maps() -> None:
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 5, (3, 4, 20, 17), generator=generator)
    season = torch.tensor([0, 3, 1])
    out = smooth_labels(labels, season, num_classes=5, beta=0.05, mu=0.15, sigma=3.0)
    expected = _scipy_smooth(labels.numpy(), season.numpy(), 5, 0.05, 0.15, 3.0)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)
    torch.testing.assert_close(out.sum(1), torch.ones(3, 20, 17))


def test_ignored_pixels_sum_to_one_where_labelled_zero_elsewhere() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 4, (2, 4, 16, 16), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.3] = IGN
    labels[1, :, :8] = IGN  # a fully unlabelled half in every season
    season = torch.tensor([2, 0])
    out = smooth_labels(labels, season, num_classes=4, beta=0.05, mu=0.15, sigma=2.0)
    chosen = labels[torch.arange(2), season]
    sums = out.sum(1)
    torch.testing.assert_close(sums[chosen != IGN], torch.ones(int((chosen != IGN).sum())))
    assert torch.all(out.permute(0, 2, 3, 1)[chosen == IGN] == 0)
    assert (out >= 0).all() and torch.isfinite(out).all()
    expected = _scipy_smooth(labels.numpy(), season.numpy(), 4, 0.05, 0.15, 2.0)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_bad_input_raises_named_errors() -> None:
    labels = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="beta \\+ mu"):
        smooth_labels(labels, torch.tensor([0]), 3, beta=0.6, mu=0.5)
    with pytest.raises(ConfigError, match=r"smoothing mu must be a number >= 0, got -0\.1"):
        smooth_labels(labels, torch.tensor([0]), 3, beta=0.1, mu=-0.1)
    with pytest.raises(DataError, match=r"label value 9 is not a class id in 0\.\.2"):
        smooth_labels(labels + 9, torch.tensor([0]), 3, beta=0.05, mu=0.15)
    with pytest.raises(DataError, match=r"season index out of range 0\.\.1: \[2\]"):
        smooth_labels(labels, torch.tensor([2]), 3, beta=0.05, mu=0.15)
    with pytest.raises(DataError, match="B, T, H, W"):
        smooth_labels(labels[0], torch.tensor([0]), 3, beta=0.05, mu=0.15)
