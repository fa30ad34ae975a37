"""Sharded training store: tar shards of (optionally gzip-compressed) ``.npy`` members plus a JSON index.

Layout of a store folder (webdataset-compatible member naming, readable with ``tar`` alone)::

    DST/index.json            format, version, compression, per-shard name / count / bytes / sha256 / ids
    DST/shard-000000.tar      000000000.s1.0.npy.gz ... 000000000.s1.3.npy.gz   (one member per season)
                              000000000.s2.0.npy.gz ... 000000000.s2.3.npy.gz
                              000000000.s1_invalid.npy.gz, 000000000.label.npy.gz, ..., 000000000.json
    DST/shard-000001.tar      ...

The tar key of a sample is its running number (sample ids may hold dots); the id is in
``<key>.json`` and in the index. Arrays given to the writer as a list (the images of the T seasons
of a location) become one member per item, ``<key>.<name>.<t>.npy[.gz]``, so that a reader
decompresses only the season it feeds. Compression is per member (``gz``: gzip, level 1 by
default; ``none``: plain ``.npy``); the shard container itself is a plain tar.

:class:`ShardedDataset` streams the store as a torch ``IterableDataset``: shards are split first by
DDP rank, then by DataLoader worker, after a per-epoch permutation that every rank computes alike
(``set_epoch``), so in one epoch every sample is read exactly once by exactly one worker.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset

from cromss.errors import DataError

INDEX_NAME = "index.json"
FORMAT_NAME = "cromss-shards"
FORMAT_VERSION = 1
COMPRESSIONS: tuple[str, ...] = ("gz", "none")


# ----------------------------------------------------------------------------- writing
@dataclass
class ShardInfo:
    """One shard's entry in ``index.json``."""

    name: str
    count: int
    bytes: int
    sha256: str
    ids: list[str]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


