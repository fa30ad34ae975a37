"""OSM agreement filter (Table I), padding 510 -> 512 and NoL assembly on hand-made tiles."""

from __future__ import annotations

import argparse
import csv
import json
import math

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from cromss.curation import (
    admissible_pairs,
    assemble_nol,
    assemble_nol_tree,
    filter_osm_tiles,
    keep_tile,
    osm_agreement,
    pad_array,
    pad_tree,
    padded_transform,
    write_osm_filter_outputs,
)
from cromss.errors import DataError

# Published ids used below. DW tiles: value = DW class + 1.
DW_WATER, DW_TREES, DW_GRASS, DW_FLOODED, DW_CROPS, DW_SHRUB, DW_BUILT, DW_BARE, DW_SNOW = range(1, 10)
DW_CLOUD = 10


def _tile(dw_values, osm_values):
    """A 1-row tile from two equal-length lists of published ids."""
    return np.array([dw_values], dtype=np.uint8), np.array([osm_values], dtype=np.uint8)


# ----------------------------------------------------------------------------- Table I
def test_table_matches_paper_table_one():
    # Table I written out independently from the paper's text, in DW published ids.
    paper = {
        1: {DW_BUILT}, 2: {DW_BUILT}, 3: {DW_CROPS}, 4: {DW_TREES, DW_GRASS}, 5: {DW_TREES}, 6: {DW_BARE},
        7: {DW_WATER}, 8: {DW_BARE, DW_SNOW}, 9: {DW_GRASS}, 10: {DW_GRASS, DW_SHRUB},
        11: {DW_TREES, DW_CROPS}, 12: {DW_FLOODED}, 13: {DW_WATER, DW_FLOODED},
    }
    table = admissible_pairs()
    assert table.shape == (14, 10) and table.dtype == bool
    assert not table[0].any() and not table[:, 0].any()
    for osm_id in range(1, 14):
        assert set(np.flatnonzero(table[osm_id]).tolist()) == paper[osm_id], osm_id


# ----------------------------------------------------------------------------- agreement
@pytest.mark.parametrize(("n_agree", "kept"), [(74, False), (75, False), (76, True)])
def test_threshold_is_strictly_greater_than_075(n_agree, kept):
    dw = np.full((10, 10), DW_GRASS, dtype=np.uint8)
    osm = np.full((10, 10), 3, dtype=np.uint8)  # OSM 3 (arable) -> crops only: disagrees with grass
    osm.flat[:n_agree] = 9  # OSM 9 -> grass: agrees
    acc, n = osm_agreement(dw, osm)
    assert n == 100
    assert acc == pytest.approx(n_agree / 100)
    assert keep_tile(acc) is kept


def test_many_to_many_osm4_trees_or_grass():
    # OSM 4 against trees, grass (both admissible), crops and water (not).
    dw, osm = _tile([DW_TREES, DW_GRASS, DW_CROPS, DW_WATER], [4, 4, 4, 4])
    assert osm_agreement(dw, osm) == (0.5, 4)


def test_many_to_many_osm8_bare_or_snow():
    dw, osm = _tile([DW_BARE, DW_SNOW, DW_SNOW, DW_GRASS, DW_BUILT], [8, 8, 8, 8, 8])
    assert osm_agreement(dw, osm) == (pytest.approx(3 / 5), 5)


def test_many_to_many_mixed_tile():
    dw, osm = _tile(
        [DW_GRASS, DW_SHRUB, DW_CROPS, DW_TREES, DW_CROPS, DW_WATER, DW_FLOODED, DW_FLOODED, DW_BUILT, DW_BUILT],
        [10, 10, 11, 11, 10, 13, 13, 12, 1, 2],
    )
    # 10/grass ok, 10/shrub ok, 11/crops ok, 11/trees ok, 10/crops NO, 13/water ok, 13/flooded ok,
    # 12/flooded ok, 1/built ok, 2/built ok -> 9 of 10
    assert osm_agreement(dw, osm) == (pytest.approx(0.9), 10)


