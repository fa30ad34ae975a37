"""Streaming per-band statistics (mean, std) of raw S1/S2 inputs, written as the stats JSON files.

Pixels are merged batch by batch with Chan et al.'s parallel form of Welford's update in float64,
so memory does not grow with the dataset. Invalid pixels (non-finite or nodata) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cromss import schema
from cromss.data.config import DataConfig
from cromss.errors import DataError


class RunningBandStats:
    """Per-band count, mean and sum of squared deviations (M2), updated with batches."""

    def __init__(self, num_bands: int) -> None:
        self.count = np.zeros(num_bands, dtype=np.float64)
        self.mean = np.zeros(num_bands, dtype=np.float64)
        self.m2 = np.zeros(num_bands, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` [C, N] (N pixels of C bands)."""
        values = np.asarray(values, dtype=np.float64)
        n_b = values.shape[1]
        if n_b == 0:
            return
        mean_b = values.mean(axis=1)
        m2_b = ((values - mean_b[:, None]) ** 2).sum(axis=1)
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / total
        self.m2 = self.m2 + m2_b + delta**2 * self.count * n_b / total
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per band."""
        return np.sqrt(self.m2 / np.maximum(self.count, 1))


def _datasets(root: Path, kind: str, cfg: DataConfig) -> Iterator[Any]:
    from cromss.data.datasets import NolGeoTiffDataset, TileDataset, detect_format, list_tiles

    if kind == "nol":
        if detect_format(root) == "lmdb" and not (root / "s2c").is_dir() and not (root / "s1").is_dir():
            raise DataError(
                f"{root}: the LMDB layout holds already clipped uint8 values; compute band statistics "
                "on the GeoTIFF layout (s1/, s2c/)"
            )
        yield NolGeoTiffDataset(cfg, root, None, train=False)
        return
    for split in ("train", "test"):
        try:
            tiles = list_tiles(root, kind, split)
        except DataError:
            if split == "train":
                raise
            continue
        yield TileDataset(cfg, tiles, train=False)


def compute_band_stats(
    root: str | Path, kind: str = "nol", modalities: tuple[str, ...] = ("s1", "s2"),
    max_samples: int | None = None, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Mean and std per band of S1 (dB) and S2 (13 bands, DN) over a GeoTIFF dataset.

    Returns ``{modality: stats}`` in the format of ``cromss/resources/<modality>_stats.json``.
    """
    root = Path(root)
    cfg = DataConfig(kind=kind, root=str(root), format="geotiff", modalities=list(modalities),
                     s2_bands=13, crop_size=None, augment=False)
    cfg.validate()
    running = {m: RunningBandStats(len(schema.modality_bands(m))) for m in modalities}
    samples = 0
    for dataset in _datasets(root, kind, cfg):
        for location in range(len(dataset.locations)):
            if max_samples is not None and samples >= max_samples:
                break
            for modality, raw, invalid in dataset.raw_images(location):
                running[modality].update(raw[:, ~invalid])
            samples += 1
            if progress and samples % 100 == 0:
                print(f"  {samples} samples")
    if samples == 0:
        raise DataError(f"{root}: no samples found to compute statistics")
    out = {}
    for modality, stats in running.items():
        out[modality] = {
            "modality": modality, "bands": list(schema.modality_bands(modality)),
            "mean": stats.mean.tolist(), "std": stats.std.tolist(), "count": int(stats.count.min()),
            "unit": "dB" if modality == "s1" else "L1C DN",
            "source": f"cromss data stats {root} ({samples} samples, kind {kind})",
        }
    return out


def write_band_stats(stats: dict[str, dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<modality>_stats.json`` files; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for modality, data in stats.items():
        path = out_dir / f"{modality}_stats.json"
        path.write_text(json.dumps(data, indent=2) + "\n")
        paths.append(path)
    return paths