class ShardWriter:
    """Write records into shards of ``shard_size`` samples; :meth:`close` writes ``index.json``.

    Example::

        with ShardWriter("store/", shard_size=64) as writer:
            writer.add("0000001", {"s2": [s2_season0, s2_season1], "label": label}, {"crs": "EPSG:32632"})
    """

    def __init__(
        self, out: str | Path, shard_size: int = 64, compression: str = "gz",
        meta: Mapping[str, Any] | None = None, compresslevel: int = 1,
    ) -> None:
        if shard_size < 1:
            raise DataError(f"--shard-size must be >= 1, got {shard_size}")
        if compression not in COMPRESSIONS:
            raise DataError(f"compression {compression!r} is not one of {list(COMPRESSIONS)}")
        if not 1 <= compresslevel <= 9:
            raise DataError(f"gzip level must be 1..9, got {compresslevel}")
        self.out = Path(out)
        if (self.out / INDEX_NAME).exists():
            raise DataError(f"{self.out} already holds a store ({INDEX_NAME}); choose an empty folder")
        self.out.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.compression = compression
        self.compresslevel = compresslevel
        self.meta = dict(meta or {})
        self.shards: list[ShardInfo] = []
        self._tar: tarfile.TarFile | None = None
        self._path: Path | None = None
        self._ids: list[str] = []
        self._seen: set[str] = set()

    def _open_shard(self) -> None:
        self._path = self.out / f"shard-{len(self.shards):06d}.tar"
        self._tar = tarfile.open(self._path, "w", format=tarfile.PAX_FORMAT)
        self._ids = []

    def _close_shard(self) -> None:
        if self._tar is None or self._path is None:
            return
        self._tar.close()
        self.shards.append(ShardInfo(self._path.name, len(self._ids), self._path.stat().st_size,
                                     _sha256(self._path), list(self._ids)))
        self._tar, self._path = None, None

    def _payload(self, array: np.ndarray) -> tuple[str, bytes]:
        data = _npy_bytes(np.asarray(array))
        if self.compression == "gz":
            # mtime=0: identical input gives identical shards (and checksums)
            return ".npy.gz", gzip.compress(data, compresslevel=self.compresslevel, mtime=0)
        return ".npy", data

    def add(
        self, sample_id: str, arrays: Mapping[str, np.ndarray | Sequence[np.ndarray]],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one sample: ``arrays`` name -> array (member ``<key>.<name>.npy[.gz]``) or list of arrays
        (members ``<key>.<name>.<i>.npy[.gz]``, decoded one by one on reading), ``meta`` as JSON."""
        sample_id = str(sample_id)
        if sample_id in self._seen:
            raise DataError(f"sample id {sample_id!r} was written twice")
        for name in arrays:
            if not name or "/" in name or "." in name or name == "json":
                raise DataError(f"array name {name!r} of sample {sample_id!r} cannot name a tar member")
        if self._tar is None:
            self._open_shard()
        assert self._tar is not None
        key = f"{len(self._seen):09d}"
        for name, value in arrays.items():
            if isinstance(value, list | tuple):
                for i, part in enumerate(value):
                    suffix, payload = self._payload(part)
                    _add_member(self._tar, f"{key}.{name}.{i}{suffix}", payload)
            else:
                suffix, payload = self._payload(value)
                _add_member(self._tar, f"{key}.{name}{suffix}", payload)
        record_meta = {**dict(meta or {}), "id": sample_id}
        _add_member(self._tar, f"{key}.json", json.dumps(record_meta).encode())
        self._ids.append(sample_id)
        self._seen.add(sample_id)
        if len(self._ids) >= self.shard_size:
            self._close_shard()

    def close(self) -> Path:
        """Finish the last shard and write ``index.json``; returns its path."""
        self._close_shard()
        index = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "compression": self.compression,
            "total": sum(s.count for s in self.shards),
            "meta": self.meta,
            "shards": [vars(s) for s in self.shards],
        }
        path = self.out / INDEX_NAME
        path.write_text(json.dumps(index, indent=1))
        return path

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._tar is not None:
            self._tar.close()


# ----------------------------------------------------------------------------- reading
def read_index(root: str | Path) -> dict[str, Any]:
    """Load and check ``root/index.json``; raises DataError naming the file or the missing key."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        raise DataError(f"no store index at {path} (convert a dataset with 'cromss data convert')")
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"store index {path} is not valid JSON: {err}") from None
    if index.get("format") != FORMAT_NAME:
        raise DataError(f"{path} is not a cromss shard index (format {index.get('format')!r})")
    if index.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: store version {index.get('version')} is not supported (need {FORMAT_VERSION})")
    for i, shard in enumerate(index.get("shards", [])):
        missing = [k for k in ("name", "count", "sha256", "ids") if k not in shard]
        if missing:
            raise DataError(f"{path}: shard entry {i} lacks key(s) {missing}")
    return index


def verify_shard(root: str | Path, shard: Mapping[str, Any]) -> None:
    """Check that the shard file exists and its sha256 matches the index."""
    path = Path(root) / shard["name"]
    if not path.is_file():
        raise DataError(f"shard {shard['name']} is missing from store {root}")
    digest = _sha256(path)
    if digest != shard["sha256"]:
        raise DataError(f"shard {path} is corrupt: sha256 {digest[:12]}... differs from the index "
                        f"({shard['sha256'][:12]}...)")


def verify_store(root: str | Path) -> dict[str, int]:
    """Checksum every shard; DataError naming every missing or corrupt one. Returns the counts."""
    index = read_index(root)
    problems = []
    for shard in index["shards"]:
        try:
            verify_shard(root, shard)
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise DataError(f"store {root}: {len(problems)} bad shard(s): " + "; ".join(problems))
    return {"shards": len(index["shards"]), "samples": int(index["total"])}


def _decode(payload: bytes, gz: bool, where: str) -> np.ndarray:
    try:
        data = gzip.decompress(payload) if gz else payload
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(f"{where} cannot be decoded ({type(err).__name__}: {err}); the shard is corrupt") from None