def test_unlabeled_and_cloud_pixels_are_excluded():
    dw, osm = _tile(
        [0, DW_CLOUD, DW_TREES, DW_TREES, DW_CROPS, 0],
        [5, 5, 0, 5, 9, 0],
    )
    # counted: (trees, 5) agree, (crops, 9) disagree -> N = 2, TP = 1
    assert osm_agreement(dw, osm) == (0.5, 2)


def test_tile_without_labelled_pixels_gives_nan_and_is_dropped():
    dw, osm = _tile([0, DW_CLOUD, DW_TREES], [5, 5, 0])
    acc, n = osm_agreement(dw, osm)
    assert n == 0 and math.isnan(acc)
    assert keep_tile(acc) is False


@pytest.mark.parametrize(("dw_value", "osm_value", "name"), [(11, 5, "DW"), (DW_TREES, 14, "OSM")])
def test_values_outside_published_ids_raise(dw_value, osm_value, name):
    dw, osm = _tile([dw_value], [osm_value])
    with pytest.raises(DataError, match=name):
        osm_agreement(dw, osm)


def test_shape_mismatch_raises():
    with pytest.raises(DataError, match="same shape"):
        osm_agreement(np.ones((4, 4), np.uint8), np.ones((4, 5), np.uint8))


# ----------------------------------------------------------------------------- files + CLI
def _write_tif(path, data, transform=Affine(10.0, 0, 500000.0, 0, -10.0, 5400000.0), crs="EPSG:32632"):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
        dtype=data.dtype, crs=CRS.from_string(crs), transform=transform,
    ) as dst:
        dst.write(data)


def _make_label_dirs(tmp_path):
    dw_dir, osm_dir = tmp_path / "dw" / "label", tmp_path / "osm" / "label"
    dw = np.full((10, 10), DW_GRASS, dtype=np.uint8)
    for name, n_agree in (("tile_a", 76), ("tile_b", 74), ("tile_c", 100)):
        osm = np.full((10, 10), 3, dtype=np.uint8)
        osm.flat[:n_agree] = 9
        _write_tif(dw_dir / f"dw_{name}.tif", dw)  # published prefixes are dropped for pairing
        _write_tif(osm_dir / f"osm_{name}.tif", osm)
    _write_tif(dw_dir / "only_dw.tif", dw)
    return dw_dir, osm_dir


def test_filter_osm_tiles_writes_kept_list_and_histogram(tmp_path):
    dw_dir, osm_dir = _make_label_dirs(tmp_path)
    result = filter_osm_tiles(dw_dir, osm_dir)
    assert [t.tile for t in result.kept] == ["tile_a", "tile_c"]
    assert result.only_dw == ["only_dw"] and result.only_osm == []
    paths = write_osm_filter_outputs(result, tmp_path / "out")
    with paths["kept"].open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["tile"], float(r["accuracy"]), int(r["n_labelled"])) for r in rows] == [
        ("tile_a", 0.76, 100), ("tile_c", 1.0, 100)]
    summary = json.loads(paths["hist_json"].read_text())
    assert summary["checked"] == 3 and summary["kept"] == 2 and sum(summary["counts"]) == 3
    # 20 bins of width 0.05: 0.74 -> [0.70, 0.75), 0.76 -> [0.75, 0.80), 1.0 -> last bin
    assert summary["counts"][14] == 1 and summary["counts"][15] == 1 and summary["counts"][19] == 1
    # the PNG read back: 6 x 3.5 in at 100 dpi; three bars in #397D49 of one bin width each, over bins 14, 15
    # (split by the dashed #C4281B threshold line at 0.75) and 19: centres 1 and 4 bins apart; all three
    # of the same height (one tile each)
    import matplotlib.image

    png = (matplotlib.image.imread(paths["hist_png"])[..., :3] * 255).round().astype(int)
    assert png.shape == (350, 600, 3)
    bar = (png == (0x39, 0x7D, 0x49)).all(axis=-1)
    assert (png == (0xC4, 0x28, 0x1B)).all(axis=-1).any()
    columns = np.flatnonzero(bar.any(axis=0))
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    assert len(runs) == 3
    width = np.mean([len(run) for run in runs])
    assert all(abs(len(run) - width) <= 2 for run in runs)
    centres = [run.mean() for run in runs]
    assert (centres[2] - centres[1]) / (centres[1] - centres[0]) == pytest.approx(4.0, abs=0.3), centres
    tops = {int(np.flatnonzero(bar[:, c])[0]) for c in columns if bar[:, c].sum() > 100}
    assert max(tops) - min(tops) <= 1, tops  # equal heights


