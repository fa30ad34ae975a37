"""`cromss data index` / `inspect` / `stats` on generic datasets: real Sen1Floods11 tiles and a made multi-date set."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
import rasterio
import yaml
from generic_data import S2_NAMES, tile_sen1floods11, write_tif
from rasterio.transform import from_origin

from cromss.cli import main
from cromss.data import DataConfig
from cromss.data.description import load_description, read_samples
from cromss.data.resolution import resolve_data_config


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read(path):
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture
def floods(shared_dir, tmp_path):
    """The real chip cut into 16 tiles, WITHOUT the description the helper writes (the index makes it)."""
    root = tile_sen1floods11(shared_dir / "data" / "sen1floods11", tmp_path / "floods")
    expected = _rows(root / "samples.csv")
    (root / "dataset.yaml").unlink()
    (root / "samples.csv").unlink()
    shutil.rmtree(root / "stats")
    return root, expected


def _index_floods(root, tmp_path, capsys):
    (tmp_path / "classes.csv").write_text("value,name,color\n0,not_water,#cccccc\n1,water,#419BDF\n")
    (tmp_path / "test.txt").write_text("t12\nt13.tif\nt14\nt15\n")  # an extension is ignored (TerraTorch)
    status = main(["data", "index", str(root), "--image", "s2=s2/*.tif", "--image", "s1=s1/*.tif",
                   "--label", "noisy/*.tif", "--reference", "hand/*.tif", "--classes", str(tmp_path / "classes.csv"),
                   "--test-split", str(tmp_path / "test.txt")])
    assert status == 0, capsys.readouterr().err
    return capsys.readouterr().out


def test_index_real_tiles_pairs_files_and_loads(floods, tmp_path, capsys):
    root, expected = floods
    _index_floods(root, tmp_path, capsys)
    written = _rows(root / "samples.csv")
    # the pairing the tiling helper made, independent of the index: same files per location
    key = ("location", "split", "s2", "s1", "label", "reference")
    assert [{k: r[k] for k in key} for r in written] == [{k: r[k] for k in key} for r in expected]
    data = yaml.safe_load((root / "dataset.yaml").read_text())
    # band names from the files' band descriptions; label_values from the class table
    assert data["modalities"] == {"s2": S2_NAMES, "s1": ["VV", "VH"]}
    assert data["label_values"] == {0: 0, 1: 1}
    assert [c["color"] for c in data["classes"]] == ["#cccccc", "#419BDF"]
    description = load_description(root)
    locations = read_samples(description)
    assert [loc.split for loc in locations] == [""] * 12 + ["test"] * 4
    assert description.classes.names == ("not_water", "water")


def test_inspect_and_stats_on_indexed_real_tiles(floods, tmp_path, capsys):
    root, _ = floods
    _index_floods(root, tmp_path, capsys)
    assert main(["data", "inspect", str(root)]) == 0
    text = capsys.readouterr().out
    noisy = np.stack([_read(root / "noisy" / f"t{i:02d}.tif")[0] for i in range(16)])
    hand = np.stack([_read(root / "hand" / f"t{i:02d}.tif")[0] for i in range(16)])
    both = np.isin(noisy, [0, 1]) & np.isin(hand, [0, 1])
    rate = 100 * float((noisy[both] != hand[both]).mean())
    assert f"noise rate   {rate:.1f} %" in text
    assert re.search(rf"not_water\s+{int((noisy == 0).sum())}\s", text)
    assert re.search(rf"water\s+{int((noisy == 1).sum())}\s", text)
    assert "bands s2     13: " + ", ".join(S2_NAMES) in text and "bands s1     2: VV, VH" in text
    assert "unassigned: 12, test: 4" in text and "opened the labels and images of 16 of 16" in text

    assert main(["data", "stats", str(root)]) == 0
    capsys.readouterr()
    # numpy over the 12 TRAINING tiles only: S2 nodata 0 in all bands, S1 non-finite
    s2 = np.concatenate([_read(root / "s2" / f"t{i:02d}.tif").reshape(13, -1) for i in range(12)], axis=1)
    s1 = np.concatenate([_read(root / "s1" / f"t{i:02d}.tif").reshape(2, -1) for i in range(12)], axis=1)
    s2 = s2[:, ~(s2 == 0).all(axis=0)].astype(np.float64)
    s1 = s1[:, np.isfinite(s1).all(axis=0)].astype(np.float64)
    for modality, values in (("s2", s2), ("s1", s1)):
        stats = json.loads((root / "stats" / f"{modality}_stats.json").read_text())
        np.testing.assert_allclose(stats["mean"], values.mean(axis=1), rtol=1e-9)
        np.testing.assert_allclose(stats["std"], values.std(axis=1), rtol=1e-7)
        assert stats["count"] == values.shape[1]
    # runs find them by themselves and record the files used
    resolved = resolve_data_config(DataConfig(kind="generic", root=str(root)))
    assert resolved.stats == {m: str(root / "stats" / f"{m}_stats.json") for m in ("s2", "s1")}


# ----------------------------------------------------------------------------- multi-date, made data
def _multi_date(root):
    """3 fields, 3 / 1 / 2 dates; 'opt' (4 bands, no descriptions), 'radar' (2 bands, described);
    labels: raw 1 = crop, 2 = fallow, 9 = outside the class table (ignored)."""
    rng = np.random.default_rng(3)
    dates = {"fieldA": ["20210315", "20210601", "20210910"], "fieldB": ["20210420"],
             "fieldC": ["20210505", "20210705"]}
    for i, (field, days) in enumerate(dates.items()):
        transform = from_origin(300000 + 1000 * i, 5000000, 10, 10)
        for day in days:
            write_tif(root / "opt" / f"{field}_{day}.tif", rng.integers(1, 5000, (4, 16, 16)).astype("uint16"),
                      transform, crs="EPSG:32633", nodata=0)
            write_tif(root / "radar" / f"{field}_{day}.tif", rng.normal(-12, 3, (2, 16, 16)).astype("float32"),
                      transform, crs="EPSG:32633", descriptions=["VV", "VH"])
            write_tif(root / "lab" / f"{field}_{day}.tif", rng.choice([1, 2, 9], (16, 16)).astype("uint8"),
                      transform, crs="EPSG:32633")
    return dates


def _index_multi(root, tmp_path, *extra):
    (tmp_path / "classes.yaml").write_text(yaml.safe_dump([{"value": 1, "name": "crop"}, {"value": 2, "name": "fallow"}]))
    (tmp_path / "train.txt").write_text("fieldA\n")
    (tmp_path / "val.txt").write_text("fieldB\n")
    (tmp_path / "test.txt").write_text("fieldC\n")
    return main(["data", "index", str(root), "--image", "opt=opt/*.tif", "--image", "radar=radar/*.tif",
                 "--label", "lab/*.tif", "--classes", str(tmp_path / "classes.yaml"), "--time-pattern", r"(\d{8})",
                 "--train-split", str(tmp_path / "train.txt"), "--val-split", str(tmp_path / "val.txt"),
                 "--test-split", str(tmp_path / "test.txt"), *extra])


def test_index_time_pattern_and_split_files(tmp_path, capsys):
    root = tmp_path / "fields"
    dates = _multi_date(root)
    assert _index_multi(root, tmp_path, "--bands", "opt=B,G,R,NIR") == 0
    rows = _rows(root / "samples.csv")
    splits = {"fieldA": "train", "fieldB": "val", "fieldC": "test"}
    expected = [{"location": f, "time": d, "split": splits[f], "opt": f"opt/{f}_{d}.tif",
                 "radar": f"radar/{f}_{d}.tif", "label": f"lab/{f}_{d}.tif"}
                for f, days in dates.items() for d in days]
    assert rows == expected
    description = load_description(root)
    assert description.modalities == {"opt": ("B", "G", "R", "NIR"), "radar": ("VV", "VH")}
    assert description.label_values == {1: 0, 2: 1}
    locations = read_samples(description)
    assert [(loc.name, len(loc.rows), loc.split) for loc in locations] == [
        ("fieldA", 3, "train"), ("fieldB", 1, "val"), ("fieldC", 2, "test")]

    assert main(["data", "inspect", str(root)]) == 0
    text = capsys.readouterr().out
    assert "train: 1, val: 1, test: 1  (6 rows)" in text
    assert "1 location(s) with 1, 1 location(s) with 2, 1 location(s) with 3" in text
    assert "bands opt    4: B, G, R, NIR" in text
    labels = np.stack([_read(root / r["label"])[0] for r in expected])
    assert f"outside label_values 9: {int((labels == 9).sum())} pixels" in text
    assert re.search(rf"crop\s+{int((labels == 1).sum())}\s", text)

    assert main(["data", "stats", str(root)]) == 0
    train = [r for r in expected if r["split"] == "train"]
    opt = np.concatenate([_read(root / r["opt"]).reshape(4, -1) for r in train], axis=1).astype(np.float64)
    opt = opt[:, ~(opt == 0).all(axis=0)]
    stats = json.loads((root / "stats" / "opt_stats.json").read_text())
    assert stats["bands"] == ["B", "G", "R", "NIR"]
    np.testing.assert_allclose(stats["mean"], opt.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], opt.std(axis=1), rtol=1e-7)
    radar = np.concatenate([_read(root / r["radar"]).reshape(2, -1) for r in train], axis=1).astype(np.float64)
    radar_stats = json.loads((root / "stats" / "radar_stats.json").read_text())
    np.testing.assert_allclose(radar_stats["mean"], radar.mean(axis=1), rtol=1e-6)
    assert radar_stats["count"] == 3 * 16 * 16  # the val and test dates are not read


def test_inspect_reports_a_corrupt_tile_it_opened(tmp_path, capsys):
    root = tmp_path / "fields"
    _multi_date(root)
    assert _index_multi(root, tmp_path, "--bands", "opt=B,G,R,NIR") == 0
    (root / "radar" / "fieldC_20210705.tif").write_bytes(b"II*\x00 not a tiff")
    capsys.readouterr()
    assert main(["data", "inspect", str(root)]) == 1
    captured = capsys.readouterr()
    assert "PROBLEMS     1 file(s)" in captured.out and "fieldC_20210705.tif" in captured.out
    assert "bands radar  2: VV, VH" in captured.out  # from the files that did open


# ----------------------------------------------------------------------------- bad input: one line, exit 2
@pytest.mark.parametrize("case, needle", [
    ("unpaired", "opt/fieldD_20210101.tif (--image opt, sample id 'fieldD_20210101') has no label file"),
    ("missing", "sample 'fieldB_20210420' (label lab/fieldB_20210420.tif) has no radar file"),
    ("no_bands", "has no distinct band descriptions; name the bands with --bands opt=NAME1,NAME2,..."),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case, needle):
    root = tmp_path / "fields"
    _multi_date(root)
    extra = ["--bands", "opt=B,G,R,NIR"]
    if case == "unpaired":
        shutil.copy(root / "opt" / "fieldB_20210420.tif", root / "opt" / "fieldD_20210101.tif")
    elif case == "missing":
        (root / "radar" / "fieldB_20210420.tif").unlink()
    else:
        extra = []
    capsys.readouterr()
    assert _index_multi(root, tmp_path, *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not (root / "dataset.yaml").exists() and not (root / "samples.csv").exists()
    assert not list(root.glob(".*.tmp*"))


def test_existing_index_is_not_replaced_without_overwrite(tmp_path, capsys):
    root = tmp_path / "fields"
    _multi_date(root)
    assert _index_multi(root, tmp_path, "--bands", "opt=B,G,R,NIR") == 0
    before = (root / "samples.csv").read_bytes()
    assert _index_multi(root, tmp_path, "--bands", "opt=B,G,R,NIR") == 2
    assert "already exists; give --overwrite" in capsys.readouterr().err
    assert (root / "samples.csv").read_bytes() == before
    assert _index_multi(root, tmp_path, "--bands", "opt=B,G,R,NIR", "--overwrite") == 0


def test_terratorch_style_flat_names_pair_by_wildcard(tmp_path):
    """img_grep '*_S2Hand.tif' / label_grep '*_LabelHand.tif': the id is what '*' matched."""
    from cromss.data.index import IndexSpec, build_index

    root = tmp_path / "flat"
    transform = from_origin(0, 0, 10, 10)
    for name in ("Spain_1", "India_22"):
        write_tif(root / f"{name}_S2Hand.tif", np.ones((2, 4, 4), "uint16"), transform, descriptions=["B4", "B8"])
        write_tif(root / f"{name}_LabelHand.tif", np.zeros((4, 4), "uint8"), transform)
    (tmp_path / "c.yaml").write_text("[dry, wet]\n")
    result = build_index(IndexSpec(root, {"s2": "*_S2Hand.tif"}, "*_LabelHand.tif", tmp_path / "c.yaml"))
    assert [(r["location"], r["s2"], r["label"]) for r in result.rows] == [
        ("India_22", "India_22_S2Hand.tif", "India_22_LabelHand.tif"),
        ("Spain_1", "Spain_1_S2Hand.tif", "Spain_1_LabelHand.tif")]
    assert result.description["modalities"] == {"s2": ["B4", "B8"]}
    assert "label_values" not in result.description  # a plain list: the raw value is the class id