class SeasonParts(Sequence):
    """The per-item members of one array (e.g. the images of each season), decoded on access."""

    def __init__(self, payloads: list[tuple[bytes, bool]], where: str) -> None:
        self._payloads = payloads
        self._where = where

    def __len__(self) -> int:
        return len(self._payloads)

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        payload, gz = self._payloads[index]
        return _decode(payload, gz, f"{self._where}.{index}")

    def stack(self) -> np.ndarray:
        """All items decoded and stacked along a new first axis."""
        return np.stack([self[i] for i in range(len(self))])


def _finish_record(key: str, members: dict[str, Any], path: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"__key__": key}
    parts: dict[str, dict[int, tuple[bytes, bool]]] = {}
    for rest, payload in members.items():
        where = f"shard {path}: member {key}.{rest}"
        if rest == "json":
            try:
                record["meta"] = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(f"{where} is not valid JSON ({err}); the shard is corrupt") from None
            continue
        gz = rest.endswith(".npy.gz")
        if not (gz or rest.endswith(".npy")):
            raise DataError(f"shard {path}: unexpected member {key}.{rest}")
        name = rest[: -len(".npy.gz")] if gz else rest[: -len(".npy")]
        base, _, index = name.partition(".")
        if index:
            if not index.isdigit():
                raise DataError(f"shard {path}: unexpected member {key}.{rest}")
            parts.setdefault(base, {})[int(index)] = (payload, gz)
        else:
            record[base] = _decode(payload, gz, where)
    for base, items in parts.items():
        if sorted(items) != list(range(len(items))):
            raise DataError(f"shard {path}: sample {key} has members {base}.{sorted(items)}, not 0..{len(items) - 1}")
        record[base] = SeasonParts([items[i] for i in range(len(items))], f"shard {path}: member {key}.{base}")
    if "meta" not in record:
        raise DataError(f"shard {path}: sample {key} has no {key}.json member")
    return record