def _parser():
    from cromss.cli import data_tools

    parser = argparse.ArgumentParser(prog="cromss data")
    data_tools.register(parser.add_subparsers(dest="data_command"))
    return parser


def test_cli_osm_filter_and_min_accuracy(tmp_path):
    dw_dir, osm_dir = _make_label_dirs(tmp_path)
    args = _parser().parse_args(
        ["osm-filter", "--dw", str(dw_dir), "--osm", str(osm_dir), "--out", str(tmp_path / "o"),
         "--min-accuracy", "0.8"])
    assert args.func(args) == 0
    kept = (tmp_path / "o" / "kept_tiles.csv").read_text().splitlines()
    assert len(kept) == 2 and kept[1].startswith("tile_c,")


def test_cli_osm_filter_names_a_corrupt_file(tmp_path):
    dw_dir, osm_dir = _make_label_dirs(tmp_path)
    (osm_dir / "osm_tile_b.tif").write_bytes(b"not a tiff")
    args = _parser().parse_args(["osm-filter", "--dw", str(dw_dir), "--osm", str(osm_dir), "--out", str(tmp_path)])
    with pytest.raises(DataError, match="osm_tile_b.tif"):
        args.func(args)


# ----------------------------------------------------------------------------- padding
def test_pad_array_and_transform_by_hand():
    img = np.arange(2 * 3 * 3, dtype=np.int16).reshape(2, 3, 3) + 1
    out = pad_array(img, 1, 0)
    assert out.shape == (2, 5, 5)
    assert (out[:, 1:4, 1:4] == img).all()
    assert out[:, 0].sum() == 0 and out[:, -1].sum() == 0 and out[:, :, 0].sum() == 0 and out[:, :, -1].sum() == 0
    t = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5400000.0)
    assert padded_transform(t, 1) == Affine(10.0, 0.0, 499990.0, 0.0, -10.0, 5400010.0)


