"""Compact samples + preprocessing on the device equal the former in-loader float pipeline.

The reference below is the sample assembly of the dataset core before issue 14 (normalise every
modality to float32, zero invalid pixels, int64 labels, then torchvision-based ``JointAugment``),
rebuilt from the layouts' raw reads. Its normalisation is computed here by hand from the statistics
file (read with ``json``: the dataset's ``stats/<modality>_stats.json``, else the packaged SSL4EO-S12
file): clip to mean +- 2 std, scale to [0, 1] in numpy; LMDB values (stored clipped) are / 255.
The new path (compact sample in the loader, collate, ``BatchPreprocess`` on the batch) and the float
datasets must give the same tensors for the same seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import default_collate

import cromss
from cromss import schema
from cromss.data import CromSSDataModule, DataConfig, build_dataset
from cromss.data.demo import make_demo
from cromss.data.preprocess import AUG_KEY, BatchPreprocess
from cromss.transforms import JointAugment, center_crop
from tests.generic_data import make_synthetic

SIZE, CROP = 40, 24


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), locations=6, size=SIZE, noise_rate=0.3, seed=2,
                     dw_train=3, dw_test=2)


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("generic"), {"opt": ["red", "nir", "swir"], "sar": ["vv"]},
                          ["land", "water", "urban"], [3, 1, 2, 2], size=SIZE, dtype="uint16", seed=5)
    # nodata (0) pixels in one optical image: they must become invalid, input 0, label ignored
    path = root / "opt" / "loc0_0.tif"
    with rasterio.open(path, "r+") as handle:
        data = handle.read()
        data[:, 3:9, 5:20] = 0
        handle.write(data)
    return root


PACKAGED_STATS = Path(cromss.__file__).parent / "resources"


def stats_by_hand(dataset, modality: str) -> dict:
    """The statistics JSON the dataset must normalise ``modality`` with, read here: ``<root>/stats/`` of a
    generic dataset, the packaged file for the demo (which writes no statistics of its own)."""
    root = Path(dataset.cfg.root)
    if dataset.cfg.kind == "generic":
        path = root / "stats" / f"{modality}_stats.json"
    else:
        assert not list(root.rglob("stats/*.json")), "the demo data has no statistics of its own"
        path = PACKAGED_STATS / f"{modality}_stats.json"
    return json.loads(path.read_text())


def normalise_by_hand(raw: np.ndarray, stats: dict, bands) -> torch.Tensor:
    """clip(x, m - 2s, m + 2s) -> [0, 1] per band, in float64 numpy; statistics picked by band name."""
    index = [stats["bands"].index(band) for band in bands]
    mean = np.asarray(stats["mean"], np.float64)[index][:, None, None]
    std = np.asarray(stats["std"], np.float64)[index][:, None, None]
    low, high = mean - 2 * std, mean + 2 * std
    return torch.from_numpy(((np.clip(raw.astype(np.float64), low, high) - low) / (high - low)).astype(np.float32))


def reference_sample(dataset, index: int, augment: JointAugment | None) -> dict:
    """Today's path: float normalisation per sample (by hand), then the joint torchvision augmentation."""
    location, fixed = dataset.entries[index]
    season = dataset._season(location, fixed)
    labels, labels_true = dataset.read_labels(location)
    height, width = labels.shape[-2:]
    invalid = np.zeros((height, width), dtype=bool)
    sample = {}
    for modality in dataset.modalities:
        images = dataset.read_images(location, season, modality)
        invalid |= images.invalid
        if images.prescaled:  # uint8 LMDB values: already clipped to mean +- 2 std and scaled by 255
            assert images.data.dtype == np.uint8
            sample[modality] = torch.from_numpy(images.data.astype(np.float32) / 255.0)
        else:
            sample[modality] = normalise_by_hand(np.asarray(images.data), stats_by_hand(dataset, modality),
                                                 dataset.bands_of(modality))
    valid = torch.from_numpy(~invalid)
    for modality in dataset.modalities:
        sample[modality] = torch.where(valid, sample[modality], torch.zeros(()))
    all_seasons = torch.from_numpy(dataset._pad(labels).astype(np.int64))
    sample.update(label=torch.where(valid, all_seasons[season], torch.tensor(schema.IGNORE_INDEX)),
                  labels_all_seasons=all_seasons, season=torch.tensor(season), valid=valid)
    if labels_true is not None:
        true = torch.from_numpy(np.asarray(labels_true, dtype=np.int64))
        sample["label_true"] = torch.where(valid, true[season], torch.tensor(schema.IGNORE_INDEX))
    if augment is not None:
        return augment(sample)
    if dataset.cfg.eval_crop is not None:
        return center_crop(sample, dataset.cfg.eval_crop, image_keys=tuple(dataset.modalities))
    return sample


def _compare(dataset, indices, seed: int, augment: JointAugment | None) -> torch.Tensor:
    torch.manual_seed(seed)
    expected = [reference_sample(dataset, i, augment) for i in indices]
    torch.manual_seed(seed)
    compact = [dataset.compact_sample(i) for i in indices]
    batch = dataset.preprocessor()(default_collate(compact))
    for position, reference in enumerate(expected):
        for key, value in reference.items():
            got = batch[key][position]
            assert got.dtype == value.dtype, key
            assert got.shape == value.shape, key
            if value.dtype.is_floating_point:
                assert float((got - value).abs().max()) <= 1e-6, key
            else:
                assert torch.equal(got, value), key
    return torch.stack([c[AUG_KEY] for c in compact])