def iter_shard(root: str | Path, shard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the records of one shard in stored order: ``{"__key__", "meta", <name>: array, ...}``.

    Whole arrays are decoded at once; arrays stored per item are :class:`SeasonParts` that decode
    an item when it is indexed. A missing file, an unreadable tar, an undecodable member or a sample
    count that differs from the index raises DataError naming the shard.
    """
    path = Path(root) / shard["name"]
    if not path.is_file():
        raise DataError(f"shard {shard['name']} is missing from store {root}")
    count = 0
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, _, rest = member.name.partition(".")
                fh = tar.extractfile(member)
                payload = fh.read() if fh is not None else b""
                if len(payload) != member.size:
                    raise DataError(f"shard {path}: member {member.name} is truncated")
                if key is not None and member_key != key:
                    count += 1
                    yield _finish_record(key, members, path)
                    members = {}
                key = member_key
                members[rest] = payload
            if key is not None:
                count += 1
                yield _finish_record(key, members, path)
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        raise DataError(f"shard {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                        f"run 'cromss data verify-store {root}'") from None
    if count != int(shard["count"]):
        raise DataError(f"shard {path} holds {count} samples, the index says {shard['count']}")


def iter_store(root: str | Path) -> Iterator[dict[str, Any]]:
    """All records of a store in index order (no shuffling, single process)."""
    index = read_index(root)
    for shard in index["shards"]:
        yield from iter_shard(root, shard)


# ----------------------------------------------------------------------------- dataset
def shards_for_worker(
    num_shards: int, epoch: int, seed: int, rank: int, world_size: int, worker: int, num_workers: int,
    shuffle: bool = True,
) -> list[int]:
    """Shard indices read by one (rank, worker) in ``epoch``.

    All ranks permute the shard list with the same ``(seed, epoch)``; the permuted list is dealt to
    ranks (``perm[rank::world_size]``), then each rank's part to its workers (``[worker::num_workers]``),
    so the parts of all (rank, worker) pairs are disjoint and together cover every shard.
    """
    if not 0 <= rank < world_size or not 0 <= worker < num_workers:
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    order = np.arange(num_shards)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_shards)
    return [int(s) for s in order[rank::world_size][worker::num_workers]]


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def raw_sample(record: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Stored arrays as torch tensors plus ``id`` (from the metadata); other metadata dropped."""
    import torch

    sample: dict[str, Any] = {}
    for name, value in record.items():
        if name in ("__key__", "meta"):
            continue
        if isinstance(value, SeasonParts):
            value = value.stack()
        sample[name] = torch.from_numpy(np.ascontiguousarray(value))
    sample["id"] = record.get("meta", {}).get("id", record["__key__"])
    yield sample


class ShardedDataset(IterableDataset):
    """Stream a shard store; disjoint per DDP rank and DataLoader worker; deterministic per epoch.

    Args:
        root: store folder (with ``index.json``).
        shuffle: permute the shards per epoch and shuffle samples through a buffer.
        shuffle_buffer: samples held for the in-worker shuffle (memory: that many samples per worker).
        seed: base seed; the order of epoch ``e`` depends only on (seed, e, rank, worker).
        cfg: a ``cromss.data.DataConfig``: stored locations become the sample dicts of
            docs/architecture.md exactly as the source dataset makes them (:class:`RecordSamples`).
        train: with ``cfg``: random season + augmentation (True) or deterministic seasons (False).
        to_samples: custom record -> iterable of samples (overrides ``cfg``); default without ``cfg``:
            :func:`raw_sample` (stored arrays as tensors plus ``id``). Runs in the worker.
        rank, world_size: override the torch.distributed values (tests, custom launchers).
        verify: check each shard's sha256 before reading it (reads the file twice).

    Call :meth:`set_epoch` before each epoch (Lightning: from ``on_train_epoch_start``), and
    ``set_epoch(e, skip=n, batch_size=b)`` to resume mid-epoch after ``n`` locations of this rank were
    consumed (the DataLoader takes whole batches from its workers in turn; exact while all of this
    rank's workers still have samples). ``len()`` is the number of locations this rank reads.
    """

    def __init__(
        self, root: str | Path, *, cfg: Any = None, train: bool = True, shuffle: bool = True,
        shuffle_buffer: int = 64, seed: int = 0,
        to_samples: Callable[[dict[str, Any]], Iterable[dict[str, Any]]] | None = None,
        rank: int | None = None, world_size: int | None = None, verify: bool = False,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.index = read_index(self.root)
        self.shards = self.index["shards"]
        self.shuffle = shuffle
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.seed = seed
        if to_samples is None:
            to_samples = RecordSamples(cfg, train) if cfg is not None else raw_sample
        self.to_samples = to_samples
        self._rank, self._world_size = rank, world_size
        self.verify = verify
        self.epoch = 0
        self.skip = 0
        self._batch_size = 1

    # -- distribution
    def rank_world(self) -> tuple[int, int]:
        rank, world = _dist_rank_world()
        return (self._rank if self._rank is not None else rank,
                self._world_size if self._world_size is not None else world)

    def set_epoch(self, epoch: int, skip: int = 0, batch_size: int = 1) -> None:
        """Choose the epoch's order; ``skip`` samples (per rank, ``batch_size``-batched) are dropped."""
        self.epoch, self.skip, self._batch_size = int(epoch), int(skip), max(1, int(batch_size))

    def shard_ids(self, worker: int = 0, num_workers: int = 1) -> list[int]:
        rank, world = self.rank_world()
        return shards_for_worker(len(self.shards), self.epoch, self.seed, rank, world, worker, num_workers,
                                 self.shuffle)

    def __len__(self) -> int:
        """Samples this rank reads in the current epoch."""
        rank, world = self.rank_world()
        ids = shards_for_worker(len(self.shards), self.epoch, self.seed, rank, world, 0, 1, self.shuffle)
        return sum(int(self.shards[i]["count"]) for i in ids)

    def _skip_for_worker(self, worker: int, num_workers: int) -> int:
        # DataLoader takes whole batches from workers in turn: batch k came from worker k % num_workers.
        batches_done = self.skip // self._batch_size
        own_batches = len(range(worker, batches_done, num_workers))
        return own_batches * self._batch_size

    def iter_records(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        """Records of one worker for the current epoch, in the order it yields them."""
        rank, _ = self.rank_world()
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker, 1])
        buffer: list[dict[str, Any]] = []
        for shard_id in self.shard_ids(worker, num_workers):
            shard = self.shards[shard_id]
            if self.verify:
                verify_shard(self.root, shard)
            for record in iter_shard(self.root, shard):
                if not self.shuffle:
                    yield record
                    continue
                buffer.append(record)
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # On resume the new DataLoader asks its worker 0 first, but the next batch is due from the
        # worker whose turn it was: rotate the roles so the order continues exactly.
        batches_done = self.skip // self._batch_size
        role = (worker + batches_done) % num_workers
        to_skip = self._skip_for_worker(role, num_workers) if self.skip else 0
        for i, record in enumerate(self.iter_records(role, num_workers)):
            if i < to_skip:
                continue
            yield from self.to_samples(record)


def write_records(
    records: Iterable[tuple[str, Mapping[str, np.ndarray], Mapping[str, Any]]], out: str | Path,
    shard_size: int = 64, compression: str = "gz", meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``(key, arrays, meta)`` records into a new store; returns the index."""
    with ShardWriter(out, shard_size, compression, meta) as writer:
        for key, arrays, record_meta in records:
            writer.add(key, arrays, record_meta)
    return read_index(out)


# ----------------------------------------------------------------------------- conversion
#: Array names of a converted location: images ``[T, C, H, W]`` (raw dtype, or uint8 already
#: clipped+scaled for the LMDB layout), invalid-pixel masks ``[T, H, W]`` and labels ``[T, H, W]``
#: (uint8 class ids, 255 = ignore).
RECORD_LAYOUT = "cromss-location-v1"


def _source_dataset(cfg: Any, split: str) -> Any:
    """The data layer's dataset over every location of ``split`` (no augmentation, all 13 S2 bands)."""
    import dataclasses

    from cromss.data import datasets as ds

    cfg = dataclasses.replace(cfg, s2_bands=13, augment=False, max_samples=None)
    cfg.validate()
    root = ds.resolve_root(cfg)
    if cfg.kind == "nol":
        if split in ("train", "val"):
            return ds.build_dataset(cfg, split, train=False)
        if split != "all":
            raise DataError(f"--split {split!r}: the pretraining set 'nol' has splits all, train and val")
        fmt = ds.detect_format(root) if cfg.format == "auto" else cfg.format
        cls = ds.NolLmdbDataset if fmt == "lmdb" else ds.NolGeoTiffDataset
        return cls(cfg, root, None, False)
    if split == "all":
        split = "train"
    if split == "val":
        return ds.build_dataset(cfg, "val", train=False)
    return ds.TileDataset(cfg, ds.list_tiles(root, cfg.kind, split), False)


def location_records(dataset: Any) -> Iterator[tuple[str, dict[str, np.ndarray], dict[str, Any]]]:
    """``(id, arrays, meta)`` of every location of a data-layer dataset, all seasons, raw values."""
    num_seasons = int(dataset.num_seasons)
    for location in range(len(dataset.locations)):
        sample_id = dataset.sample_id(location)
        labels, labels_true = dataset.read_labels(location)
        arrays: dict[str, np.ndarray] = {"label": np.asarray(labels, dtype=np.uint8)}
        if labels_true is not None:
            arrays["label_true"] = np.asarray(labels_true, dtype=np.uint8)
        prescaled: dict[str, bool] = {}
        for modality in dataset.modalities:
            seasons = [dataset.read_images(location, s, modality) for s in range(num_seasons)]
            arrays[modality] = [np.asarray(im.data) for im in seasons]  # one member per season
            arrays[f"{modality}_invalid"] = np.stack([im.invalid for im in seasons])
            prescaled[modality] = bool(seasons[0].prescaled)
        yield sample_id, arrays, {"layout": RECORD_LAYOUT, "num_seasons": num_seasons, "prescaled": prescaled}


def convert_dataset(
    cfg: Any, out: str | Path, split: str = "all", shard_size: int = 64, compression: str = "gz",
    progress: Callable[[int, int], None] | None = None, compresslevel: int = 1,
) -> dict[str, Any]:
    """Convert a dataset readable by ``cromss.data`` (``cfg``: a DataConfig) into a shard store.

    Every location of ``split`` is stored with all its seasons and all 13 S2 bands, as raw as the
    source holds it, so that :class:`ShardedDataset` yields the same samples as the source dataset.
    """
    dataset = _source_dataset(cfg, split)
    total = len(dataset.locations)
    meta = {"kind": cfg.kind, "source": str(cfg.root), "split": split, "modalities": cfg.modality_list(),
            "layout": RECORD_LAYOUT}
    with ShardWriter(out, shard_size, compression, meta, compresslevel) as writer:
        for i, (sample_id, arrays, record_meta) in enumerate(location_records(dataset)):
            writer.add(sample_id, arrays, record_meta)
            if progress is not None:
                progress(i + 1, total)
    return read_index(out)


class RecordSamples:
    """Turn a stored location record into the sample dict(s) of docs/architecture.md.

    Uses the data layer's own assembly (season choice, normalisation, ``valid`` mask, joint
    augmentation), so a store yields exactly what the source dataset yields. ``train=True``: one
    sample per location (random season, augmentation per ``cfg``); ``train=False``: one sample per
    season when ``cfg.eval_seasons == 'all'``, else season ``cfg.season``.
    """

    def __init__(self, cfg: Any, train: bool) -> None:
        from cromss.data import datasets as ds

        cfg.validate()
        self.cfg = cfg
        self.train = train
        band_index = list(ds.s2_band_indices(cfg.s2_bands))

        class _RecordView(ds.SegmentationDataset):
            record: dict[str, Any] = {}

            def sample_id(self, location: int) -> str:
                return str(self.record["meta"]["id"])

            def read_images(self, location: int, season: int, modality: str) -> Any:
                if modality not in self.record:
                    raise DataError(f"store sample {self.sample_id(0)} holds no {modality} images")
                data = self.record[modality][season]
                if modality == "s2" and data.shape[0] == 13 and len(band_index) != 13:
                    data = data[band_index]
                prescaled = bool(self.record["meta"]["prescaled"][modality])
                return ds._Images(data, self.record[f"{modality}_invalid"][season], prescaled)

            def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
                true = self.record.get("label_true")
                return (self.record["label"].astype(np.int64),
                        None if true is None else true.astype(np.int64))

        self.view = _RecordView(cfg, [0], train)

    def __call__(self, record: dict[str, Any]) -> Iterator[dict[str, Any]]:
        meta = record.get("meta", {})
        if meta.get("layout") != RECORD_LAYOUT:
            raise DataError(f"store sample {meta.get('id', record.get('__key__'))} is not a converted location "
                            f"(layout {meta.get('layout')!r}); read it with to_sample=None")
        num_seasons = int(meta["num_seasons"])
        self.view.record = record
        self.view.num_seasons = num_seasons
        self.view.prescaled = any(bool(v) for v in meta["prescaled"].values())
        self.view._preprocess = None
        if self.train or num_seasons == 1 or self.cfg.eval_seasons == "first":
            yield self.view[0]
        else:
            for season in range(num_seasons):
                self.view.entries = [(0, season)]
                yield self.view[0]
            self.view.entries = [(0, None)]