def test_pad_tree_510_to_512_keeps_georeference(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "dw_train"
    transform = Affine(10.0, 0, 300000.0, 0, -10.0, 4000000.0)
    image = rng.integers(1, 5000, size=(3, 510, 510), dtype=np.uint16)
    label = rng.integers(1, 11, size=(510, 510), dtype=np.uint8)
    _write_tif(src / "s2" / "t1.tif", image, transform)
    _write_tif(src / "label" / "t1.tif", label, transform)
    _write_tif(src / "label_true" / "t1.tif", label, transform)  # also a label: no image mask
    _write_tif(src / "s2" / "t2.tif", np.ones((3, 512, 512), np.uint16), transform)  # already 512: copied
    counts = pad_tree(src, tmp_path / "out")
    assert counts == {"padded": 3, "copied": 1}
    with rasterio.open(tmp_path / "out" / "s2" / "t1.tif") as ds:
        data, mask = ds.read(), ds.dataset_mask()
        assert ds.crs == CRS.from_string("EPSG:32632")
        assert ds.transform == Affine(10.0, 0, 299990.0, 0, -10.0, 4000010.0)
        # pixel (1, 1) of the padded tile lies where pixel (0, 0) of the original did
        assert ds.transform @ (1, 1) == transform @ (0, 0)
    assert data.shape == (3, 512, 512) and (data[:, 1:511, 1:511] == image).all()
    assert data[:, 0].max() == 0 and data[:, :, -1].max() == 0
    assert mask[0].max() == 0 and mask[1:511, 1:511].min() == 255
    with rasterio.open(tmp_path / "out" / "label" / "t1.tif") as ds:
        lab = ds.read(1)
    with rasterio.open(tmp_path / "out" / "label_true" / "t1.tif") as ds:
        assert ds.dataset_mask().min() == 255 and ds.read(1)[0].max() == 0
    assert lab.shape == (512, 512) and (lab[1:511, 1:511] == label).all()
    assert lab[0].max() == 0 and lab[-1].max() == 0 and lab[:, 0].max() == 0  # 0 = unlabeled


def test_pad_rejects_odd_difference(tmp_path):
    _write_tif(tmp_path / "src" / "s1" / "x.tif", np.zeros((1, 509, 509), np.float32))
    with pytest.raises(DataError, match="x.tif"):
        pad_tree(tmp_path / "src", tmp_path / "out")


# ----------------------------------------------------------------------------- NoL assembly
def test_assemble_nol_reasons():
    s1 = {"a": 4, "b": 4, "c": 3, "d": 4}
    s2 = {"a": 4, "b": 4, "c": 4, "d": 4, "e": 4}
    labels = {"a": 4, "b": 2, "c": 4, "e": 4}
    result = assemble_nol(s1, s2, labels, id_mismatches={"d": "s1 id d != label id x"})
    assert result.kept == ["a"]
    assert result.dropped == {
        "b": ["missing_label_season: 2 of 4"],
        "c": ["missing_s1_season: 3 of 4"],
        "d": ["no_label", "id_mismatch: s1 id d != label id x"],
        "e": ["no_s1"],
    }
    assert result.reason_counts() == {
        "id_mismatch": 1, "missing_label_season": 1, "missing_s1_season": 1, "no_label": 1, "no_s1": 1}


def test_assemble_nol_tree_and_cli(tmp_path):
    seasons = ["20200101T000000", "20200401T000000", "20200701T000000", "20201001T000000"]
    for loc, n_s1, n_lab in (("0000001", 4, 4), ("0000002", 4, 3), ("0000003", 2, 4)):
        for s in seasons[:n_s1]:
            _write_tif(tmp_path / "s1" / loc / s / "VV.tif", np.zeros((4, 4), np.float32))
        for s in seasons:
            _write_tif(tmp_path / "s2c" / loc / s / "B1.tif", np.zeros((4, 4), np.uint16))
        for i in range(n_lab):
            _write_tif(tmp_path / "labels" / loc / f"{i}.tif", np.zeros((4, 4), np.uint8))
    result = assemble_nol_tree(tmp_path / "s1", tmp_path / "s2c", tmp_path / "labels")
    assert result.kept == ["0000001"]
    assert result.dropped == {"0000002": ["missing_label_season: 3 of 4"],
                              "0000003": ["missing_s1_season: 2 of 4"]}
    args = _parser().parse_args(["assemble-nol", "--s1", str(tmp_path / "s1"), "--s2", str(tmp_path / "s2c"),
                                 "--labels", str(tmp_path / "labels"), "--out", str(tmp_path / "rep")])
    assert args.func(args) == 0
    report = json.loads((tmp_path / "rep" / "assembly_report.json").read_text())
    assert report["kept"] == 1 and report["dropped"] == 2
    assert (tmp_path / "rep" / "kept_ids.txt").read_text() == "0000001\n"


def test_assemble_nol_lmdb_reports_id_mismatch(tmp_path):
    from cromss.curation import assemble_nol_lmdb
    from cromss.data.readers import write_lmdb

    z = np.zeros
    write_lmdb(tmp_path / "s1.lmdb", [(z((4, 2, 3, 3)), "a"), (z((4, 2, 3, 3)), "b"), (z((3, 2, 3, 3)), "c")], map_size=1 << 24)
    write_lmdb(tmp_path / "s2.lmdb", [(z((4, 13, 3, 3)), "a"), (z((4, 13, 3, 3)), "x"), (z((4, 13, 3, 3)), "c")], map_size=1 << 24)
    write_lmdb(tmp_path / "lab.lmdb", [(z((4, 3, 3)), "a"), (z((4, 3, 3)), "b"), (z((4, 3, 3)), "c"),
                                       (z((4, 3, 3)), "d")], map_size=1 << 24)
    result = assemble_nol_lmdb(tmp_path / "s1.lmdb", tmp_path / "s2.lmdb", tmp_path / "lab.lmdb")
    assert result.kept == ["a"]
    assert result.dropped == {
        "b": ["no_s2", "id_mismatch: index 1: s2 id x != label id b"],
        "c": ["missing_s1_season: 3 of 4"],
        "d": ["no_s1", "no_s2"],
    }
