"""Streaming band statistics and the `cromss data` commands on a tiny demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from cromss.cli import main
from cromss.data.demo import make_demo
from cromss.data.stats import RunningBandStats, compute_band_stats
from cromss.errors import DataError
from cromss.transforms import ClipNormalize


def test_running_stats_match_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    data = rng.normal([1000.0, -12.0, 5e4], [300.0, 4.0, 1.0], size=(5000, 3)).T  # [C, N]
    running = RunningBandStats(3)
    for start, stop in [(0, 1), (1, 700), (700, 701), (701, 5000)]:
        running.update(data[:, start:stop])
    running.update(data[:, :0])  # empty batch is a no-op
    np.testing.assert_allclose(running.mean, data.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(running.std, data.std(axis=1), rtol=1e-9)
    assert running.count.tolist() == [5000, 5000, 5000]


def test_compute_band_stats_on_geotiff_tree_equals_direct_computation(tmp_path):
    demo = make_demo(tmp_path / "d", locations=2, size=12, seed=4, dw_train=2, dw_test=1,
                     layouts=("geotiff",))
    stats = compute_band_stats(demo / "nol", "nol")
    values = []
    for tif in sorted((demo / "nol" / "s2c").rglob("B4.tif")):
        with rasterio.open(tif) as src:
            values.append(src.read(1).astype(np.float64).ravel())
    b4 = np.concatenate(values)
    assert stats["s2"]["bands"][3] == "B4"
    assert stats["s2"]["mean"][3] == pytest.approx(b4.mean(), rel=1e-10)
    assert stats["s2"]["std"][3] == pytest.approx(b4.std(), rel=1e-8)
    assert stats["s2"]["count"] == 2 * 4 * 12 * 12
    tiles = compute_band_stats(demo / "dw", "dw", modalities=("s1",))
    # the training split only: the 2 train tiles, never the test tile
    assert list(tiles) == ["s1"] and tiles["s1"]["count"] == 2 * 12 * 12


def test_cli_make_demo_inspect_and_stats(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["data", "make-demo", str(out), "--locations", "3", "--size", "16", "--dw-train", "2",
                 "--dw-test", "1", "--noise-rate", "0.25"]) == 0
    assert main(["data", "inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "nol dataset (lmdb layout)" in text and "nol dataset (geotiff layout)" in text
    assert "dw dataset (geotiff layout)" in text and "train: 2, test: 1" in text
    assert "noise rate" in text and "snow_and_ice" in text
    assert main(["data", "stats", str(out / "nol"), "--out", str(tmp_path / "st")]) == 0
    written = json.loads((tmp_path / "st" / "s2_stats.json").read_text())
    assert len(written["mean"]) == 13
    # every band's mean / std = numpy over all its GeoTIFFs (3 locations x 4 seasons of 16 x 16 px)
    for index, band in enumerate(written["bands"]):
        values = []
        for tif in sorted((out / "nol" / "s2c").rglob(f"{band}.tif")):
            with rasterio.open(tif) as src:
                values.append(src.read(1).astype(np.float64).ravel())
        values = np.concatenate(values)
        assert values.size == 3 * 4 * 16 * 16
        assert written["mean"][index] == pytest.approx(values.mean(), rel=1e-10), band
        assert written["std"][index] == pytest.approx(values.std(), rel=1e-8), band
    # the 9-band normaliser takes the statistics of its bands by name from the 13 written
    from cromss.schema import S2_9BANDS

    norm = ClipNormalize.for_modality("s2", 9, tmp_path / "st" / "s2_stats.json")
    assert norm.num_bands == 9
    picked = [written["bands"].index(band) for band in S2_9BANDS]
    np.testing.assert_allclose(norm.mean.numpy().ravel(), np.asarray(written["mean"])[picked], rtol=1e-6)
    np.testing.assert_allclose(norm.std.numpy().ravel(), np.asarray(written["std"])[picked], rtol=1e-6)
    # existing output is not overwritten silently; the CLI reports a DataError with status 2
    assert main(["data", "make-demo", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_stats_refuse_lmdb_only_data(tmp_path):
    demo = make_demo(tmp_path / "d", locations=2, size=8, dw_train=0, dw_test=0, layouts=("lmdb",))
    with pytest.raises(DataError, match="already clipped"):
        compute_band_stats(demo / "nol", "nol")
