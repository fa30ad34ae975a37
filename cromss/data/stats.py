"""Streaming per-band statistics (mean, std) of raw inputs over the TRAINING split, written as stats JSON files.

Pixels are merged batch by batch with Chan et al.'s parallel form of Welford's update in float64,
so memory does not grow with the dataset. Invalid pixels (non-finite or nodata) are skipped.
"""

from __future__ import annotations

import json
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


def training_pool(root: Path, kind: str, cfg: DataConfig) -> Any:
    """The dataset of the TRAINING locations of ``root`` (never the test split) for statistics.

    The pool is every location a run may train on: 'nol' all locations; @DW / @OSM the ``train/``
    tiles; DFC2020 its 'validation' folder (the paper's training split); generic data the rows whose
    split is ``train`` or empty. The validation part a run draws from it depends on
    ``data.val_fraction`` / ``data.seed``, so it is included: the statistics are one file per dataset,
    not per run. Declared ``val`` and ``test`` rows are never read.
    """
    from cromss.data.datasets import NolGeoTiffDataset, TileDataset, detect_format, list_tiles

    if kind == "generic":
        from cromss.data.description import load_description, max_timestamps, read_samples
        from cromss.data.generic import GenericDataset

        description = load_description(root)
        locations = read_samples(description)
        pool = [loc for loc in locations if loc.split in ("", "train")]
        if not pool:
            raise DataError(f"{description.samples_file}: no training rows (split 'train' or empty) for statistics")
        return GenericDataset(cfg, description, pool, train=False, num_timestamps=max_timestamps(locations))
    if kind == "nol":
        if detect_format(root) == "lmdb" and not (root / "s2c").is_dir() and not (root / "s1").is_dir():
            raise DataError(
                f"{root}: the LMDB layout holds already clipped uint8 values; compute band statistics "
                "on the GeoTIFF layout (s1/, s2c/)"
            )
        return NolGeoTiffDataset(cfg, root, None, train=False)
    return TileDataset(cfg, list_tiles(root, kind, "train"), train=False)


def compute_band_stats(
    root: str | Path, kind: str = "nol", modalities: tuple[str, ...] | None = ("s1", "s2"),
    max_samples: int | None = None, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """Mean and std per band over the TRAINING split of a dataset (see :func:`training_pool`).

    Built-in kinds: S1 (dB) and S2 (13 bands, DN) of the GeoTIFF layouts. ``kind='generic'``: every
    modality of ``dataset.yaml`` (``modalities=None``) or the ones named, bands named as declared.
    Returns ``{modality: stats}`` in the format of ``cromss/resources/<modality>_stats.json``.
    """
    root = Path(root)
    if kind == "generic":
        from cromss.data.description import load_description

        description = load_description(root)
        chosen = list(modalities) if modalities else list(description.modalities)
        unknown = [m for m in chosen if m not in description.modalities]
        if unknown:
            raise DataError(f"{root}: no modality {unknown[0]!r} (dataset.yaml has {list(description.modalities)})")
        band_names = {m: list(description.bands(m)) for m in chosen}
        cfg = DataConfig(kind=kind, root=str(root), modalities=chosen, crop_size=None, augment=False)
    else:
        chosen = list(modalities or ("s1", "s2"))
        bad = [m for m in chosen if m not in ("s1", "s2")]
        if bad:
            raise DataError(f"--modalities: {bad[0]!r} is not a modality of data.kind {kind!r} (s1, s2)")
        band_names = {m: list(schema.modality_bands(m)) for m in chosen}
        cfg = DataConfig(kind=kind, root=str(root), format="geotiff", modalities=chosen,
                         s2_bands=13, crop_size=None, augment=False)
    cfg.validate()
    dataset = training_pool(root, kind, cfg)
    running = {m: RunningBandStats(len(band_names[m])) for m in chosen}
    samples = 0
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
    units = {"s1": "dB", "s2": "L1C DN"} if kind != "generic" else {}
    for modality, stats in running.items():
        if int(stats.count.min()) == 0:
            raise DataError(
                f"{root}: modality {modality!r} has no valid pixel in the {samples} training samples read "
                "(every pixel is nodata)"
            )
        out[modality] = {
            "modality": modality, "bands": band_names[modality],
            "mean": stats.mean.tolist(), "std": np.maximum(stats.std, 1e-6).tolist(),
            "count": int(stats.count.min()), "unit": units.get(modality, "raw file values"),
            "source": f"cromss data stats {root} ({samples} training samples, kind {kind})",
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
