"""Seeded train/validation splits (of locations, never of single timestamps)."""

from __future__ import annotations

import torch

from cromss.errors import DataError


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random train/val split of ``count`` items; val gets round(fraction*count), >= 1."""
    if count < 2:
        raise DataError(f"cannot split {count} sample(s) into train and validation sets; need >= 2")
    n_val = min(count - 1, max(1, round(count * val_fraction)))
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_val:]), sorted(order[:n_val])
