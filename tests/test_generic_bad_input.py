"""Bad input of your own data: one line naming the file or row, exit status 2, nothing written."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from generic_data import make_synthetic, write_samples, write_tif
from rasterio.transform import from_origin

from cromss.cli import main


def _rows(root):
    with (root / "samples.csv").open() as handle:
        return list(csv.DictReader(handle))


def _missing_file(root):
    (root / "s1" / "loc2_0.tif").unlink()


def _modality_absent(root):
    rows = _rows(root)
    rows[1]["s2"] = ""
    write_samples(root, rows)


def _other_grid(root):
    write_tif(root / "s2" / "loc1_0.tif", np.ones((3, 32, 32), np.uint16), from_origin(0, 0, 10, 10), crs="EPSG:32632")


def _fewer_bands(root):
    write_tif(root / "s2" / "loc3_0.tif", np.ones((2, 32, 32), np.uint16), from_origin(503000, 4000000, 10, 10),
              crs="EPSG:32632")


def _one_class(root):
    data = yaml.safe_load((root / "dataset.yaml").read_text())
    data["classes"], data["label_values"] = ["only"], {10: 0}
    (root / "dataset.yaml").write_text(yaml.safe_dump(data))


def _duplicate_row(root):
    rows = _rows(root)
    write_samples(root, [*rows, rows[0]])


def _outside(root):
    rows = _rows(root)
    rows[2]["label"] = "../elsewhere/label.tif"
    write_samples(root, rows)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_missing_file, "row 3 (loc2): s1 file"),
        (_modality_absent, "row 2 (loc1): no s2 file"),
        (_other_grid, "sample loc1@2021-01-15 (row 2): s2"),
        (_fewer_bands, "has 2 band(s), expected 3 (B2, B3, B4)"),
        (_one_class, "segmentation needs at least 2"),
        (_duplicate_row, "appears again (first in row 1)"),
        (_outside, "must be relative to"),
    ],
)
def test_pretrain_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys, damage, expected):
    root = make_synthetic(tmp_path / "d", {"s2": ["B2", "B3", "B4"], "s1": ["VV", "VH"]}, ["a", "b"],
                          timestamps=[1, 1, 1, 1, 1])
    damage(root)
    config = {"name": "bad", "output_dir": str(tmp_path / "runs"),
              "data": {"kind": "generic", "root": str(root), "crop_size": 32, "val_fraction": 0.2},
              "model": {"encoder": "resnet18"}, "trainer": {"max_epochs": 1, "accelerator": "cpu"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cromss: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "runs").exists()


def test_label_values_outside_the_table_are_ignored_not_refused(tmp_path):
    from cromss.data import DataConfig, build_dataset
    from cromss.schema import IGNORE_INDEX

    root = make_synthetic(tmp_path / "d", {"s2": ["B2"]}, ["a", "b"], timestamps=[1, 1])
    sample = build_dataset(DataConfig(kind="generic", root=str(root), crop_size=None, val_fraction=0.5),
                           "val", train=False)[0]
    assert int(sample["label"][0, 0]) == IGNORE_INDEX  # raw -1 at (0, 0)