def _augment(dataset) -> JointAugment:
    cfg = dataset.cfg
    return JointAugment(cfg.crop_size, cfg.flip_p, cfg.rotate_p, image_keys=tuple(dataset.modalities))


@pytest.mark.parametrize("fmt", ["lmdb", "geotiff"])
def test_nol_device_path_equals_loader_path(demo, fmt):
    cfg = DataConfig(kind="nol", root=str(demo), format=fmt, crop_size=CROP, val_fraction=0.2, rotate_p=0.8)
    dataset = build_dataset(cfg, "train", train=True, compact=True)
    indices = list(range(len(dataset))) * 3
    aug = _compare(dataset, indices, seed=11, augment=_augment(dataset))
    # the draws covered flips and every rotation, so the check exercised the geometry
    assert aug[:, 0].any() and aug[:, 1].any() and set(aug[:, 2].tolist()) == {0, 1, 2, 3}
    # validation: every season of every location, no augmentation
    val = build_dataset(cfg, "val", train=False, compact=True)
    _compare(val, list(range(len(val))), seed=0, augment=None)


def test_compact_dtypes_and_sizes(demo):
    lmdb = build_dataset(DataConfig(kind="nol", root=str(demo), format="lmdb", crop_size=CROP), "train",
                         train=True, compact=True)[0]
    assert lmdb["s2"].dtype == torch.uint8 and lmdb["s1"].dtype == torch.uint8
    assert lmdb["s2"].shape == (13, CROP, CROP)
    for key in ("label", "labels_all_seasons", "label_true"):
        assert lmdb[key].dtype == torch.uint8
    tiff = build_dataset(DataConfig(kind="nol", root=str(demo), format="geotiff", crop_size=CROP), "train",
                         train=True, compact=True)[0]
    with rasterio.open(next((demo / "nol" / "s2c").rglob("B2.tif"))) as handle:
        stored = np.dtype(handle.dtypes[0])
    assert tiff["s2"].numpy().dtype == stored
    # bytes per sample, LMDB: 13 + 2 image bands, 4 + 1 + 1 label planes, 1 valid mask; season, aug int64
    nbytes = sum(v.numel() * v.element_size() for v in lmdb.values() if torch.is_tensor(v))
    assert nbytes == (15 + 4 + 1 + 1 + 1) * CROP * CROP + 8 + 3 * 8


def test_downstream_tiles_device_path(demo):
    cfg = DataConfig(kind="dw", root=str(demo), crop_size=16, val_fraction=0.3, rotate_p=0.9)
    dataset = build_dataset(cfg, "train", train=True, compact=True)
    _compare(dataset, list(range(len(dataset))) * 4, seed=4, augment=_augment(dataset))
    test = build_dataset(DataConfig(kind="dw", root=str(demo), eval_crop=20), "test", train=False, compact=True)
    _compare(test, list(range(len(test))), seed=0, augment=None)


def test_generic_device_path_with_nodata_and_padding(generic):
    cfg = DataConfig(kind="generic", root=str(generic), crop_size=CROP, val_fraction=0.25, rotate_p=0.8)
    dataset = build_dataset(cfg, "train", train=True, compact=True)
    assert dataset.compact_sample(0)["opt"].dtype == torch.uint16
    indices = list(range(len(dataset))) * 5
    _compare(dataset, indices, seed=7, augment=_augment(dataset))
    # the nodata block: invalid in the full-tile evaluation sample (location 0, first date)
    for split in ("train", "val"):
        full = build_dataset(DataConfig(kind="generic", root=str(generic), val_fraction=0.25), split,
                             train=False, compact=True)
        _compare(full, list(range(len(full))), seed=0, augment=None)
        names = [location.name for location in full.locations]
        if "loc0" in names:
            first = full.preprocessor().sample(full.compact_sample(full.entries.index((names.index("loc0"), 0))))
    assert not bool(first["valid"][3:9, 5:20].any())
    assert float(first["opt"][:, 3:9, 5:20].abs().max()) == 0.0
    assert bool((first["label"][3:9, 5:20] == schema.IGNORE_INDEX).all())


@pytest.mark.parametrize("fmt", ["lmdb", "geotiff"])
def test_float_datasets_equal_the_reference_and_are_not_preprocessed_twice(demo, fmt):
    cfg = DataConfig(kind="nol", root=str(demo), format=fmt, crop_size=CROP, rotate_p=0.8)
    floats = build_dataset(cfg, "train", train=True)
    for index in range(len(floats)):
        torch.manual_seed(3 + index)
        sample = floats[index]
        torch.manual_seed(3 + index)
        expected = reference_sample(floats, index, _augment(floats))
        assert AUG_KEY not in sample and set(sample) >= set(expected)
        for key, value in expected.items():
            assert sample[key].dtype == value.dtype and sample[key].shape == value.shape, key
            if value.dtype.is_floating_point:
                assert float((sample[key] - value).abs().max()) <= 1e-6, key
            else:
                assert torch.equal(sample[key], value), key
    # a batch without 'aug' is already preprocessed: unchanged
    batch = default_collate([sample])
    assert BatchPreprocess(["s1", "s2"], {"s1": None, "s2": None})(batch)["s2"] is batch["s2"]


def test_datamodule_batches_are_compact(demo):
    dm = CromSSDataModule(DataConfig(kind="nol", root=str(demo), format="lmdb", crop_size=CROP, batch_size=2))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["s2"].dtype == torch.uint8 and batch["label"].dtype == torch.uint8
    ready = dm.preprocess(batch)
    assert ready["s2"].dtype == torch.float32 and ready["label"].dtype == torch.int64
    assert float(ready["s2"].max()) <= 1.0
