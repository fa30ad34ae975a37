"""Generic datasets (data.kind: generic): any modalities, bands, classes and timestamps, on real and made data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import rasterio
import torch
from fixtures import TINY_ENCODER
from generic_data import S2_NAMES, make_synthetic, tile_sen1floods11, write_samples

from cromss.data import DataConfig, build_dataset
from cromss.data.description import load_description, read_samples
from cromss.data.resolution import resolve_data_config
from cromss.errors import ConfigError, DataError
from cromss.schema import IGNORE_INDEX
from cromss.smoothing import smooth_labels


@pytest.fixture
def chip_root(shared_dir, tmp_path):
    return tile_sen1floods11(shared_dir / "data" / "sen1floods11", tmp_path / "floods")


def _cfg(root, **kwargs) -> DataConfig:
    base = dict(kind="generic", root=str(root), crop_size=None, augment=False, val_fraction=0.25)
    base.update(kwargs)
    return DataConfig(**base)


def test_real_chip_sample_is_normalised_by_band_name(chip_root):
    cfg = _cfg(chip_root)
    test = build_dataset(cfg, "test", train=False)
    assert len(test) == 4 and test.modalities == ["s2", "s1"]
    sample = test[0]
    assert sample["s2"].shape == (13, 128, 128) and sample["s1"].shape == (2, 128, 128)
    assert sample["labels_all_seasons"].shape == (1, 128, 128) and int(sample["num_seasons"]) == 1
    # hand computation of mean +/- 2 std clipping for band B3 at one valid pixel
    stats = json.loads((chip_root / "stats" / "s2_stats.json").read_text())
    with rasterio.open(chip_root / test.locations[0].rows[0].images["s2"]) as src:
        raw = src.read(3).astype(np.float64)
    y, x = np.argwhere(raw > 0)[0]
    mean, std = stats["mean"][2], stats["std"][2]
    expected = (min(max(raw[y, x], mean - 2 * std), mean + 2 * std) - (mean - 2 * std)) / (4 * std)
    assert abs(float(sample["s2"][2, y, x]) - expected) < 1e-5
    # the noisy NDWI label and the hand reference use class ids 0/1; hand -1 is ignored
    with rasterio.open(chip_root / test.locations[0].rows[0].reference) as src:
        hand = src.read(1)
    true = sample["label_true"].numpy()
    assert set(np.unique(true)) <= {0, 1, IGNORE_INDEX}
    assert ((hand == -1) <= (true == IGNORE_INDEX)).all()


def test_band_subset_by_name_selects_the_right_planes(chip_root):
    cfg = _cfg(chip_root, modalities=["s2"], bands={"s2": ["B8", "B4", "B3"]})
    sample = build_dataset(cfg, "test", train=False)[0]
    full = build_dataset(_cfg(chip_root, modalities=["s2"]), "test", train=False)[0]
    assert sample["s2"].shape[0] == 3
    for out, name in enumerate(["B8", "B4", "B3"]):
        assert torch.equal(sample["s2"][out], full["s2"][S2_NAMES.index(name)])
    with pytest.raises(ConfigError, match=r"\['B99'\] are not bands of s2"):
        resolve_data_config(_cfg(chip_root, bands={"s2": ["B99"]}))


def test_validation_is_drawn_by_location_and_timestamps_are_padded(tmp_path):
    root = make_synthetic(tmp_path / "d", {"optical": ["R", "G", "B", "N"], "radar": ["HH"]},
                          ["a", "b", "c"], timestamps=[1, 3, 2, 3, 1, 2, 2, 1])
    cfg = _cfg(root, val_fraction=0.25)
    train, val = build_dataset(cfg, "train", train=True), build_dataset(cfg, "val", train=False)
    train_names = {loc.name for loc in train.locations}
    val_names = {loc.name for loc in val.locations}
    assert len(val_names) == 2 and not train_names & val_names
    assert train.num_seasons == val.num_seasons == 3
    # eval: one entry per real timestamp of each validation location
    assert len(val) == sum(len(loc.rows) for loc in val.locations)
    for index in range(len(val)):
        sample = val[index]
        count = int(sample["num_seasons"])
        stack = sample["labels_all_seasons"]
        assert stack.shape[0] == 3 and (stack[count:] == IGNORE_INDEX).all()
        assert (stack[:count] != IGNORE_INDEX).any()
        assert sample["optical"].shape[0] == 4 and sample["radar"].shape[0] == 1
    # raw values 10 + id -> class ids; -1 (not in label_values) is ignored
    sample = val[0]
    assert int(sample["label"][0, 0]) == IGNORE_INDEX
    assert set(torch.unique(sample["label"]).tolist()) <= {0, 1, 2, IGNORE_INDEX}


def test_smoothing_of_padded_stack_equals_unpadded():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (1, 2, 16, 16), generator=generator)
    padded = torch.cat([labels, torch.full((1, 2, 16, 16), IGNORE_INDEX)], dim=1)
    season = torch.tensor([1])
    expected = smooth_labels(labels, season, 3, beta=0.05, mu=0.15, sigma=1.0)
    got = smooth_labels(padded, season, 3, beta=0.05, mu=0.15, sigma=1.0, num_timestamps=torch.tensor([2]))
    assert torch.allclose(got, expected, atol=1e-6)


def test_one_timestamp_smoothing_is_the_spatial_term():
    from cromss.smoothing import gaussian_blur

    labels = torch.randint(0, 2, (1, 1, 12, 12), generator=torch.Generator().manual_seed(2))
    got = smooth_labels(labels, torch.tensor([0]), 2, beta=0.0, mu=0.2, sigma=1.0)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 2).permute(0, 3, 1, 2).float()
    assert torch.allclose(got, 0.8 * one_hot + 0.2 * gaussian_blur(one_hot, 1.0), atol=1e-6)


def test_resolve_fills_modalities_bands_and_classes(tmp_path):
    root = make_synthetic(tmp_path / "d", {"sar": ["VV", "VH"], "msi": ["B2", "B3"]}, ["x", "y"], [1, 1, 1])
    cfg = resolve_data_config(_cfg(root))
    assert cfg.modalities == ["sar", "msi"] and cfg.bands == {"sar": ["VV", "VH"], "msi": ["B2", "B3"]}
    assert cfg.classes == ["x", "y"] and len(cfg.class_colors) == 2
    with pytest.raises(ConfigError, match="'optical' is not a modality"):
        resolve_data_config(_cfg(root, modalities=["optical"]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows, root: rows[1].update(s1=""), "row 2 (loc1): no s1 file"),
        (lambda rows, root: rows[0].update(s2="s2/nothing.tif"), "row 1 (loc0): s2 file"),
        (lambda rows, root: rows[2].update(label="../outside.tif"), "must be relative to"),
        (lambda rows, root: rows.append(dict(rows[0])), "appears again"),
        (lambda rows, root: rows[0].update(split="holdout"), "split 'holdout' is not one of"),
    ],
)
def test_bad_sample_table_names_the_row(tmp_path, edit, message):
    root = make_synthetic(tmp_path / "d", {"s2": ["B2", "B3"], "s1": ["VV"]}, ["a", "b"], [1, 1, 1])
    import csv

    with (root / "samples.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row.setdefault("split", "")
    edit(rows, root)
    write_samples(root, rows)
    with pytest.raises(DataError, match=re.escape(message)):
        read_samples(load_description(root))


def test_bad_files_name_the_sample(tmp_path):
    from generic_data import write_tif
    from rasterio.transform import from_origin

    root = make_synthetic(tmp_path / "d", {"s2": ["B2", "B3", "B4"]}, ["a", "b"], [1, 1, 1],
                          splits=["train", "train", "val"])
    dataset = build_dataset(_cfg(root), "train", train=False)
    assert [loc.name for loc in dataset.locations] == ["loc0", "loc1"]
    # fewer bands than listed
    write_tif(root / "s2/loc0_0.tif", np.ones((2, 32, 32), np.uint16), from_origin(500000, 4000000, 10, 10),
              crs="EPSG:32632")
    with pytest.raises(DataError, match=r"s2 image of sample loc0@2021-01-15 .*has 2 band\(s\), expected 3"):
        dataset[0]
    # the same size on another grid (shifted origin) than its label
    write_tif(root / "s2/loc1_0.tif", np.ones((3, 32, 32), np.uint16), from_origin(0, 0, 10, 10), crs="EPSG:32632")
    with pytest.raises(DataError, match=r"sample loc1@2021-01-15 \(row 2\).*another grid.* vs "):
        dataset[1]


def test_class_list_of_one_is_refused(tmp_path):
    root = make_synthetic(tmp_path / "d", {"s2": ["B2"]}, ["a", "b"], [1, 1])
    text = (root / "dataset.yaml").read_text().replace("- b\n", "")
    (root / "dataset.yaml").write_text(text)
    with pytest.raises(DataError, match="at least 2"):
        load_description(root)


def test_pretrain_mid_fusion_on_the_real_chip_reports_noise_auc(chip_root, tmp_path):
    import yaml

    from cromss.cli import main

    config = {
        "name": "chip-midf", "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "generic", "root": str(chip_root), "crop_size": 64, "batch_size": 4, "val_fraction": 0.25},
        "model": {"encoder": TINY_ENCODER, "fusion": "mid", "decoder_channels": [16, 16, 16, 16, 16]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": 1, "limit_train_batches": 2,
                    "num_sanity_val_steps": 0, "progress_bar": False, "log_every_n_steps": 1},
    }
    path = tmp_path / "chip.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 0
    run = tmp_path / "runs" / "chip-midf"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["num_classes"] == 2 and resolved["data"]["classes"] == ["not_water", "water"]
    assert resolved["model"]["modalities"] == ["s2", "s1"]
    summary = json.loads((run / "summary.json").read_text())
    # the NDWI label is scored against the hand label: the AUC of 1 - W_l of the last validation, recomputed
    # from last.ckpt (numpy W_l at alpha0 = 0.5 after the 1-epoch ramp, the val tiles in one batch of 4)
    from noise_reference import noise_auc, run_batches

    expected = noise_auc(run_batches(run, ("val",), 4), alpha=0.5)
    assert set(summary["noise_auc"]) == {"s1", "s2"}
    for m in ("s1", "s2"):
        assert summary["noise_auc"][m] == pytest.approx(expected[m]["auc_1001"], abs=1e-5), m
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    head = [v for k, v in state.items() if k.startswith("net.heads.shared") and k.endswith("weight")][0]
    assert head.shape[0] == 2


@pytest.mark.parametrize(("fusion", "modalities"), [("late", ["msi", "sar", "dem"]), ("single", ["msi"])])
def test_pretrain_any_number_of_modalities_and_timestamps(tmp_path, fusion, modalities):
    import yaml

    from cromss.cli import main

    bands = {"msi": ["B2", "B3", "B4", "B8"], "sar": ["VV", "VH"], "dem": ["height"]}
    root = make_synthetic(tmp_path / "d", bands, ["low", "mid", "high"], timestamps=[1, 3, 2, 2, 1, 3])
    config = {
        "name": "syn", "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "generic", "root": str(root), "modalities": modalities, "crop_size": 32,
                 "batch_size": 2, "val_fraction": 0.34},
        "model": {"encoder": "resnet18", "fusion": fusion, "decoder_channels": [8, 8, 8, 8, 8]},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": 2,
                    "num_sanity_val_steps": 0, "progress_bar": False, "log_every_n_steps": 1},
    }
    path = tmp_path / "syn.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", "--config", str(path)]) == 0
    resolved = yaml.safe_load((tmp_path / "runs" / "syn" / "config.yaml").read_text())
    assert resolved["model"]["modalities"] == modalities and resolved["model"]["num_classes"] == 3
    assert resolved["model"]["bands"] == {m: bands[m] for m in modalities}
    state = torch.load(tmp_path / "runs" / "syn" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)["state_dict"]
    for modality in modalities:
        conv = state[f"net.encoders.{modality}.conv1.weight"]
        assert conv.shape[1] == len(bands[modality])


def test_tiles_not_divisible_by_32_are_padded(tmp_path):
    from cromss.training.config import PretrainConfig
    from cromss.training.module import CromSSModule

    root = make_synthetic(tmp_path / "d", {"msi": ["B2", "B3"], "sar": ["VV"]}, ["a", "b"], [1, 1, 1], size=40)
    cfg = PretrainConfig(data=DataConfig(kind="generic", root=str(root), crop_size=None, augment=False))
    cfg.model.encoder, cfg.model.decoder_channels = "resnet18", [8, 8, 8, 8, 8]
    module = CromSSModule(cfg)
    batch = build_dataset(module.cfg.data, "train", train=False)[0]
    batch = {k: v[None] if torch.is_tensor(v) else [v] for k, v in batch.items()}
    logits = module._forward(batch)
    assert logits["msi"].shape == (1, 2, 40, 40) and logits["sar"].shape == (1, 2, 40, 40)
    # the valid part equals the network applied to the reflect-padded input, cropped back
    padded = torch.nn.functional.pad(batch["msi"], (0, 24, 0, 24), mode="reflect")
    module.eval()
    with torch.no_grad():
        direct = module.net.forward_modality("msi", padded)[..., :40, :40]
        assert torch.allclose(module._forward(batch)["msi"], direct, atol=1e-6)
