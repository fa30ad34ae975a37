"""Smoke test of the GeoTIFF readers on a REAL Sentinel-1/2 chip (Sen1Floods11, Bonafilia et al. 2020).

Skips when ../shared is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

import cromss
from cromss import schema
from cromss.data.readers import SEN1FLOODS11_LABELS, invalid_pixels, read_geotiff, read_label_geotiff
from cromss.transforms import ClipNormalize

CHIP = "sen1floods11/Spain_7370579_{}.tif"


@pytest.fixture
def chip(shared_dir):
    paths = {key: shared_dir / "data" / CHIP.format(key) for key in ("S1Hand", "S2Hand", "LabelHand")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"Sen1Floods11 chip not found: {missing}")
    return paths


def test_real_s1_s2_read_with_bands_dtype_and_georeference(chip):
    s1 = read_geotiff(chip["S1Hand"], expected_count=2, allowed_kinds="f", what="Sentinel-1 image")
    s2 = read_geotiff(chip["S2Hand"], expected_count=13, allowed_kinds="uif", what="Sentinel-2 image")
    assert s1.data.shape == (2, 512, 512) and s1.data.dtype == np.float32
    assert s2.data.shape == (13, 512, 512) and s2.data.dtype == np.int16
    assert s1.descriptions == schema.S1_BANDS and s2.descriptions == schema.S2_BANDS
    with rasterio.open(chip["S2Hand"]) as src:
        assert s2.transform == src.transform and s2.crs == src.crs
    assert s1.crs.to_epsg() == 4326 and s2.crs.to_epsg() == 4326
    assert s1.transform == s2.transform  # co-registered
    # normalised inputs lie in [0, 1] once invalid (NaN) pixels are masked
    invalid = invalid_pixels(s1.data, s1.nodata, any_band=True)
    assert invalid.sum() == np.isnan(s1.data).any(axis=0).sum()
    x1 = ClipNormalize.for_modality("s1")(torch.from_numpy(s1.data))[:, torch.from_numpy(~invalid)]
    x2 = ClipNormalize.for_modality("s2", 13)(torch.from_numpy(s2.data.astype(np.float32)))
    # = clip to mean +- 2 std of the packaged statistics (read here), scaled to [0, 1], by hand in numpy
    for x, raster, modality in ((x1, s1.data[:, ~invalid], "s1"), (x2, s2.data, "s2")):
        stats = json.loads((Path(cromss.__file__).parent / "resources" / f"{modality}_stats.json").read_text())
        assert stats["bands"] == list(schema.S1_BANDS if modality == "s1" else schema.S2_BANDS)
        mean, std = (np.asarray(stats[k], np.float64).reshape(-1, *([1] * (raster.ndim - 1))) for k in ("mean", "std"))
        expected = (np.clip(raster.astype(np.float64), mean - 2 * std, mean + 2 * std) - (mean - 2 * std)) / (4 * std)
        np.testing.assert_allclose(x.numpy(), expected, atol=1e-6)
    # a real S2 scene is not constant after clipping: the spread is informative
    assert float(x2.std()) > 0.05


def test_real_label_masking(chip):
    with rasterio.open(chip["LabelHand"]) as src:
        raw = src.read(1)
    label = read_label_geotiff(chip["LabelHand"], SEN1FLOODS11_LABELS)
    assert label.data.dtype == np.int64 and label.data.shape == (1, 512, 512)
    assert label.crs.to_epsg() == 4326
    assert int((label.data[0] == schema.IGNORE_INDEX).sum()) == int((raw == -1).sum())
    assert int((label.data[0] == 1).sum()) == int((raw == 1).sum())
    assert int((label.data[0] == 0).sum()) == int((raw == 0).sum())
