"""Divergences between models (Sec. IV-D/E, Figs. 8c, d and 12): pure functions, tensors in, numbers out.

* :func:`bn_kl` — KL divergence between the batch-norm statistics of two models (Fig. 8c, d);
* :func:`weight_kl` — discrete KL divergence between weight histograms (Fig. 12), shown as
  :func:`neg_inv_log` ``= -1 / log(KL)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import torch

from cromss.errors import DataError

#: Suffixes of batch-norm buffers: they are statistics, not weights (excluded from :func:`weight_kl`).
BN_BUFFER_SUFFIXES: tuple[str, ...] = (".running_mean", ".running_var", ".num_batches_tracked")

#: Added to every bin of both histograms in :func:`weight_kl` so that empty bins give finite KL.
WEIGHT_KL_EPS: float = 1e-10

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
