"""Issue 20 on REAL files with two spellings of one band set: one test per numbered case, plus the
"must show" of a B01-named encoder fine-tuned on B1-named data.

Data: the shared Sen1Floods11 chip (S2 L1C ``B1``..``B12``, nodata 0), cropped to 256 px and cut into
64 px tiles, and a BigEarthNet-style copy of it (12 L2A bands described ``B01``..``B12``). References are
independent of cromss: band positions by hand, statistics by numpy, normalisation by its formula, a
forward pass of the loaded model on the hand-ordered bands.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from band_data import B01_NAMES, L2A_NAMES, chip_arrays, select, write_dataset, write_stack
from conftest import SHARED_DIR
from generic_data import S2_NAMES, write_tif

from cromss.cli import main

TRAINER = {"accelerator": "cpu", "devices": 1, "limit_train_batches": 1, "limit_val_batches": 1,
           "num_sanity_val_steps": 0, "progress_bar": False}
FT_TRAINER = {"accelerator": "cpu", "limit_train_batches": 1, "limit_val_batches": 1, "enable_progress_bar": False,
              "log_every_n_steps": 1}


@pytest.fixture(scope="module")
def chip():
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}: real-data tests need it")
    return chip_arrays(SHARED_DIR)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bands")


@pytest.fixture(scope="module")
def b1_data(chip, base) -> Path:
    """The chip as it is: 13 bands B1..B12, hand label."""
    return write_dataset(base / "b1", chip, list(S2_NAMES))


@pytest.fixture(scope="module")
def b01_data(chip, base) -> Path:
    """BigEarthNet-style: 12 L2A bands described B01..B12 (no B10); noisy NDWI label, hand reference."""
    return write_dataset(base / "b01", chip, B01_NAMES, chip_bands=L2A_NAMES, label="ndwi")


def _pretrain(base: Path, root: Path, name: str, **data) -> Path:
    config = {
        "name": name, "output_dir": str(base / "runs"),
        "data": {"kind": "generic", "root": str(root), "crop_size": 64, "batch_size": 4, "val_fraction": 0.25,
                 **data},
        "model": {"encoder": "resnet18", "fusion": "single", "decoder_channels": [16, 16, 16, 16, 16]},
        "method": {"rampup_epochs": 1}, "trainer": {"max_epochs": 1, **TRAINER},
    }
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 0
    return base / "runs" / name


@pytest.fixture(scope="module")
def b01_run(base, b01_data) -> dict:
    """A pretraining run on the B01-named data, its export, and how often dataset.yaml was parsed."""
    import cromss.data.description as description

    calls = []
    original = description._read_description
    description._CACHE.clear()
    description._read_description = lambda root: (calls.append(root), original(root))[1]
    try:
        run = _pretrain(base, b01_data, "b01-s2")
    finally:
        description._read_description = original
    export = base / "b01-s2.safetensors"
    assert main(["export-encoder", str(run), "--modality", "s2", str(export)]) == 0
    return {"run": run, "export": export, "parses": len(calls)}


def _finetune(base: Path, root: Path, name: str, args: list[str] = (), **extra) -> int:
    config = {
        "name": name, "output_dir": str(base / "ft"), "framework": "fpn", "encoder": "resnet18", "modality": "s2",
        "epochs": 1, "seeds": 1,
        "data": {"kind": "generic", "root": str(root), "crop_size": 64, "batch_size": 4, "val_fraction": 0.25},
        "trainer": FT_TRAINER, **extra,
    }
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return main(["finetune", "--config", str(path), *args])


def _seed0(base: Path, name: str, label: str = "random") -> Path:
    return base / "ft" / name / label / "finetuned" / "seed0"


@pytest.fixture(scope="module")
def b1_finetuned(base, b1_data, b01_run) -> Path:
    """The B01-named encoder fine-tuned on the B1-named data (its 12 L2A bands, in B1 spelling)."""
    assert _finetune(base, b1_data, "b1-ft", ["--encoder", str(b01_run["export"]), "--label", "b01"],
                     bands=L2A_NAMES) == 0
    return _seed0(base, "b1-ft", "b01")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cromss: error: ") and len(err.splitlines()) == 1, err
    return err


def _normalise(raw: np.ndarray, stats: dict, names: list[str]) -> np.ndarray:
    """mean +/- 2 std clipped to [0, 1] (paper Sec. IV-A), statistics picked by hand by name."""
    index = [stats["bands"].index(n) for n in names]
    mean = np.array([stats["mean"][i] for i in index])[:, None, None]
    std = np.array([stats["std"][i] for i in index])[:, None, None]
    low, high = mean - 2 * std, mean + 2 * std
    return ((np.clip(raw, low, high) - low) / (high - low)).astype(np.float32)


# ----------------------------------------------------------------------------- the must-show
def test_b01_encoder_on_b1_data_reuses_every_channel_and_maps_a_file(chip, base, b01_run, b1_finetuned, capsys):
    from safetensors.torch import load_file

    from cromss.transfer import build_module, load_run

    metrics = json.loads((b1_finetuned / "metrics.json").read_text())
    selection = metrics["weights_info"]["band_selection"]
    assert selection["checked"] and selection["initialised"] == {} and selection["dropped"] == []
    assert selection["weight_bands"] == B01_NAMES and selection["model_bands"] == L2A_NAMES
    # the model's first conv starts as the donor's, channel for channel (same bands, same order)
    _, cfg, _ = load_run(b1_finetuned)
    module = build_module(cfg)
    donor = load_file(str(b01_run["export"]))["conv1.weight"]
    assert torch.equal(module.model.encoder.conv1.weight.detach(), donor)
    # and the run maps the chip's own 13-band file (its 12 bands picked by name)
    stack = write_stack(base / "chip13.tif", chip, list(S2_NAMES), crop=64)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(b1_finetuned), "--s2", str(stack),
                 "--out", str(base / "b1-map.tif"), "--tile", "64", "--overlap", "0"]) == 0
    with rasterio.open(base / "b1-map.tif") as src:
        assert src.shape == (64, 64) and set(np.unique(src.read(1))) <= {0, 1}
    assert json.loads(capsys.readouterr().out)["band_check"] == {"s2": "names"}


def test_a_pretraining_command_parses_dataset_yaml_once(b01_run):
    assert b01_run["parses"] == 1


def test_runs_record_absolute_paths_nodata_rules_and_label_conventions(base, b01_run, b1_finetuned):
    pre = yaml.safe_load((b01_run["run"] / "config.yaml").read_text())["data"]
    ft = yaml.safe_load((b1_finetuned / "config.yaml").read_text())["data"]
    for data in (pre, ft):
        assert Path(data["root"]).is_absolute() and all(Path(p).is_absolute() for p in data["stats"].values())
        assert data["nodata"] == {"s2": {"value": None, "rule": "all"}}
        assert data["label_values"] == {0: 0, 1: 1} and data["label_nodata"] is None
    assert pre["bands"] == {"s2": B01_NAMES}  # recorded as the dataset spells them


# ----------------------------------------------------------------------------- case 1: predict feeds the run's bands
def test_case1_predict_feeds_the_runs_bands_by_name(chip, base, b1_data, capsys):
    from cromss.transfer import load_run

    order = ["B8", "B4", "B3", "B2"]
    root = base / "b1-any"
    shutil.copytree(b1_data, root)
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    description["nodata"] = {"s2": {"value": 0, "rule": "any"}}  # recorded by the run (issue 24)
    (root / "dataset.yaml").write_text(yaml.safe_dump(description))
    assert _finetune(base, root, "order", bands=order) == 0
    run = _seed0(base, "order")
    shutil.move(root, base / "b1-any-moved")  # predict must not need dataset.yaml
    raw = select(chip["s2"], list(S2_NAMES))[:, :64, :64].copy()
    raw[S2_NAMES.index("B2"), 5, 7] = 0  # one band at nodata: masked by the run's rule 'any'
    inputs = {"stack": base / "p13.tif", "b01": base / "p12.tif", "files": base / "bandfiles"}
    write_tif(inputs["stack"], raw, chip["transform"], crs=chip["crs"], nodata=0, descriptions=list(S2_NAMES))
    l2a = raw[[S2_NAMES.index(b) for b in L2A_NAMES]]
    write_tif(inputs["b01"], l2a, chip["transform"], crs=chip["crs"], nodata=0, descriptions=B01_NAMES)
    for band, spelled in zip(L2A_NAMES, B01_NAMES, strict=True):
        write_tif(inputs["files"] / f"T30_{spelled}.tif", raw[S2_NAMES.index(band)], chip["transform"],
                  crs=chip["crs"], nodata=0)
    probabilities = {}
    for name, path in inputs.items():
        out = base / f"case1-{name}.tif"
        assert main(["predict", "--checkpoint", str(run), "--s2", str(path), "--out", str(out), "--tile", "64",
                     "--overlap", "0", "--probabilities", str(base / f"case1-{name}-p.tif")]) == 0
        with rasterio.open(base / f"case1-{name}-p.tif") as src:
            probabilities[name] = src.read()
        with rasterio.open(out) as src:
            assert src.read(1)[5, 7] == 255
    # reference: the loaded model on the hand-ordered B8, B4, B3, B2, normalised by hand with the run's copy
    module, _, _ = load_run(run)
    stats = json.loads((run / "band_stats" / "s2_stats.json").read_text())
    x = _normalise(raw[[S2_NAMES.index(b) for b in order]].astype(np.float64), stats, order)
    invalid = (raw[[S2_NAMES.index(b) for b in order]] == 0).any(axis=0)
    x[:, invalid] = 0
    with torch.no_grad():
        expected = torch.softmax(module.eval()(torch.from_numpy(x)[None]), dim=1)[0].numpy()
    valid = ~invalid
    for name, got in probabilities.items():
        np.testing.assert_allclose(got[:, valid], expected[:, valid], atol=1e-5, err_msg=name)
        assert np.isnan(got[:, 5, 7]).all()
    # a stack without one of the run's bands is one line
    write_tif(base / "no_b8.tif", raw[[0, 1, 2, 3]], chip["transform"], crs=chip["crs"], nodata=0,
              descriptions=["B1", "B2", "B3", "B4"])
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--s2", str(base / "no_b8.tif"), "--out",
                 str(base / "none.tif")]) == 2
    assert "lacks band(s) ['B8']" in _one_line_error(capsys) and not (base / "none.tif").exists()


# ----------------------------------------------------------------------------- case 2: init_missing
def test_case2_spelling_never_initialises_and_the_refusal_names_the_truly_missing(base, b1_data, b01_run, capsys,
                                                                                  caplog):
    export = str(b01_run["export"])
    capsys.readouterr()
    assert _finetune(base, b1_data, "b10", ["--encoder", export, "--label", "x"], bands=list(S2_NAMES)) == 2
    err = _one_line_error(capsys)
    assert "band 'B10' of the model is not in" in err and "'B1'" not in err.split("trained on")[0]
    assert not (base / "ft" / "b10").exists()
    with caplog.at_level(logging.WARNING, logger="cromss"):
        assert _finetune(base, b1_data, "b10", ["--encoder", export, "--label", "x", "--init-missing", "mean"],
                         bands=list(S2_NAMES)) == 0
    lines = [r.getMessage() for r in caplog.records if "initialised the first-conv" in r.getMessage()]
    assert len(lines) == 1 and "['B10']" in lines[0] and lines[0].startswith("cromss: warning: s2:")
    metrics = json.loads((_seed0(base, "b10", "x") / "metrics.json").read_text())
    assert metrics["weights_info"]["band_selection"]["initialised"] == {"B10": "mean"}


# ----------------------------------------------------------------------------- case 3: label nodata
def test_case3_label_nodata_that_is_a_class_value(chip, base, capsys, caplog):
    root = write_dataset(base / "nodata0", chip, list(S2_NAMES), label_nodata_value=0)
    (base / "classes.yaml").write_text("[not_water, water]\n")
    (base / "test.txt").write_text("\n".join(f"t{i:02d}" for i in range(12, 16)) + "\n")
    with caplog.at_level(logging.WARNING, logger="cromss"):
        assert main(["data", "index", str(root), "--image", "s2=s2/*.tif", "--label", "label/*.tif", "--classes",
                     str(base / "classes.yaml"), "--test-split", str(base / "test.txt"), "--overwrite",
                     "--no-stats"]) == 0
    warned = [r.getMessage() for r in caplog.records if "nodata 0 is also the raw value" in r.getMessage()]
    assert len(warned) == 1 and "class 'not_water'" in warned[0] and "label_nodata" in warned[0]
    capsys.readouterr()
    assert main(["data", "inspect", str(root)]) == 1
    assert "nodata 0 is also the raw value of class 'not_water'" in capsys.readouterr().out
    assert _finetune(base, root, "nd0") == 2
    assert "label_nodata: ignore" in _one_line_error(capsys) and not (base / "ft" / "nd0").exists()
    description = yaml.safe_load((root / "dataset.yaml").read_text())
    for choice in ("keep", "ignore"):
        (root / "dataset.yaml").write_text(yaml.safe_dump({**description, "label_nodata": choice}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cromss"):
            assert _finetune(base, root, f"nd0-{choice}") == 0
        metrics = json.loads((_seed0(base, f"nd0-{choice}") / "metrics.json").read_text())
        hand = chip["hand"][192:256, :256]
        messages = " ".join(r.getMessage() for r in caplog.records)
        if choice == "keep":  # 0 is class not_water: both classes, every hand pixel counted
            assert metrics["support"] == [int((hand == 0).sum()), int((hand == 1).sum())] and "note" not in metrics
            assert "no labelled pixel" not in messages
        else:  # 0 is nodata: not_water has no pixel anywhere; said in training and next to the metrics
            assert metrics["support"] == [0, int((hand == 1).sum())]
            assert "only class 'water' has ground-truth pixels" in metrics["note"]
            assert "class(es) ['not_water'] have no labelled pixel in the training split" in messages
            capsys.readouterr()
            assert main(["evaluate", str(_seed0(base, "nd0-ignore"))]) == 0
            first = capsys.readouterr().out.splitlines()[1]
            assert first.startswith("OA 100.00") and "only class 'water'" in first  # never a bare 100 %


# ----------------------------------------------------------------------------- case 4: band order by spelling
def test_case4_band_order_cannot_be_bypassed_by_spelling(chip, base, b1_data, capsys):
    root = base / "case4"
    shutil.copytree(b1_data, root)
    (root / "dataset.yaml").unlink()
    (base / "classes4.yaml").write_text("[not_water, water]\n")
    swapped = ["B02", "B01", *S2_NAMES[2:]]
    common = ["data", "index", str(root), "--image", "s2=s2/*.tif", "--label", "label/*.tif", "--classes",
              str(base / "classes4.yaml"), "--no-stats"]
    capsys.readouterr()
    assert main([*common, "--bands", "s2=" + ",".join(swapped)]) == 2
    err = _one_line_error(capsys)
    assert "--bands s2" in err and "by name" in err and not (root / "dataset.yaml").exists()
    assert main([*common, "--bands", "s2=B1,B01," + ",".join(S2_NAMES[2:])]) == 2
    assert "'B1' and 'B01' are one band (B1)" in _one_line_error(capsys) and not (root / "dataset.yaml").exists()
    # a dataset.yaml written by hand with the swapped spelling: inspect lists it, training refuses it
    description = yaml.safe_load((b1_data / "dataset.yaml").read_text())
    (root / "dataset.yaml").write_text(yaml.safe_dump({**description, "modalities": {"s2": swapped}}))
    assert main(["data", "inspect", str(root)]) == 1
    assert "band descriptions are ['B1', 'B2'" in capsys.readouterr().out
    assert _finetune(base, root, "swapped") == 2
    assert "reorder the file or the band list" in _one_line_error(capsys) and not (base / "ft" / "swapped").exists()


# ----------------------------------------------------------------------------- case 5: true colour
def test_case5_true_colour_of_b01_named_data(chip):
    from cromss.analysis import image_rgb

    x = chip["s2"][[S2_NAMES.index(b) for b in L2A_NAMES]].astype(np.float32)
    expected = np.stack([x[3], x[2], x[1]], axis=-1)  # B04, B03, B02 of the B01 list, by hand
    low, high = np.percentile(expected, 2), np.percentile(expected, 98)
    expected = np.clip((expected - low) / (high - low), 0, 1)
    for bands in (B01_NAMES, None):  # named, or a 12-band S2 input read as the L2A table
        np.testing.assert_allclose(image_rgb(x, "s2", bands), expected, rtol=1e-6)
    shuffled = [B01_NAMES[i] for i in (7, 3, 2, 1)]  # B08, B04, B03, B02
    np.testing.assert_allclose(image_rgb(x[[7, 3, 2, 1]], "s2", shuffled), expected, rtol=1e-6)


# ----------------------------------------------------------------------------- case 6: analyses
def test_case6_weight_kl_labels_architectures_and_pca(chip, base, b1_data, b01_run, b1_finetuned, capsys):
    assert _finetune(base, b1_data, "other", bands=L2A_NAMES) == 0
    other = _seed0(base, "other")
    out = base / "wkl"
    capsys.readouterr()
    assert main(["analyze", "weight-kl", str(b01_run["run"]), str(b1_finetuned), str(b01_run["run"]), str(other),
                 "--out", str(out)]) == 0
    results = json.loads((out / "weight_kl.json").read_text())
    assert len(results) == 2  # both pairs end in seed0: two entries, labels from the run paths
    for parts in results.values():
        assert "different decoder architectures" in parts["decoder"]["skipped"]  # U-Net vs FPN
        assert parts["encoder"]["kl"] > 0  # the fine-tuned encoder moved away from the pretrained one
    # pca: a run's data kind and bands are kept with --data of another generic folder (no NoL guess)
    assert main(["analyze", "pca", str(b01_run["run"]), "--data", str(b1_data), "--split", "train", "--samples", "4",
                 "--pixels", "8", "--out", str(base / "pca")]) == 0
    # an export on a generic folder: detected as generic, the encoder's 12 bands picked by name of 13
    assert main(["analyze", "pca", str(b01_run["export"]), "--data", str(b1_data), "--split", "train",
                 "--samples", "4", "--pixels", "8", "--out", str(base / "pca2")]) == 0
    curves = json.loads((base / "pca2" / "pca.json").read_text())["image"]
    assert len(curves) == 1 and len(next(iter(curves.values()))) == 5
    rgbn = write_dataset(base / "rgbn", chip, ["B2", "B3", "B4", "B8"])
    capsys.readouterr()
    assert main(["analyze", "pca", str(b01_run["export"]), "--data", str(rgbn), "--split", "train",
                 "--samples", "4", "--out", str(base / "pca3")]) == 2
    assert "the data lacks ['B01'" in _one_line_error(capsys)


# ----------------------------------------------------------------------------- case 7: portable runs
def test_case7_evaluate_and_predict_from_another_folder_with_moved_statistics(chip, base, b1_finetuned, b1_data,
                                                                              tmp_path, monkeypatch, capsys):
    stats = b1_data / "stats" / "s2_stats.json"
    hidden = stats.with_name("hidden.json")
    stats.rename(hidden)
    try:
        monkeypatch.chdir(tmp_path)
        capsys.readouterr()
        assert main(["evaluate", str(b1_finetuned), "--out", "ev.json"]) == 0
        result = json.loads((tmp_path / "ev.json").read_text())
        metrics = json.loads((b1_finetuned / "metrics.json").read_text())
        assert result["confusion"] == metrics["confusion"]  # the run's own statistics copy: same numbers
        stack = write_stack(tmp_path / "s.tif", chip, list(S2_NAMES), crop=64)
        assert main(["predict", "--checkpoint", str(b1_finetuned), "--s2", str(stack), "--out", "m.tif"]) == 0
        assert (tmp_path / "m.tif").is_file()
    finally:
        hidden.rename(stats)


def test_case7_a_relative_data_root_is_recorded_absolute(base, b1_data, monkeypatch):
    monkeypatch.chdir(b1_data.parent)
    assert _finetune(base, Path(b1_data.name), "relative") == 0
    data = yaml.safe_load((_seed0(base, "relative") / "config.yaml").read_text())["data"]
    assert data["root"] == str(b1_data) and data["stats"]["s2"] == str(b1_data / "stats" / "s2_stats.json")


# ----------------------------------------------------------------------------- case 8: the reference label's grid
@pytest.mark.parametrize("change", ["smaller", "shifted", "crs"])
def test_case8_reference_label_is_checked_like_an_image(chip, base, b01_data, change, capsys):
    root = base / f"ref-{change}"
    shutil.copytree(b01_data, root)
    with (root / "samples.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if not r["split"])
    path = root / row["reference"]
    with rasterio.open(path) as src:
        data, transform, crs = src.read(1), src.transform, src.crs
    if change == "smaller":
        data = data[:-1, :-1]
    elif change == "shifted":
        transform = transform * transform.translation(1, 0)
    else:
        crs = "EPSG:3857"
    write_tif(path, np.ascontiguousarray(data), transform, crs=crs)
    capsys.readouterr()
    assert main(["data", "inspect", str(root)]) == 1
    out = capsys.readouterr().out
    assert "PROBLEMS" in out and "reference" in out and "lies on another grid than its label" in out
    runs = base / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    assert main(["pretrain", "--config", str(_pretrain_yaml(base, root, f"ref-{change}"))]) == 2
    err = _one_line_error(capsys)
    assert "reference" in err and str(path) in err and "another grid" in err
    assert not (runs / f"ref-{change}").exists() and (set(runs.iterdir()) if runs.is_dir() else set()) == before


def _pretrain_yaml(base: Path, root: Path, name: str) -> Path:
    config = {
        "name": name, "output_dir": str(base / "runs"),
        "data": {"kind": "generic", "root": str(root), "crop_size": 64, "batch_size": 4, "val_fraction": 0.25},
        "model": {"encoder": "resnet18", "fusion": "single", "decoder_channels": [16, 16, 16, 16, 16]},
        "trainer": {"max_epochs": 1, **TRAINER},
    }
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
