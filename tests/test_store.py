"""Sharded store: round trip against the source datasets, checksums, disjoint DDP x worker split."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cromss.errors import DataError
from cromss.store import (
    ShardedDataset,
    ShardWriter,
    convert_dataset,
    iter_store,
    read_index,
    shards_for_worker,
    verify_store,
    write_records,
)

torch.manual_seed(0)


def _records(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield (f"loc.{i:03d}",  # ids with dots must survive (tar keys are running numbers)
               {"s2": rng.integers(0, 255, (2, 3, 4, 4), dtype=np.uint8),
                "label": rng.integers(0, 9, (2, 4, 4)).astype(np.uint8),
                "valid": rng.random((4, 4)) > 0.5},
               {"row": i})


@pytest.fixture()
def small_store(tmp_path):
    root = tmp_path / "store"
    write_records(_records(23), root, shard_size=3)
    return root


# ----------------------------------------------------------------------------- format
def test_index_counts_checksums_and_raw_round_trip(small_store):
    index = read_index(small_store)
    assert index["total"] == 23
    assert [s["count"] for s in index["shards"]] == [3] * 7 + [2]
    assert all(len(s["sha256"]) == 64 and (small_store / s["name"]).is_file() for s in index["shards"])
    expected = list(_records(23))
    got = list(iter_store(small_store))
    assert [r["meta"]["id"] for r in got] == [e[0] for e in expected]
    for (sample_id, arrays, meta), record in zip(expected, got):
        assert record["meta"] == {**meta, "id": sample_id}
        for name, array in arrays.items():
            assert record[name].dtype == array.dtype and np.array_equal(record[name], array)
    assert verify_store(small_store) == {"shards": 8, "samples": 23}


def test_uncompressed_shards_and_member_names(tmp_path):
    import tarfile

    write_records(_records(2), tmp_path / "s", shard_size=5, compression="none")
    (shard,) = read_index(tmp_path / "s")["shards"]
    assert shard["name"].endswith(".tar")
    with tarfile.open(tmp_path / "s" / shard["name"]) as tar:
        names = tar.getnames()
    assert names[:4] == ["000000000.s2.npy", "000000000.label.npy", "000000000.valid.npy", "000000000.json"]


def test_writer_rejects_duplicate_ids_and_existing_store(tmp_path, small_store):
    writer = ShardWriter(tmp_path / "dup")
    writer.add("a", {"x": np.zeros(2)})
    with pytest.raises(DataError, match="'a' was written twice"):
        writer.add("a", {"x": np.zeros(2)})
    with pytest.raises(DataError, match="already holds a store"):
        ShardWriter(small_store)


# ----------------------------------------------------------------------------- corruption
def test_corrupt_shard_is_named(small_store):
    shard = read_index(small_store)["shards"][2]
    path = small_store / shard["name"]
    import tarfile

    with tarfile.open(path) as tar:
        member = tar.getmembers()[4]  # second sample's first (gzip-compressed) array
    data = bytearray(path.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=shard["name"]):
        verify_store(small_store)
    with pytest.raises(DataError, match=shard["name"]):
        list(iter_store(small_store))
    with pytest.raises(DataError, match=shard["name"]):
        list(ShardedDataset(small_store, shuffle=False, verify=True))


def test_truncated_and_missing_shards_are_named(small_store):
    shards = read_index(small_store)["shards"]
    truncated = small_store / shards[1]["name"]
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match=shards[1]["name"]):
        list(iter_store(small_store))
    (small_store / shards[4]["name"]).unlink()
    with pytest.raises(DataError, match="2 bad shard") as err:
        verify_store(small_store)
    assert f"shard {shards[4]['name']} is missing" in str(err.value) and shards[1]["name"] in str(err.value)


def test_missing_or_bad_index(tmp_path, small_store):
    with pytest.raises(DataError, match="no store index"):
        read_index(tmp_path / "nothing")
    (small_store / "index.json").write_text("{broken")
    with pytest.raises(DataError, match="index.json is not valid JSON"):
        read_index(small_store)


# ----------------------------------------------------------------------------- distribution
def test_shard_assignment_is_a_partition():
    for epoch in range(3):
        parts = [shards_for_worker(11, epoch, 5, r, 2, w, 2) for r in range(2) for w in range(2)]
        flat = [s for p in parts for s in p]
        assert sorted(flat) == list(range(11))
    assert shards_for_worker(11, 0, 5, 0, 2, 0, 2) != shards_for_worker(11, 1, 5, 0, 2, 0, 2)


def _epoch_ids(root, epoch, world_size=2, num_workers=2, **kwargs):
    per_rank = []
    for rank in range(world_size):
        ds = ShardedDataset(root, rank=rank, world_size=world_size, seed=3, shuffle_buffer=4, **kwargs)
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
        per_rank.append([s["id"] for s in loader])
    return per_rank


def test_two_ranks_two_workers_see_each_sample_once(small_store):
    all_ids = sorted(f"loc.{i:03d}" for i in range(23))
    orders = []
    for epoch in (0, 1):
        per_rank = _epoch_ids(small_store, epoch)
        union = [i for ids in per_rank for i in ids]
        assert Counter(union).most_common(1)[0][1] == 1  # no id repeats within the epoch
        assert sorted(union) == all_ids  # and together they are the dataset
        assert not set(per_rank[0]) & set(per_rank[1])
        orders.append(per_rank)
    assert orders[0] != orders[1]  # a new order each epoch ...
    assert _epoch_ids(small_store, 1) == orders[1]  # ... and the same one when repeated


def test_len_is_samples_of_this_rank(small_store):
    sizes = []
    for rank in range(2):
        ds = ShardedDataset(small_store, rank=rank, world_size=2)
        ds.set_epoch(4)
        sizes.append(len(ds))
        assert len(ds) == len(list(ds))
    assert sum(sizes) == 23


def test_resume_mid_epoch_continues_the_same_order(small_store):
    def run(skip):
        ds = ShardedDataset(small_store, seed=1, shuffle_buffer=5)
        ds.set_epoch(2, skip=skip, batch_size=2)
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: [s["id"] for s in b])
        return list(loader)

    full = run(0)
    assert sorted(i for b in full for i in b) == sorted(f"loc.{i:03d}" for i in range(23))
    resumed = run(skip=3 * 2)  # 3 batches of 2 were consumed before the interruption
    assert resumed == full[3:3 + len(resumed)]
    assert [i for b in full[:3] + resumed for i in b] == [i for b in full for i in b]


# ----------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from cromss.data.demo import make_demo

    root = tmp_path_factory.mktemp("demo")
    make_demo(root, locations=5, size=16, dw_train=3, dw_test=2, seed=1)
    return root


def _assert_same_samples(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize(("kind", "fmt", "split"), [("nol", "lmdb", "all"), ("nol", "geotiff", "all"),
                                                     ("dw", "auto", "test")])
def test_convert_then_read_equals_source_dataset(tmp_path, demo_root, kind, fmt, split):
    from cromss.data import DataConfig
    from cromss.data.datasets import NolGeoTiffDataset, NolLmdbDataset, TileDataset, list_tiles

    cfg = DataConfig(kind=kind, root=str(demo_root), format=fmt, crop_size=None)
    index = convert_dataset(cfg, tmp_path / "store", split=split, shard_size=2)
    if kind == "nol":
        cls = NolLmdbDataset if fmt == "lmdb" else NolGeoTiffDataset
        source = cls(cfg, demo_root / "nol", None, False)
    else:
        source = TileDataset(cfg, list_tiles(demo_root / "dw", "dw", "test"), False)
    assert index["total"] == len(source.locations)
    # raw records: arrays, labels and metadata identical to what the readers return
    for loc, record in enumerate(iter_store(tmp_path / "store")):
        assert record["meta"]["id"] == source.sample_id(loc)
        labels, labels_true = source.read_labels(loc)
        assert np.array_equal(record["label"], labels)
        if labels_true is None:
            assert "label_true" not in record
        else:
            assert np.array_equal(record["label_true"], labels_true)
        for modality in ("s1", "s2"):
            for season in range(source.num_seasons):
                images = source.read_images(loc, season, modality)
                assert record[modality][season].dtype == images.data.dtype
                assert np.array_equal(record[modality][season], images.data)
                assert np.array_equal(record[f"{modality}_invalid"][season], images.invalid)
                assert record["meta"]["prescaled"][modality] == images.prescaled
    # samples: the store yields exactly the source dataset's samples (no augmentation)
    stored = list(ShardedDataset(tmp_path / "store", cfg=cfg, train=False, shuffle=False))
    expected = [source[i] for i in range(len(source))]
    assert len(stored) == len(expected)
    for a, b in zip(stored, expected):
        _assert_same_samples(a, b)


def test_training_samples_follow_the_contract(tmp_path, demo_root):
    from cromss.data import DataConfig

    cfg = DataConfig(kind="nol", root=str(demo_root), crop_size=8, s2_bands=9)
    convert_dataset(cfg, tmp_path / "store", shard_size=2)
    torch.manual_seed(0)
    loader = DataLoader(ShardedDataset(tmp_path / "store", cfg=cfg, train=True), batch_size=2, num_workers=0)
    batch = next(iter(loader))
    assert batch["s2"].shape == (2, 9, 8, 8) and batch["s1"].shape == (2, 2, 8, 8)
    assert batch["label"].dtype == torch.int64 and batch["labels_all_seasons"].shape == (2, 4, 8, 8)
    assert batch["valid"].dtype == torch.bool and len(batch["id"]) == 2
    assert 0.0 <= float(batch["s2"].min()) and float(batch["s2"].max()) <= 1.0


def test_cli_convert_and_verify(tmp_path, demo_root, capsys):
    from cromss.cli import data_tools

    parser = argparse.ArgumentParser()
    data_tools.register(parser.add_subparsers())
    args = parser.parse_args(["convert", str(demo_root), str(tmp_path / "st"), "--kind", "dw",
                              "--shard-size", "2", "--modalities", "s2"])
    assert args.func(args) == 0
    index = json.loads((tmp_path / "st" / "index.json").read_text())
    assert index["total"] == 3 and index["meta"]["modalities"] == ["s2"]
    record = next(iter_store(tmp_path / "st"))
    assert "s1" not in record and len(record["s2"]) == 1 and record["s2"][0].shape[0] == 13
    args = parser.parse_args(["verify-store", str(tmp_path / "st")])
    assert args.func(args) == 0
    assert "all checksums match" in capsys.readouterr().out
    shard = Path(tmp_path / "st" / index["shards"][0]["name"])
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match=shard.name):
        args.func(args)
