"""Streamed datasets for many GPUs (``data.format: stream``), built on litdata.

``convert_to_stream(cfg, out)`` reads any dataset cromss reads (NoL LMDB / GeoTIFF, @DW / @OSM,
DFC2020, generic) and writes litdata chunks per split (``OUT/train``, ``OUT/val``, ``OUT/test``) with
``litdata.optimize``, plus ``OUT/cromss_stream.json``: the dataset description (modalities and band
names, classes and colours, the label convention, band statistics, scaling) that keeps the shards
self-describing.

One training item is one LOCATION with every timestamp (images in their stored dtype, invalid
masks per modality, class-id labels), so the season is still drawn per epoch; one val/test item is
one evaluation entry (location, season) of the source split. Reading (:class:`StreamSegmentationDataset`)
feeds the item to the dataset core, which returns the same compact samples as the file layouts.
Augmentation draws are seeded per (seed, epoch, sample index), so a resumed stream (its position
comes from the StreamingDataLoader state in the Lightning checkpoint) replays exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset

from cromss import bands as band_ids
from cromss import schema
from cromss.data.config import BUILTIN_KINDS, DataConfig
from cromss.data.core import SegmentationDataset, _Images
from cromss.data.description import DatasetDescription, NodataRule
from cromss.data.stream_check import (  # noqa: F401  (META_FILE, STREAM_VERSION: part of this module's API)
    META_FILE,
    STREAM_VERSION,
    check_index,
    check_stream_index,
    guarded_serializers,
)
from cromss.errors import DataError
from cromss.transforms import ClipNormalize

SPLITS = ("train", "val", "test")


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _is_url(root: str) -> bool:
    return "://" in root


try:  # litdata's "timed out waiting for chunk" (a FileNotFoundError: it read as "cannot write run folder")
    from litdata.exceptions import ChunkWaitTimeoutError as _ChunkWaitTimeout
except ImportError:  # pragma: no cover - older litdata
    _ChunkWaitTimeout = TimeoutError

_FIELD_ERRORS = (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, OverflowError, MemoryError,
                 AttributeError, RuntimeError)


# ----------------------------------------------------------------------------- reading
def load_stream_metadata(root: str | Path) -> dict[str, Any]:
    """``cromss_stream.json`` of a stream (a local folder or an object-store URL read through fsspec)."""
    root = str(root)
    path = _join(root, META_FILE)
    try:
        if _is_url(root):
            import fsspec

            with fsspec.open(path, "r") as handle:
                text = handle.read()
        else:
            text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, ImportError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise DataError(f"data.root {root}: no readable {META_FILE} (convert a dataset with "
                        f"`cromss data convert SRC OUT --to stream`): {' '.join(str(err).split())}") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}): truncated or corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != "cromss-stream" or not isinstance(meta.get("version"), int) \
            or meta["version"] > STREAM_VERSION:
        raise DataError(f"{path}: not a cromss stream of version <= {STREAM_VERSION}")
    return meta


def stream_description(root: str | Path) -> DatasetDescription:
    """The :class:`DatasetDescription` stored with a stream; every split's declared item formats are checked
    (:func:`cromss.data.stream_check.check_stream_index`) before anything uses the stream."""
    meta = load_stream_metadata(root)
    for split in meta.get("splits", {}):
        check_stream_index(root, split)
    classes = schema.ClassTable(meta["class_table"], tuple(meta["classes"]), tuple(meta["class_colors"]))
    return DatasetDescription(
        name=meta["name"], modalities={m: tuple(b) for m, b in meta["modalities"].items()}, classes=classes,
        label_values={i: i for i in range(classes.num_classes)}, root=None,
        nodata={m: NodataRule(None, "any") for m in meta["modalities"]},
    )


class _ItemView(SegmentationDataset):
    """The dataset core over one stream item at a time (location 0 = the current item)."""

    def __init__(self, cfg: DataConfig, meta: dict[str, Any], description: DatasetDescription, train: bool) -> None:
        self.meta = meta
        self.item: dict[str, Any] = {}
        self.prescaled = bool(meta["prescaled"])
        self.num_seasons = int(meta["num_seasons"])
        self.variable_timestamps = bool(meta["variable_timestamps"])
        super().__init__(cfg, [0], train, description)
        self.label_dtype = np.dtype(meta["label_dtype"])
        self.has_true_labels = bool(meta["has_true_labels"])

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities or self.meta["modalities"])

    def bands_of(self, modality: str) -> tuple[str, ...]:
        if self.cfg.bands and modality in self.cfg.bands:
            return tuple(self.cfg.bands[modality])
        if self.meta["kind"] in BUILTIN_KINDS:
            return schema.modality_bands(modality, self.cfg.s2_bands)
        return tuple(self.meta["modalities"][modality])

    def _build_normalizers(self) -> dict[str, ClipNormalize]:
        out = {}
        for modality in self.modalities:
            stats = self.meta["stats"].get(modality)
            if stats is None:
                raise DataError(f"stream {self.cfg.root}: no band statistics for modality {modality!r}")
            names, wanted = [str(b) for b in stats["bands"]], self.bands_of(modality)
            missing = band_ids.missing_bands(names, wanted, modality)
            if missing:
                raise DataError(f"stream {self.cfg.root}: modality {modality!r} lacks band(s) {missing}")
            index = band_ids.pick(names, wanted, modality)
            out[modality] = ClipNormalize([stats["mean"][i] for i in index], [stats["std"][i] for i in index],
                                          stats.get("num_std", 2.0))
        return out

    def timestamps(self, location: int) -> int:
        return int(self.item["label"].shape[0]) if self.item else self.num_seasons

    def sample_id(self, location: int) -> str:
        return str(self.item["id"])

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        if modality not in self.item:
            raise DataError(f"stream {self.cfg.root}: sample {self.item.get('id')} holds no {modality!r} images")
        data = self.item[modality][season]
        stored = self.meta["modalities"][modality]
        wanted = self.bands_of(modality)
        if tuple(wanted) != tuple(stored):
            missing = band_ids.missing_bands(stored, wanted, modality)
            if missing:
                raise DataError(f"stream {self.cfg.root}: modality {modality!r} lacks band(s) {missing}")
            data = data[band_ids.pick(stored, wanted, modality)]
        return _Images(data, self.item[f"{modality}_invalid"][season], self.prescaled)

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        return self.item["label"], self.item.get("label_true")


class StreamSegmentationDataset(StreamingDataset):
    """litdata ``StreamingDataset`` of a cromss stream split; items become core samples.

    Rank- and worker-disjoint reading, shuffling (per epoch, from ``data.seed``) and resumable
    state are litdata's; the season draw, crop and flip / rotation draws are the core's, seeded per
    (seed, epoch, index).
    """

    def __init__(self, cfg: DataConfig, split: str, train: bool, compact: bool = False) -> None:
        meta = load_stream_metadata(cfg.root)
        if meta["kind"] != cfg.kind:
            raise DataError(f"data.kind is {cfg.kind!r} but the stream {cfg.root} holds a {meta['kind']!r} "
                            f"dataset; set data.kind: {meta['kind']}")
        if split not in meta["splits"]:
            raise DataError(f"stream {cfg.root} has no split '{split}' (it has {sorted(meta['splits'])})")
        check_stream_index(cfg.root, split)  # declared formats (and, locally, chunk sizes) before any item
        # every serializer cromss does not write refuses: even a swapped index.json cannot make litdata unpickle
        super().__init__(_join(str(cfg.root), split), shuffle=train, drop_last=train, seed=cfg.seed,
                         serializers=guarded_serializers())
        self._check_cached_index()
        self.cfg, self.meta, self.split, self.train, self.compact = cfg, meta, split, train, compact
        self.view = _ItemView(cfg, meta, stream_description(cfg.root), train)

    def _check_cached_index(self) -> None:
        """For a remote root: the local copy of index.json that litdata downloaded and will parse."""
        local = getattr(self.input_dir, "path", None)
        if local and getattr(self.input_dir, "url", None):
            cached = Path(local) / "index.json"
            if cached.is_file():
                try:
                    index = json.loads(cached.read_bytes().decode("utf-8"))
                except ValueError:
                    raise DataError(f"stream index {cached} (litdata's copy of {self.input_dir.url}) is not valid "
                                    "JSON; delete it and run again") from None
                check_index(index, f"{cached} (litdata's copy of {self.input_dir.url}/index.json)")

    def _truncated_chunk(self) -> str:
        """'chunk X is n bytes, its index records m' for a chunk shorter than its index says (litdata's copy)."""
        folder = Path(getattr(self.input_dir, "path", None) or "")
        try:
            index = json.loads((folder / "index.json").read_bytes().decode("utf-8"))
            for chunk in index["chunks"]:
                file = folder / chunk["filename"]
                if file.is_file() and file.stat().st_size < int(chunk["chunk_bytes"]):
                    return f"chunk {chunk['filename']} is {file.stat().st_size} bytes, its index records {chunk['chunk_bytes']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return ""

    def preprocessor(self):
        return self.view.preprocessor()

    def __getitem__(self, index: Any) -> dict[str, Any]:
        try:
            item = super().__getitem__(index)
        except DataError:
            raise
        except (_ChunkWaitTimeout, TimeoutError) as err:  # a chunk that never arrives whole (remote roots)
            raise DataError(f"stream {self.cfg.root}/{self.split}: a chunk could not be read completely "
                            f"({' '.join(str(err).split())[:200]}): truncated or missing chunk file; run "
                            f"`cromss data verify {self.cfg.root}`") from None
        except _FIELD_ERRORS as err:
            short = self._truncated_chunk()
            if short:
                raise DataError(f"stream {self.cfg.root}/{self.split}: {short}: truncated (an interrupted upload or "
                                f"copy?); copy the stream again (`cromss data verify {self.cfg.root}`)") from None
            raise DataError(f"stream {self.cfg.root}/{self.split}: item {getattr(index, 'index', index)} cannot be "
                            f"decoded ({type(err).__name__}: {' '.join(str(err).split())[:160]}): a chunk is corrupt; "
                            f"run `cromss data verify {self.cfg.root}`") from None
        if not isinstance(item, dict) or not isinstance(item.get("label"), np.ndarray):
            raise DataError(f"stream {self.cfg.root}/{self.split}: item {getattr(index, 'index', index)} is not a "
                            "cromss stream item (a chunk is corrupt); run `cromss data verify`")
        position = int(index.index) if hasattr(index, "index") else int(index)
        if self.train:
            # the draws depend on (seed, epoch, sample), not on the reader's position: exact resume
            torch.manual_seed((self.cfg.seed * 1_000_003 + self.current_epoch) * 10_000_019 + position)
        view = self.view
        view.item = item
        season = int(item["season"])
        view.entries = [(0, None if season < 0 else season)]
        sample = view.compact_sample(0)
        return sample if self.compact else view.preprocessor().sample(sample)




def build_stream_dataset(cfg: DataConfig, split: str, train: bool, compact: bool = False) -> Any:
    """The ``split`` of the stream at ``cfg.root`` (a local folder or an object-store URL)."""
    return StreamSegmentationDataset(cfg, split, train, compact)


class ResumableLoader(StreamingDataLoader):
    """``StreamingDataLoader`` whose restored state applies to ONE epoch.

    litdata clears its ``restore`` flag only when an epoch runs to StopIteration; Lightning ends a
    sized epoch without exhausting the iterator, so the next epoch would replay the restored
    (finished) position and be empty. A new ``__iter__`` after the restored one starts fresh.
    """

    _fresh_restore = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._fresh_restore = True

    def __iter__(self) -> Any:
        if self.restore and not self._fresh_restore:
            self.restore = False
        self._fresh_restore = False
        yield from super().__iter__()




def stream_loader(dataset: Any, cfg: DataConfig, train: bool) -> Any:
    """A litdata ``StreamingDataLoader`` (its state is saved in Lightning checkpoints: exact resume)."""
    kwargs: dict[str, Any] = {}
    if cfg.num_workers > 0:
        kwargs["persistent_workers"] = cfg.persistent_workers
    return ResumableLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                           pin_memory=cfg.pin_memory, drop_last=train, **kwargs)
