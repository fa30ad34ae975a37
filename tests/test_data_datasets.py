"""Datasets and DataModule on a tiny demo dataset written in the real layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cromss import schema
from cromss.data import CromSSDataModule, DataConfig, build_dataset
from cromss.data.datasets import split_indices
from cromss.data.demo import make_demo

LOCATIONS, SIZE = 6, 32


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), locations=LOCATIONS, size=SIZE, noise_rate=0.3,
                     seed=1, dw_train=4, dw_test=2)


def _cfg(demo, **kw):
    base = dict(kind="nol", root=str(demo), crop_size=16, val_fraction=0.2, seed=3)
    base.update(kw)
    return DataConfig(**base)


def _check_contract(sample, height, width, seasons, s2_bands=13):
    assert sample["s1"].dtype == torch.float32 and sample["s1"].shape == (2, height, width)
    assert sample["s2"].dtype == torch.float32 and sample["s2"].shape == (s2_bands, height, width)
    for key in ("s1", "s2"):
        assert float(sample[key].min()) >= 0.0 and float(sample[key].max()) <= 1.0
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == (height, width)
    assert sample["labels_all_seasons"].shape == (seasons, height, width)
    assert sample["season"].dtype == torch.int64 and sample["season"].ndim == 0
    assert sample["valid"].dtype == torch.bool and sample["valid"].shape == (height, width)
    assert isinstance(sample["id"], str)
    labels = sample["label"][sample["label"] != schema.IGNORE_INDEX]
    assert int(labels.max()) < 9 and int(labels.min()) >= 0


@pytest.mark.parametrize("fmt", ["lmdb", "geotiff"])
def test_nol_train_sample_follows_the_batch_contract(demo, fmt):
    dataset = build_dataset(_cfg(demo, format=fmt), "train", train=True)
    assert len(dataset) == LOCATIONS - 1  # round(6 * 0.2) = 1 location for validation
    sample = dataset[0]
    _check_contract(sample, 16, 16, 4)
    assert "label_true" in sample and sample["label_true"].shape == (16, 16)
    season = int(sample["season"])
    assert torch.equal(sample["label"], sample["labels_all_seasons"][season])


def test_lmdb_and_geotiff_layouts_give_the_same_sample(demo):
    kw = dict(augment=False, crop_size=None, random_season=False, season=2)
    lmdb = build_dataset(_cfg(demo, format="lmdb", **kw), "train", train=True)
    tiff = build_dataset(_cfg(demo, format="geotiff", **kw), "train", train=True)
    a, b = lmdb[1], tiff[1]
    assert a["id"] == b["id"] and int(a["season"]) == int(b["season"]) == 2
    # LMDB holds the clipped values as uint8: equal up to the rounding step 1/255
    assert float((a["s2"] - b["s2"]).abs().max()) <= 0.5 / 255 + 1e-5
    assert float((a["s1"] - b["s1"]).abs().max()) <= 0.5 / 255 + 1e-5
    assert torch.equal(a["labels_all_seasons"], b["labels_all_seasons"])
    assert torch.equal(a["label_true"], b["label_true"])


def test_val_split_is_seeded_disjoint_and_covers_all_seasons(demo):
    cfg = _cfg(demo, format="lmdb")
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    train_ids = {train.sample_id(i) for i in range(len(train.locations))}
    val_ids = {val.sample_id(i) for i in range(len(val.locations))}
    assert len(val_ids) == 1 and not (train_ids & val_ids) and len(train_ids | val_ids) == LOCATIONS
    assert len(val) == 4  # eval_seasons='all': one entry per season, deterministic
    assert [int(val[i]["season"]) for i in range(4)] == [0, 1, 2, 3]
    assert val[0]["s2"].shape[-1] == SIZE  # full tile, no crop in validation
    again = build_dataset(cfg, "val", train=False)
    assert again.sample_id(0) == val.sample_id(0)
    first = build_dataset(_cfg(demo, format="lmdb", eval_seasons="first", season=1), "val", train=False)
    assert len(first) == 1 and int(first[0]["season"]) == 1


def test_split_indices_sizes():
    train, val = split_indices(1000, 0.01, seed=0)
    assert len(val) == 10 and len(train) == 990 and not set(train) & set(val)
    train, val = split_indices(3, 0.01, seed=0)
    assert len(val) == 1 and len(train) == 2  # at least one validation sample
    assert split_indices(50, 0.1, seed=5) == split_indices(50, 0.1, seed=5)
    assert split_indices(50, 0.1, seed=5) != split_indices(50, 0.1, seed=6)


def test_noisy_labels_differ_from_truth_at_about_the_requested_rate(demo):
    info = json.loads((demo / "demo.json").read_text())
    assert abs(info["noise_rate_measured"] - 0.3) < 0.05
    dataset = build_dataset(_cfg(demo, format="lmdb", augment=False, crop_size=None), "train", train=True)
    wrong = total = 0
    for i in range(len(dataset)):
        s = dataset[i]
        wrong += int((s["label"] != s["label_true"]).sum())
        total += s["label"].numel()
    assert 0.2 < wrong / total < 0.4


def test_random_season_varies_and_fixed_season_holds(demo):
    torch.manual_seed(0)
    dataset = build_dataset(_cfg(demo, format="lmdb"), "train", train=True)
    assert len({int(dataset[0]["season"]) for _ in range(20)}) > 1
    fixed = build_dataset(_cfg(demo, format="lmdb", random_season=False, season=3), "train", train=True)
    assert {int(fixed[0]["season"]) for _ in range(5)} == {3}


def test_s2_9_bands_and_single_modality(demo):
    dataset = build_dataset(_cfg(demo, format="geotiff", s2_bands=9, modalities=["s2"]), "train", train=True)
    sample = dataset[0]
    assert sample["s2"].shape == (9, 16, 16) and "s1" not in sample


def test_downstream_tiles_use_published_dw_ids(demo):
    cfg = DataConfig(kind="dw", root=str(demo), crop_size=16, val_fraction=0.25)
    train = build_dataset(cfg, "train", train=True)
    val = build_dataset(cfg, "val", train=False)
    test = build_dataset(cfg, "test", train=False)
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    sample = test[0]
    _check_contract(sample, SIZE, SIZE, 1)
    # the written tile holds 0 (unlabeled) / 10 (cloud) where our label is ignore, else id + 1
    import rasterio

    with rasterio.open(test.tiles[0].label) as src:
        raw = src.read(1)
    label = sample["label"].numpy()
    assert np.array_equal(label == schema.IGNORE_INDEX, np.isin(raw, (0, 10)))
    labeled = (raw > 0) & (raw < 10)
    assert labeled.any() and np.array_equal(label[labeled] + 1, raw[labeled])


def test_max_samples_limits_a_split(demo):
    dataset = build_dataset(_cfg(demo, format="lmdb", max_samples=2), "train", train=True)
    assert len(dataset) == 2


def test_datamodule_batches(demo):
    dm = CromSSDataModule(_cfg(demo, format="lmdb", batch_size=2))
    assert dm.num_classes == 9 and dm.class_table is schema.DW_CLASSES
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["s2"].shape == (2, 13, 16, 16) and batch["label"].shape == (2, 16, 16)
    assert batch["season"].shape == (2,) and len(batch["id"]) == 2
    val = next(iter(dm.val_dataloader()))
    assert val["s1"].shape == (2, 2, SIZE, SIZE)
    dw = CromSSDataModule(DataConfig(kind="dw", root=str(demo), crop_size=16, batch_size=2))
    dw.setup("test")
    assert next(iter(dw.test_dataloader()))["labels_all_seasons"].shape == (2, 1, SIZE, SIZE)


def test_datamodule_workers_read_lmdb(demo):
    dm = CromSSDataModule(_cfg(demo, format="lmdb", batch_size=2, num_workers=1))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["s2"].shape == (2, 13, 16, 16)
