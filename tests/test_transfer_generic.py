"""Fine-tuning, evaluation, tables and reports on generic data (REAL Sen1Floods11 chip), and encoders
loaded across band sets: first-conv channels selected BY BAND NAME."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DIR
from generic_data import tile_sen1floods11

from cromss.cli import main
from cromss.errors import CheckpointError
from cromss.weights import read_export, select_input_channels

PRETRAIN_BANDS = ["B8", "B4", "B3", "B2", "B11"]  # the order the encoder is pretrained on
FINETUNE_BANDS = ["B2", "B3", "B4", "B8"]  # a subset in another order


@pytest.fixture(scope="module")
def chip(tmp_path_factory) -> dict[str, Path]:
    """The real chip twice: noisy NDWI labels (pretraining) and the HAND label as ``label`` (fine-tuning)."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}: real-data tests need it")
    base = tmp_path_factory.mktemp("chip")
    noisy = tile_sen1floods11(SHARED_DIR / "data" / "sen1floods11", base / "noisy")
    hand = tile_sen1floods11(SHARED_DIR / "data" / "sen1floods11", base / "hand")
    with (hand / "samples.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["label"] = row.pop("reference")  # the hand label is the downstream truth
    with (hand / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"noisy": noisy, "hand": hand, "base": base}


@pytest.fixture(scope="module")
def export(chip) -> Path:
    """A tiny single-modal generic pretraining run on 5 S2 bands (B8, B4, B3, B2, B11), exported."""
    config = {
        "name": "chip-s2", "output_dir": str(chip["base"] / "runs"),
        "data": {"kind": "generic", "root": str(chip["noisy"]), "modalities": ["s2"],
                 "bands": {"s2": PRETRAIN_BANDS}, "crop_size": 64, "batch_size": 4, "val_fraction": 0.25},
        "model": {"encoder": "resnet18", "fusion": "single", "modalities": ["s2"], "decoder_channels": [16, 16, 16, 16, 16]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": 1,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "progress_bar": False},
    }
    path = chip["base"] / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 0
    out = chip["base"] / "s2-encoder.safetensors"
    assert main(["export-encoder", str(chip["base"] / "runs" / "chip-s2"), "--modality", "s2", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def finetuned(chip, export) -> Path:
    """``cromss finetune`` on the hand label, 4 bands picked by name from the 5-band export."""
    path = _finetune_yaml(chip, chip["base"], bands=FINETUNE_BANDS)
    assert main(["finetune", "--config", str(path), "--encoder", str(export), "--label", "cromss"]) == 0
    return chip["base"] / "ft" / "floods" / "cromss" / "finetuned" / "seed0"


def _finetune_yaml(chip, tmp_path: Path, **extra) -> Path:
    config = {
        "name": "floods", "output_dir": str(tmp_path / "ft"), "framework": "fpn", "encoder": "resnet18",
        "modality": "s2", "epochs": 1, "seeds": 1,
        "data": {"kind": "generic", "root": str(chip["hand"]), "crop_size": 64, "batch_size": 4,
                 "val_fraction": 0.25},
        "trainer": {"accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1,
                    "enable_progress_bar": False, "log_every_n_steps": 1},
        **extra,
    }
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_export_of_generic_run_records_its_bands_and_dataset_statistics(chip, export):
    _, meta = read_export(export)
    assert meta["bands"] == PRETRAIN_BANDS and meta["architecture"]["in_channels"] == 5
    assert meta["classes"]["names"] == ["not_water", "water"]
    # normalisation = the dataset's own statistics, picked by band name
    stats = json.loads((chip["noisy"] / "stats" / "s2_stats.json").read_text())
    assert meta["normalization"]["mean"] == [stats["mean"][stats["bands"].index(b)] for b in PRETRAIN_BANDS]


def test_finetune_and_evaluate_on_the_hand_label_with_by_name_band_selection(chip, export, finetuned, tmp_path,
                                                                              capsys):
    from cromss.transfer import build_module, load_finetune_config, resolve_finetune_config

    path = _finetune_yaml(chip, tmp_path, bands=FINETUNE_BANDS)
    # the loaded first conv holds the donor's channels of the same band names, in the model's order
    cfg = resolve_finetune_config(load_finetune_config(path, [f"weights={export}"]))
    module = build_module(cfg)
    donor = read_export(export)[0]["conv1.weight"]
    loaded = module.model.encoder.conv1.weight.detach()
    assert loaded.shape[1] == 4
    for index, band in enumerate(FINETUNE_BANDS):
        assert torch.equal(loaded[:, index], donor[:, PRETRAIN_BANDS.index(band)])
    assert module.weights_info["band_selection"]["dropped"] == ["B11"]

    run = finetuned
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["num_classes"] == 2 and resolved["bands"] == FINETUNE_BANDS
    assert resolved["data"]["classes"] == ["not_water", "water"] and len(resolved["data"]["class_colors"]) == 2
    assert resolved["data"]["bands"] == {"s2": FINETUNE_BANDS} and resolved["data"]["modalities"] == ["s2"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == ["not_water", "water"]
    assert len(metrics["iou"]) == 2 and len(metrics["confusion"]) == 2
    # the 4 test tiles of 128 px: every labelled hand pixel (0 or 1; -1 ignored) is counted once
    import numpy as np
    import rasterio

    expected = np.zeros(2, dtype=np.int64)
    with (chip["hand"] / "samples.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test":
                with rasterio.open(chip["hand"] / row["label"]) as src:
                    hand = src.read(1)
                expected += [(hand == 0).sum(), (hand == 1).sum()]
    assert metrics["support"] == expected.tolist()
    head = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert head["model.segmentation_head.0.weight"].shape[0] == 2

    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "not_water" in out and "water" in out
    result = json.loads((run / "evaluate-generic-test.json").read_text())
    assert result["class_names"] == ["not_water", "water"] and result["support"] == expected.tolist()
    assert result["confusion"] == metrics["confusion"]

    # another root: bands (by name) and classes are checked against it; other class names are refused
    assert main(["evaluate", str(run), "--data", str(chip["hand"]), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["confusion"] == metrics["confusion"]
    import shutil

    other = tmp_path / "other"
    shutil.copytree(chip["hand"], other)
    text = (other / "dataset.yaml").read_text().replace("not_water", "dry").replace("- water", "- wet")
    (other / "dataset.yaml").write_text(text)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(other)]) == 2
    err = capsys.readouterr().err
    assert "data.classes" in err and "'dry', 'wet'" in err

    # table and report name the user's classes
    assert main(["table", str(run.parent.parent.parent), "--out", str(tmp_path / "table")]) == 0
    markdown = (tmp_path / "table.md").read_text()
    assert "| Weights | Mode | not_water IoU | water IoU |" in markdown
    iou = [100 * v for v in metrics["iou"]]
    assert f"| cromss | Fine-tuned | {iou[0]:.2f}±0.00 | {iou[1]:.2f}±0.00 |" in markdown
    assert (tmp_path / "table_per_class.csv").read_text().startswith("Weights,Mode,not_water IoU,water IoU")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--table", str(tmp_path / "table.md")]) == 0
    page = (tmp_path / "r.html").read_text()
    colors = resolved["data"]["class_colors"]
    assert f"background:{colors[1]}" in page and ">water</td>" in page.replace("</span>", "")


def test_a_band_the_weights_lack_is_one_line_naming_it_and_creates_nothing(chip, export, tmp_path, capsys):
    path = _finetune_yaml(chip, tmp_path, bands=["B2", "B3", "B12"])
    capsys.readouterr()
    assert main(["finetune", "--config", str(path), "--encoder", str(export)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'B12'" in err and "init_missing" in err
    assert not (tmp_path / "ft").exists()
    # a band the dataset lacks is refused by the config, naming the key
    path = _finetune_yaml(chip, tmp_path, bands=["B2", "B99"])
    assert main(["finetune", "--config", str(path)]) == 2
    assert "'B99'" in capsys.readouterr().err


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_init_missing_initialises_the_missing_channel(chip, export, tmp_path, init):
    from cromss.transfer import build_module, load_finetune_config, resolve_finetune_config

    path = _finetune_yaml(chip, tmp_path, bands=["B12", "B4", "B8"], init_missing=init)
    module = build_module(resolve_finetune_config(load_finetune_config(path, [f"weights={export}"])))
    donor = read_export(export)[0]["conv1.weight"]
    loaded = module.model.encoder.conv1.weight.detach()
    expected = donor.mean(dim=1) if init == "mean" else torch.zeros_like(donor[:, 0])
    assert torch.allclose(loaded[:, 0], expected)
    assert torch.equal(loaded[:, 1], donor[:, PRETRAIN_BANDS.index("B4")])
    assert torch.equal(loaded[:, 2], donor[:, PRETRAIN_BANDS.index("B8")])
    assert module.weights_info["band_selection"]["initialised"] == {"B12": init}


def test_select_input_channels_by_hand():
    weight = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)  # channels A, B, C
    state = {"conv1.weight": weight, "bn1.weight": torch.ones(2)}
    out, report = select_input_channels(state, ["A", "B", "C"], ["C", "A"])
    assert out["conv1.weight"][:, :, 0, 0].tolist() == [[2.0, 0.0], [5.0, 3.0]]
    assert out["bn1.weight"] is state["bn1.weight"] and report["dropped"] == ["B"]
    out, _ = select_input_channels(state, ["A", "B", "C"], ["A", "D"], init_missing="mean")
    assert out["conv1.weight"][:, :, 0, 0].tolist() == [[0.0, 1.0], [3.0, 4.0]]  # mean of 0,1,2 and 3,4,5
    with pytest.raises(CheckpointError, match="band 'D'"):
        select_input_channels(state, ["A", "B", "C"], ["D"])


def test_load_into_a_permuted_or_l2a_model_selects_by_name(tmp_path):
    """A 13-band S2 L1C encoder (band table known) into a 12-band L2A model without B10, and the
    permuted case of issue 17: a model fed the same bands in another order gets permuted weights."""
    import segmentation_models_pytorch as smp

    from cromss.schema import S2_BANDS
    from cromss.weights import load_into

    donor = smp.encoders.get_encoder("resnet18", in_channels=13, depth=5, weights=None)
    path = tmp_path / "plain.pth"
    torch.save(donor.state_dict(), path)  # a plain ResNet file: its bands are the known S2 L1C table
    l2a = [b for b in S2_BANDS if b != "B10"]
    model = smp.FPN("resnet18", encoder_weights=None, in_channels=12, classes=3)
    info = load_into(model, path, modality="s2", bands=l2a)
    assert info["band_selection"]["dropped"] == ["B10"]
    reordered = list(reversed(S2_BANDS))
    model = smp.FPN("resnet18", encoder_weights=None, in_channels=13, classes=3)
    load_into(model, path, modality="s2", bands=reordered)
    got, want = model.encoder.conv1.weight.detach(), donor.conv1.weight.detach()
    for index, band in enumerate(reordered):
        assert torch.equal(got[:, index], want[:, S2_BANDS.index(band)])
    with pytest.raises(CheckpointError, match="band 'B8X'"):
        load_into(smp.FPN("resnet18", encoder_weights=None, in_channels=2, classes=3), path, modality="s2",
                  bands=["B2", "B8X"])


def test_analyze_maps_and_masks_use_the_data_classes(chip, export, finetuned, tmp_path, monkeypatch):
    import cromss.analysis.panels

    seen = []
    original = cromss.analysis.panels._legend
    monkeypatch.setattr(cromss.analysis.panels, "_legend",
                        lambda fig, classes: (seen.append(classes), original(fig, classes)))
    resolved = yaml.safe_load((finetuned / "config.yaml").read_text())
    assert main(["analyze", "maps", str(finetuned), "--split", "test", "--samples", "1",
                 "--out", str(tmp_path / "maps")]) == 0
    assert len(list((tmp_path / "maps").glob("*.png"))) == 1
    assert list(seen[-1].names) == ["not_water", "water"] and list(seen[-1].colors) == resolved["data"]["class_colors"]
    pretrain_run = chip["base"] / "runs" / "chip-s2"
    assert main(["analyze", "masks", str(pretrain_run), "--split", "val", "--samples", "1",
                 "--out", str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 1
    assert list(seen[-1].names) == ["not_water", "water"]


def test_experiment_on_own_generic_data(chip, tmp_path, capsys):
    """`cromss experiment` with pretrain_root/finetune_root: no generated data, the data's own noise,
    the noise-flagging measurement against the hand `reference`, fine-tuning on the hand label."""
    import numpy as np
    import rasterio

    pretrain = {
        "name": "x", "data": {"kind": "generic", "root": "unused", "modalities": ["s2"], "crop_size": 64,
                              "batch_size": 4, "val_fraction": 0.25},
        "model": {"encoder": "resnet18", "fusion": "single", "modalities": ["s2"],
                  "decoder_channels": [16, 16, 16, 16, 16]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": 1,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "progress_bar": False},
    }
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(pretrain))
    _finetune_yaml(chip, tmp_path)
    study = {
        "name": "own", "layout": "ablation", "output_dir": str(tmp_path / "study"),
        "pretrain_root": str(chip["noisy"]), "finetune_root": str(chip["hand"]),
        "pretrain": {"base": str(tmp_path / "pre.yaml")},
        "finetune": {"base": str(tmp_path / "finetune.yaml"), "seeds": 1, "modes": ["finetuned"], "random": False},
        "variants": [{"name": "single-s2"}],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    assert main(["experiment", "ablation", "--config", str(tmp_path / "study.yaml")]) == 0
    root = tmp_path / "study"
    assert not (root / "data").exists()  # nothing generated
    noise = json.loads((root / "pretrain" / "own" / "single-s2" / "noise_detection.json").read_text())
    # hand count: train+val pixels labelled in both the NDWI label (0/1) and the hand reference (0/1)
    pixels = wrong = 0
    with (chip["noisy"] / "samples.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["split"] == "test":
                continue
            with rasterio.open(chip["noisy"] / row["label"]) as a, rasterio.open(chip["noisy"] / row["reference"]) as b:
                noisy, hand = a.read(1), b.read(1)
            known = np.isin(noisy, [0, 1]) & np.isin(hand, [0, 1])
            pixels += int(known.sum())
            wrong += int((noisy != hand)[known].sum())
    assert noise["pixels"] == pixels and noise["noise_rate"] == pytest.approx(wrong / pixels)
    # the AUC / AP of 1 - W_l, recomputed from the run's last.ckpt (numpy W_l per batch of 4 at alpha0, sklearn)
    from noise_reference import noise_auc, run_batches

    run = root / "pretrain" / "own" / "single-s2"
    expected = noise_auc(run_batches(run, ("train", "val"), 4, root=str(chip["noisy"]), crop_size=None,
                                     eval_crop=None, eval_seasons="all", max_samples=None), alpha=0.5)["s2"]
    assert noise["alpha"] == 0.5 and expected["pixels"] == pixels
    assert noise["modalities"]["s2"]["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert noise["modalities"]["s2"]["ap"] == pytest.approx(expected["ap"], abs=1e-6)
    metrics = json.loads((root / "finetune" / "own-s2" / "own-single-s2" / "finetuned" / "seed0" / "metrics.json")
                         .read_text())
    assert metrics["class_names"] == ["not_water", "water"]
    table = (root / "own.md").read_text()
    assert "| S2 | single-s2 |" in table and f"{100 * metrics['oa']:.2f}±0.00" in table
