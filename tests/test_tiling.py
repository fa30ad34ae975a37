"""`cromss data tile` on the REAL Sen1Floods11 chip: tiles keep pixels, georeference and band names."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cromss.cli import main


def test_tile_real_chip(shared_dir, tmp_path, capsys):
    chip = shared_dir / "data" / "sen1floods11" / "Spain_7370579"
    status = main(["data", "tile", "--input", f"s2={chip}_S2Hand.tif", "--input", f"s1={chip}_S1Hand.tif",
                   "--input", f"hand={chip}_LabelHand.tif", "--size", "128", "--out", str(tmp_path / "t"),
                   "--prefix", "spain"])
    assert status == 0
    for name in ("s2", "s1", "hand"):
        assert len(list((tmp_path / "t" / name).glob("*.tif"))) == 16
    with rasterio.open(f"{chip}_S2Hand.tif") as src:
        full, transform = src.read(), src.transform
    with rasterio.open(tmp_path / "t" / "s2" / "spain_r00128_c00256.tif") as tile:
        assert np.array_equal(tile.read(), full[:, 128:256, 256:384])
        expected = transform * (256, 128)  # (x, y) of the tile's upper-left corner
        assert tile.transform.c == pytest.approx(expected[0]) and tile.transform.f == pytest.approx(expected[1])
        assert tile.descriptions[0] == "B1" and tile.descriptions[-1] == "B12"
        assert tile.nodata == 0 and tile.dtypes[0] == "int16"


def test_tile_refuses_another_grid(shared_dir, tmp_path, capsys):
    chip = shared_dir / "data" / "sen1floods11" / "Spain_7370579"
    other = tmp_path / "other.tif"
    with rasterio.open(other, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(0, 0, 1, 1)) as dst:
        dst.write(np.zeros((1, 512, 512), np.uint8))
    status = main(["data", "tile", "--input", f"s2={chip}_S2Hand.tif", "--input", f"x={other}",
                   "--size", "128", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert status == 2 and "is not on the grid of" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()
