"""Issue 17, data items: dropped tiles / locations counted in ONE warning line; an all-ignored or all-nodata
training split stops before training; `data stats` reads the training split only and runs find its files."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import rasterio
import yaml
from generic_data import make_synthetic

from cromss.cli import main
from cromss.data import CromSSDataModule, DataConfig, build_dataset
from cromss.data.demo import make_demo
from cromss.data.resolution import resolve_data_config
from cromss.errors import DataError


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "cromss.data" and r.levelno == logging.WARNING]


def test_nol_geotiff_id_without_four_seasons_is_counted_in_one_warning(tmp_path, caplog):
    demo = make_demo(tmp_path / "d", locations=4, size=8, dw_train=0, dw_test=0, layouts=("geotiff",))
    ids = sorted(p.name for p in (demo / "nol" / "s2c").iterdir())
    shutil.rmtree(next(p for p in (demo / "nol" / "s2c" / ids[1]).iterdir()))  # one season of one id
    shutil.rmtree(demo / "nol" / "dw_labels" / ids[2])  # images without any label
    cfg = DataConfig(kind="nol", root=str(demo / "nol"), format="geotiff", crop_size=None, val_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="cromss.data"):
        train = build_dataset(cfg, "train", train=True)
        build_dataset(cfg, "val", train=False)  # the same scan again: no second line
    lines = _warnings(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"cromss: warning: 2 of 4 locations of {demo / 'nol'} skipped")
    assert ids[1] in lines[0] and ids[2] in lines[0]
    assert len(train) == 1 and train.sample_id(0) in (ids[0], ids[3])


def test_tile_without_label_file_is_counted_in_one_warning(tmp_path, caplog):
    demo = make_demo(tmp_path / "d", locations=2, size=8, dw_train=4, dw_test=1, layouts=("lmdb",))
    labels = sorted((demo / "dw" / "train" / "label").glob("*.tif"))
    for path in labels[:2]:
        path.unlink()
    cfg = DataConfig(kind="dw", root=str(demo / "dw"), crop_size=None, val_fraction=0.3)
    with caplog.at_level(logging.WARNING, logger="cromss.data"):
        train = build_dataset(cfg, "train", train=True)
        val = build_dataset(cfg, "val", train=False)
    lines = _warnings(caplog)
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"2 of 4 tiles of {demo / 'dw' / 'train'} skipped: no label file in label/" in lines[0]
    assert len(train) + len(val) == 2


def _all_nodata_generic(root):
    make_synthetic(root, {"s2": ["B2", "B3"], "s1": ["VV", "VH"]}, ["a", "b"], [1, 1, 1], size=16)
    for path in (root / "s1").glob("*.tif"):  # every S1 image is nodata (0, the file's nodata value)
        with rasterio.open(path, "r+") as dst:
            dst.write(np.zeros((2, 16, 16), dtype=dst.dtypes[0]))
    return root


def test_all_nodata_training_split_stops_before_training(tmp_path):
    root = _all_nodata_generic(tmp_path / "g")
    module = CromSSDataModule(DataConfig(kind="generic", root=str(root), crop_size=None, val_fraction=0.3))
    with pytest.raises(DataError) as err:
        module.setup("fit")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"the training split of {root} has no labelled valid pixel in the 2 of its 2 samples")
    assert "s1 nodata on 256 of 256" in message
    # the same data with S2 only trains: the check is about the modalities fed
    module = CromSSDataModule(DataConfig(kind="generic", root=str(root), modalities=["s2"], crop_size=None,
                                         val_fraction=0.3))
    module.setup("fit")


def test_all_nodata_pretrain_exits_2_with_one_line(tmp_path, capsys):
    root = _all_nodata_generic(tmp_path / "g")
    config = {
        "name": "nodata", "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "generic", "root": str(root), "crop_size": None, "batch_size": 2, "val_fraction": 0.3},
        "model": {"encoder": "resnet18", "fusion": "mid", "decoder_channels": [8, 8, 8, 8, 8]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0,
                    "progress_bar": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no labelled valid pixel" in err
    assert not list((tmp_path / "runs").rglob("metrics.csv"))


def test_all_ignored_labels_stop_before_training(tmp_path):
    root = make_synthetic(tmp_path / "g", {"s2": ["B2", "B3"]}, ["a", "b"], [2, 1], size=16,
                          splits=["train", "val"])
    for path in (root / "label").glob("*.tif"):
        with rasterio.open(path, "r+") as dst:
            dst.write(np.full((1, 16, 16), -1, dtype=dst.dtypes[0]))  # outside label_values
    module = CromSSDataModule(DataConfig(kind="generic", root=str(root), crop_size=None, val_fraction=0.4))
    with pytest.raises(DataError, match=r"sample loc0: labels ignored on 512 of 512, s2 nodata on 0 of 512 pixels"):
        module.setup("fit")


def test_builtin_stats_use_train_tiles_only_and_are_found_by_runs(tmp_path, capsys):
    demo = make_demo(tmp_path / "d", locations=2, size=8, dw_train=3, dw_test=2, layouts=("lmdb",))
    dw = demo / "dw"
    cfg = DataConfig(kind="dw", root=str(demo), crop_size=None)
    assert resolve_data_config(cfg).s2_stats == "packaged"  # nothing written yet: the packaged statistics
    assert main(["data", "stats", str(dw)]) == 0
    assert "find them by themselves" in capsys.readouterr().out
    values = []
    for path in sorted((dw / "train" / "s2").glob("*.tif")):
        with rasterio.open(path) as src:
            values.append(src.read().reshape(13, -1).astype(np.float64))
    train = np.concatenate(values, axis=1)
    written = json.loads((dw / "stats" / "s2_stats.json").read_text())
    np.testing.assert_allclose(written["mean"], train.mean(axis=1), rtol=1e-9)
    assert written["count"] == 3 * 8 * 8  # the 2 test tiles are not read
    resolved = resolve_data_config(cfg)
    assert resolved.s2_stats == str(dw / "stats" / "s2_stats.json")
    assert resolved.s1_stats == str(dw / "stats" / "s1_stats.json")
    # the dataset core normalises with the found file even when the config was not resolved
    dataset = build_dataset(cfg, "test", train=False)
    norm = dataset.normalizers["s2"]
    np.testing.assert_allclose(norm.mean.numpy(), np.asarray(written["mean"], np.float32), rtol=1e-6)
    # an explicit choice is kept, and 'packaged' means the shipped statistics
    explicit = resolve_data_config(DataConfig(kind="dw", root=str(demo), s2_stats="packaged", crop_size=None))
    assert explicit.s2_stats == "packaged"
    packaged = build_dataset(DataConfig(kind="dw", root=str(demo), s2_stats="packaged", crop_size=None), "test",
                             train=False).normalizers["s2"]
    assert not np.allclose(packaged.mean.numpy(), norm.mean.numpy())


def test_inspect_opens_builtin_tiles_and_reports_a_corrupt_one(tmp_path, capsys):
    demo = make_demo(tmp_path / "d", locations=2, size=8, dw_train=3, dw_test=1, layouts=("lmdb",))
    victim = sorted((demo / "dw" / "train" / "s1").glob("*.tif"))[-1]
    victim.write_bytes(victim.read_bytes()[:64])  # truncated: the band count alone would still look right
    assert main(["data", "inspect", str(demo / "dw")]) == 1
    captured = capsys.readouterr()
    assert "opened the labels and images of 4 of 4 locations" in captured.out
    assert "PROBLEMS     1 file(s) could not be used" in captured.out and victim.name in captured.out
    assert captured.err.strip() == "cromss: 1 file(s) could not be used (see PROBLEMS above)"
