"""Bad input gives a DataError naming the file / key / band and the problem; NaN pixels are masked."""

from __future__ import annotations

import os
import pickle
import shutil

import lmdb
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from cromss import schema
from cromss.data import DataConfig, build_dataset
from cromss.data.demo import make_demo
from cromss.data.readers import DFC2020_LABELS, DW_TILE_LABELS, OSM_TILE_LABELS, decode_lmdb_value, write_lmdb
from cromss.errors import DataError

SIZE = 16
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)


def _tif(path, data, nodata=None):
    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2],
                       count=data.shape[0], dtype=data.dtype, crs="EPSG:32632", transform=TRANSFORM,
                       nodata=nodata) as dst:
        dst.write(data)


def _tile_set(root, s1=None, s2=None, label=None, n=2):
    """A DW tile layout with n train and n test tiles; the first test tile can be replaced."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(n):
            first = split == "test" and i == 0
            _tif(root / split / "s1" / f"t{i}.tif",
                 s1 if first and s1 is not None else rng.normal(-12, 3, (2, SIZE, SIZE)).astype(np.float32))
            _tif(root / split / "s2" / f"t{i}.tif",
                 s2 if first and s2 is not None else rng.integers(1, 5000, (13, SIZE, SIZE)).astype(np.uint16),
                 nodata=0)
            _tif(root / split / "label" / f"t{i}.tif",
                 label if first and label is not None else rng.integers(0, 11, (SIZE, SIZE)).astype(np.uint8))
    return DataConfig(kind="dw", root=str(root), crop_size=None)


def _test_sample(cfg):
    return build_dataset(cfg, "test", train=False)[0]


def test_wrong_band_count(tmp_path):
    cfg = _tile_set(tmp_path, s2=np.ones((12, SIZE, SIZE), np.uint16))
    with pytest.raises(DataError, match=r"t0\.tif has 12 band\(s\), expected 13"):
        _test_sample(cfg)


def test_wrong_dtype_of_s1_and_of_labels(tmp_path):
    cfg = _tile_set(tmp_path / "a", s1=np.ones((2, SIZE, SIZE), np.int16))
    with pytest.raises(DataError, match=r"Sentinel-1 image .*t0\.tif has dtype int16"):
        _test_sample(cfg)
    cfg = _tile_set(tmp_path / "b", label=np.ones((SIZE, SIZE), np.float32))
    with pytest.raises(DataError, match=r"label .*t0\.tif has dtype float32"):
        _test_sample(cfg)


def test_mismatched_image_and_label_shapes(tmp_path):
    cfg = _tile_set(tmp_path, s1=np.zeros((2, SIZE - 4, SIZE - 4), np.float32))
    with pytest.raises(DataError, match=r"s1 image is 12x12 but its label is 16x16"):
        _test_sample(cfg)


def test_corrupt_geotiff(tmp_path):
    cfg = _tile_set(tmp_path)
    (tmp_path / "test" / "s2" / "t0.tif").write_bytes(b"II*\x00 this is not a tiff")
    with pytest.raises(DataError, match=r"t0\.tif cannot be read as GeoTIFF"):
        _test_sample(cfg)


def test_missing_modality_file(tmp_path):
    cfg = _tile_set(tmp_path)
    (tmp_path / "test" / "s1" / "t0.tif").unlink()
    with pytest.raises(DataError, match="Sentinel-1 image file missing"):
        _test_sample(cfg)


def test_labels_outside_the_class_table(tmp_path):
    label = np.full((SIZE, SIZE), 3, np.uint8)
    label[0, 0] = 12
    cfg = _tile_set(tmp_path, label=label)
    with pytest.raises(DataError, match=r"t0\.tif holds value\(s\) \[12\] outside"):
        _test_sample(cfg)


def test_nan_pixels_are_invalid_zero_input_and_ignored_label(tmp_path):
    s1 = np.full((2, SIZE, SIZE), -12.0, np.float32)
    s1[0, 2, 3] = np.nan
    s1[1, 5, 5] = np.inf
    s2 = np.full((13, SIZE, SIZE), 1500, np.uint16)
    s2[:, 7, 7] = 0  # nodata in every band
    s2[10, 9, 9] = 0  # one band at 0 (B10 can be 0): still valid
    cfg = _tile_set(tmp_path, s1=s1, s2=s2, label=np.full((SIZE, SIZE), 2, np.uint8))
    sample = _test_sample(cfg)
    invalid = [(2, 3), (5, 5), (7, 7)]
    for row, col in invalid:
        assert not sample["valid"][row, col]
        assert sample["label"][row, col] == schema.IGNORE_INDEX
        assert float(sample["s1"][:, row, col].abs().sum()) == 0.0
        assert float(sample["s2"][:, row, col].abs().sum()) == 0.0
    assert int((~sample["valid"]).sum()) == len(invalid)
    assert sample["valid"][9, 9] and sample["label"][9, 9] == 1
    assert torch.isfinite(sample["s1"]).all()


def test_label_conventions_hand_checked():
    dw = DW_TILE_LABELS.apply(np.array([0, 1, 5, 9, 10], np.uint8), "x")
    assert dw.tolist() == [255, 0, 4, 8, 255]
    osm = OSM_TILE_LABELS.apply(np.array([0, 1, 13], np.uint8), "x")
    assert osm.tolist() == [255, 0, 12]
    # DFC2020: forest(1)->trees(1), shrubland(2)->shrub(5), savanna(3)->ignore, grassland(4)->grass(2),
    # wetlands(5)->flooded(3), croplands(6)->crops(4), urban(7)->built(6), snow(8)->ignore,
    # barren(9)->bare(7), water(10)->water(0)
    dfc = DFC2020_LABELS.apply(np.arange(1, 11, dtype=np.uint8), "x")
    assert dfc.tolist() == [1, 5, 255, 2, 3, 4, 6, 255, 7, 0]
    with pytest.raises(DataError, match="outside"):
        OSM_TILE_LABELS.apply(np.array([14], np.uint8), "osm.tif")


# ----------------------------------------------------------------------------- LMDB
def _lmdb_set(root, n=3, skip_key=None, s2_ids=None, seasons=4):
    rng = np.random.default_rng(0)
    ids = [f"{i:07d}" for i in range(n)]
    root.mkdir(parents=True)
    write_lmdb(root / "dw_labels.lmdb", [(rng.integers(0, 9, (4, SIZE, SIZE)), i) for i in ids], 1 << 24)
    write_lmdb(root / "0k_251k_uint8_s1.lmdb", [(rng.integers(0, 255, (4, 2, SIZE, SIZE)), i) for i in ids],
               1 << 24)
    env = lmdb.open(str(root / "0k_251k_uint8_s2c.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index, sample_id in enumerate(s2_ids or ids):
            key = index + 1 if skip_key is not None and index >= skip_key else index
            array = rng.integers(0, 255, (seasons, 13, SIZE, SIZE)).astype(np.uint8)
            txn.put(str(key).encode(), pickle.dumps((array.tobytes(), array.shape, sample_id)))
    env.close()
    return DataConfig(kind="nol", root=str(root), crop_size=None, augment=False, val_fraction=0.3)


def _all_samples(cfg):
    for split in ("train", "val"):
        dataset = build_dataset(cfg, split, train=split == "train")
        for i in range(len(dataset)):
            dataset[i]


def test_absent_lmdb_key(tmp_path):
    with pytest.raises(DataError, match=r"0k_251k_uint8_s2c\.lmdb: key '1' is absent"):
        _all_samples(_lmdb_set(tmp_path / "d", skip_key=1))


def test_lmdb_ids_must_agree(tmp_path):
    cfg = _lmdb_set(tmp_path / "d", s2_ids=["0000000", "0000001", "9999999"])
    with pytest.raises(DataError, match=r"LMDB index 2: s2 sample id '9999999' differs from label id '0000002'"):
        _all_samples(cfg)


def test_lmdb_wrong_season_count(tmp_path):
    with pytest.raises(DataError, match=r"expected \(4, 13, H, W\)"):
        _all_samples(_lmdb_set(tmp_path / "d", seasons=3))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:  # an unrestricted unpickler would run the shell command and leave the marker
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(DataError, match=r"x\.lmdb: value of key '0' cannot be decoded safely"):
        decode_lmdb_value(pickle.dumps((b"", (0,), Evil())), file="x.lmdb", key="0")
    assert not marker.exists()
    # numpy integers in the shape are fine (they need numpy scalar reconstruction only)
    shape = (np.int64(2), np.int64(3))
    array, sample_id = decode_lmdb_value(pickle.dumps((bytes(6), shape, "0000042")), file="x.lmdb", key="0")
    assert array.shape == (2, 3) and sample_id == "0000042"
    with pytest.raises(DataError, match="holds 5 bytes"):
        decode_lmdb_value(pickle.dumps((bytes(5), (2, 3), "a")), file="x.lmdb", key="7")


# ----------------------------------------------------------------------------- GeoTIFF tree
def test_missing_band_in_the_geotiff_tree(tmp_path):
    demo = make_demo(tmp_path / "demo", locations=3, size=SIZE, seed=0, dw_train=0, dw_test=0,
                     layouts=("geotiff",))
    first = sorted((demo / "nol" / "s2c").iterdir())
    for location in first:
        for season in location.iterdir():
            (season / "B5.tif").unlink()
    cfg = DataConfig(kind="nol", root=str(demo), format="geotiff", crop_size=None, val_fraction=0.3)
    with pytest.raises(DataError, match=r"Sentinel-2 band B5 missing: .*B5\.tif"):
        build_dataset(cfg, "train", train=True)[0]


def test_incomplete_locations_are_skipped(tmp_path):
    demo = make_demo(tmp_path / "demo", locations=4, size=SIZE, seed=0, dw_train=0, dw_test=0,
                     layouts=("geotiff",))
    victim = sorted((demo / "nol" / "s1").iterdir())[0]
    shutil.rmtree(sorted(victim.iterdir())[0])  # one S1 season missing
    cfg = DataConfig(kind="nol", root=str(demo), format="geotiff", crop_size=None, val_fraction=0.3)
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    assert len(train.locations) + len(val.locations) == 3 and victim.name in train.skipped


def test_bad_root_and_kind(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(DataConfig(kind="dw", root=str(tmp_path / "none")), "train", train=True)
    with pytest.raises(DataError, match="no pretraining layout"):
        build_dataset(DataConfig(kind="nol", root=str(tmp_path)), "train", train=True)
    with pytest.raises(DataError, match="no test split"):
        build_dataset(DataConfig(kind="nol", root=str(tmp_path)), "test", train=False)


def test_dfc2020_layout_pairs_files_and_remaps(tmp_path):
    rng = np.random.default_rng(0)
    for split, sub in (("validation", "validation"), ("test", "0")):
        base = tmp_path / f"ROIs0000_{split}"
        for i in range(3 if split == "validation" else 1):
            stem = f"ROIs0000_{split}_{{}}_0_p{i}.tif"
            _tif(base / f"s1_{sub}" / stem.format("s1"), rng.normal(-12, 3, (2, SIZE, SIZE)).astype(np.float32))
            _tif(base / f"s2_{sub}" / stem.format("s2"),
                 rng.integers(1, 5000, (13, SIZE, SIZE)).astype(np.uint16))
            _tif(base / f"dfc_{sub}" / stem.format("dfc"), np.full((SIZE, SIZE), 3 + i, np.uint8))
    cfg = DataConfig(kind="dfc2020", root=str(tmp_path), crop_size=None, val_fraction=0.3)
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    test = build_dataset(cfg, "test", train=False)
    assert (len(train), len(val), len(test)) == (2, 1, 1)
    labels = {int(d[i]["label"][0, 0]) for d in (train, val) for i in range(len(d))}
    assert labels == {schema.IGNORE_INDEX, 2, 3}  # savanna 3 -> ignore, grassland 4 -> 2, wetland 5 -> 3
    assert test[0]["s2"].shape == (13, SIZE, SIZE)
