"""Builders of generic datasets (dataset.yaml + samples.csv) for the tests.

* :func:`tile_sen1floods11` cuts the REAL Sen1Floods11 chip of ../shared into tiles: S1, S2, a cheap
  noisy water label (NDWI > 0 on S2, McFeeters 1996) and the hand label as ``reference``.
* :func:`make_synthetic` writes small random GeoTIFFs with any modalities, band counts, classes and a
  different number of timestamps per location.

Band statistics are computed here with plain numpy (independent of cromss.data.stats).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import rasterio
import yaml
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

S2_NAMES = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def write_tif(path: Path, data: np.ndarray, transform, crs="EPSG:4326", nodata=None, descriptions=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        if descriptions:
            for index, name in enumerate(descriptions, start=1):
                dst.set_band_description(index, name)


def write_stats(root: Path, modality: str, bands: list[str], arrays: list[np.ndarray], nodata=None) -> Path:
    """Per-band mean / population std over ``arrays`` ([C, H, W] each), skipping non-finite and nodata."""
    stack = np.concatenate([a.reshape(a.shape[0], -1).astype(np.float64) for a in arrays], axis=1)
    means, stds = [], []
    for band in stack:
        keep = np.isfinite(band) & ((band != nodata) if nodata is not None else True)
        means.append(float(band[keep].mean()))
        stds.append(float(max(band[keep].std(), 1e-6)))
    path = root / "stats" / f"{modality}_stats.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"modality": modality, "bands": bands, "mean": means, "std": stds}))
    return path


def write_description(root: Path, modalities: dict[str, list[str]], classes, label_values=None, **extra) -> None:
    data = {"modalities": modalities, "classes": classes, "samples": "samples.csv", **extra}
    if label_values is not None:
        data["label_values"] = label_values
    (root / "dataset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def write_samples(root: Path, rows: list[dict[str, str]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with (root / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def tile_sen1floods11(chip_dir: Path, root: Path, tile: int = 128, test_tiles: int = 4) -> Path:
    """Cut the real chip into ``(512 / tile)**2`` single-date locations; the last ``test_tiles`` are 'test'."""
    stem = chip_dir / "Spain_7370579"
    with rasterio.open(f"{stem}_S1Hand.tif") as src:
        s1, s1_profile = src.read(), src.profile
    with rasterio.open(f"{stem}_S2Hand.tif") as src:
        s2 = src.read()
    with rasterio.open(f"{stem}_LabelHand.tif") as src:
        hand = src.read(1)
    green, nir = s2[2].astype(np.float64), s2[7].astype(np.float64)
    ndwi = (green - nir) / np.maximum(green + nir, 1.0)
    noisy = (ndwi > 0).astype(np.uint8)
    noisy[(s2 == 0).all(axis=0)] = 255  # no S2 data: no label (255 is outside label_values)
    size = s1.shape[-1]
    rows = []
    count = (size // tile) ** 2
    for index in range(count):
        row_off, col_off = divmod(index, size // tile)
        window = Window(col_off * tile, row_off * tile, tile, tile)
        transform = window_transform(window, s1_profile["transform"])
        sl = (slice(row_off * tile, (row_off + 1) * tile), slice(col_off * tile, (col_off + 1) * tile))
        name = f"t{index:02d}"
        write_tif(root / "s1" / f"{name}.tif", s1[:, sl[0], sl[1]], transform, nodata=np.nan,
                  descriptions=["VV", "VH"])
        write_tif(root / "s2" / f"{name}.tif", s2[:, sl[0], sl[1]], transform, nodata=0, descriptions=S2_NAMES)
        write_tif(root / "noisy" / f"{name}.tif", noisy[sl], transform, nodata=None)
        write_tif(root / "hand" / f"{name}.tif", hand[sl], transform, nodata=None)
        rows.append({"location": name, "split": "test" if index >= count - test_tiles else "",
                     "s2": f"s2/{name}.tif", "s1": f"s1/{name}.tif", "label": f"noisy/{name}.tif",
                     "reference": f"hand/{name}.tif"})
    write_description(root, {"s2": S2_NAMES, "s1": ["VV", "VH"]}, ["not_water", "water"], {0: 0, 1: 1})
    write_samples(root, rows)
    write_stats(root, "s1", ["VV", "VH"], [s1])
    write_stats(root, "s2", S2_NAMES, [s2], nodata=0)
    return root


def make_synthetic(
    root: Path,
    modalities: dict[str, list[str]],
    classes: list[str],
    timestamps: list[int],
    size: int = 32,
    dtype: str = "uint16",
    seed: int = 0,
    splits: list[str] | None = None,
) -> Path:
    """Random generic dataset: location i has ``timestamps[i]`` dates; labels are raw values 10 + class id."""
    rng = np.random.default_rng(seed)
    rows = []
    arrays: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    for i, count in enumerate(timestamps):
        transform = from_origin(500000 + 1000 * i, 4000000, 10, 10)
        for t in range(count):
            time = f"2021-{t + 1:02d}-15"
            row = {"location": f"loc{i}", "time": time}
            if splits is not None:
                row["split"] = splits[i]
            for modality, bands in modalities.items():
                data = rng.integers(1, 3000, size=(len(bands), size, size)).astype(dtype)
                arrays[modality].append(data)
                path = f"{modality}/loc{i}_{t}.tif"
                write_tif(root / path, data, transform, crs="EPSG:32632", nodata=0)
                row[modality] = path
            label = (10 + rng.integers(0, len(classes), size=(size, size))).astype(np.int16)
            label[0, 0] = -1  # outside label_values: ignored
            write_tif(root / f"label/loc{i}_{t}.tif", label, transform, crs="EPSG:32632")
            row["label"] = f"label/loc{i}_{t}.tif"
            rows.append(row)
    write_description(root, modalities, classes, {10 + c: c for c in range(len(classes))})
    write_samples(root, rows)
    for modality, bands in modalities.items():
        write_stats(root, modality, bands, arrays[modality], nodata=0)
    return root
