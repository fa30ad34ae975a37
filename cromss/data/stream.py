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
from dataclasses import asdict, replace
from functools import partial
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
from cromss.errors import DataError
from cromss.transforms import ClipNormalize

META_FILE = "cromss_stream.json"
STREAM_VERSION = 1
SPLITS = ("train", "val", "test")


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def _is_url(root: str) -> bool:
    return "://" in root


# ----------------------------------------------------------------------------- writing
_SOURCES: dict[tuple[str, str], SegmentationDataset] = {}


def _source(cfg_dict: dict[str, Any], split: str) -> SegmentationDataset:
    from cromss.data.layouts import build_layout_dataset  # a file layout: a stream is not converted again

    key = (json.dumps(cfg_dict, sort_keys=True), split)
    if key not in _SOURCES:
        _SOURCES.clear()
        _SOURCES[key] = build_layout_dataset(DataConfig(**cfg_dict), split, train=False, compact=True)
    return _SOURCES[key]


def read_item(dataset: SegmentationDataset, location: int, season: int) -> dict[str, Any]:
    """One stream item: every timestamp of ``location`` in stored dtypes; ``season`` -1 = drawn when read."""
    labels, labels_true = dataset.read_labels(location)
    item: dict[str, Any] = {
        "id": dataset.sample_id(location), "season": int(season),
        "label": np.ascontiguousarray(labels.astype(dataset.label_dtype)),
    }
    if dataset.has_true_labels:
        true = labels_true if labels_true is not None else np.full_like(labels, schema.IGNORE_INDEX)
        item["label_true"] = np.ascontiguousarray(np.asarray(true)[: labels.shape[0]].astype(dataset.label_dtype))
    for modality in dataset.modalities:
        stack, invalid = [], []
        for t in range(dataset.timestamps(location)):
            images = dataset.read_images(location, t, modality)
            stack.append(np.asarray(images.data))
            invalid.append(images.invalid)
        item[modality] = np.ascontiguousarray(np.stack(stack))
        item[f"{modality}_invalid"] = np.ascontiguousarray(np.stack(invalid))
    return item


def _convert_one(entry: tuple[int, int], cfg_dict: dict[str, Any], split: str) -> dict[str, Any]:
    return read_item(_source(cfg_dict, split), *entry)


def _source_splits(cfg: DataConfig) -> list[str]:
    return ["train", "val"] if cfg.kind == "nol" else list(SPLITS)


def stream_metadata(dataset: SegmentationDataset, cfg: DataConfig, splits: dict[str, int]) -> dict[str, Any]:
    """The self-description written next to the shards (``cromss_stream.json``)."""
    description = dataset.description
    stats = {}
    if not dataset.prescaled:
        for modality in dataset.modalities:
            norm = dataset.normalizers[modality]
            mean, std = norm.stats64
            stats[modality] = {"bands": list(dataset.bands_of(modality)), "mean": mean, "std": std,
                               "num_std": norm.num_std}
    classes = description.classes if description is not None else schema.CLASS_TABLES[cfg.kind]
    return {
        "format": "cromss-stream", "version": STREAM_VERSION, "kind": cfg.kind,
        "name": description.name if description is not None else cfg.kind,
        "modalities": {m: list(dataset.bands_of(m)) for m in dataset.modalities},
        "classes": list(classes.names), "class_colors": list(classes.colors), "class_table": classes.name,
        "labels": f"class ids 0..{classes.num_classes - 1} (stored {dataset.label_dtype.name}), "
                  f"{schema.IGNORE_INDEX} = ignore; label values already mapped from the source",
        "label_dtype": dataset.label_dtype.name,
        "prescaled": dataset.prescaled,
        "images": "uint8, already clipped to mean +/- 2 sigma and scaled to 0..255" if dataset.prescaled
                  else "raw values in the source dtype; normalised with 'stats' (mean +/- 2 std -> [0, 1])",
        "stats": stats,
        "num_seasons": dataset.num_seasons, "variable_timestamps": dataset.variable_timestamps,
        "has_true_labels": dataset.has_true_labels,
        "splits": splits, "source": str(cfg.root),
        "source_config": {k: v for k, v in asdict(cfg).items() if k in ("kind", "format", "s2_bands", "seed",
                                                                       "val_fraction", "eval_seasons", "season")},
    }


def convert_to_stream(cfg: DataConfig, out: str | Path, chunk_bytes: str = "64MB", num_workers: int = 1,
                      splits: list[str] | None = None) -> dict[str, Any]:
    """Write every split of the dataset ``cfg`` points to as litdata chunks under ``out``; return the metadata.

    Validation / test items are the source split's evaluation entries (``cfg.eval_seasons``);
    ``cfg.val_fraction`` / ``cfg.seed`` fix the validation split of the source.
    """
    from litdata import optimize

    cfg.validate()
    if cfg.format == "stream":
        raise DataError(f"{cfg.root} is already a stream")
    out = str(out)
    if not _is_url(out) and Path(out).exists() and any(Path(out).iterdir()):
        raise DataError(f"output folder {out} exists and is not empty")
    cfg_dict = asdict(replace(cfg, max_samples=cfg.max_samples, crop_size=None, eval_crop=None))
    counts: dict[str, int] = {}
    first: SegmentationDataset | None = None
    for split in splits or _source_splits(cfg):
        try:
            dataset = _source(cfg_dict, split)
        except DataError:
            if split == "test":
                continue
            raise
        if first is None:
            first = dataset
        if split == "train":
            entries = [(location, -1) for location in range(len(dataset.locations))]
            if cfg.max_samples is not None:
                entries = entries[: cfg.max_samples]
        else:
            entries = [(location, season if season is not None else dataset._season(location, None))
                       for location, season in dataset.entries]
        if not entries:
            continue
        optimize(fn=partial(_convert_one, cfg_dict=cfg_dict, split=split), inputs=entries,
                 output_dir=_join(out, split), chunk_bytes=chunk_bytes, num_workers=num_workers,
                 verbose=False, keep_data_ordered=True)
        counts[split] = len(entries)
    if first is None:
        raise DataError(f"{cfg.root}: no split to convert")
    meta = stream_metadata(first, cfg, counts)
    text = json.dumps(meta, indent=2)
    if _is_url(out):
        import fsspec

        with fsspec.open(_join(out, META_FILE), "w") as handle:
            handle.write(text)
    else:
        (Path(out) / META_FILE).write_text(text)
    return meta


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
            text = Path(path).read_text()
    except (OSError, ImportError, ValueError) as err:
        raise DataError(f"data.root {root}: no readable {META_FILE} (convert a dataset with "
                        f"`cromss data convert SRC OUT --to stream`): {err}") from None
    meta = json.loads(text)
    if meta.get("format") != "cromss-stream" or int(meta.get("version", 0)) > STREAM_VERSION:
        raise DataError(f"{path}: not a cromss stream of version <= {STREAM_VERSION}")
    return meta


def stream_description(root: str | Path) -> DatasetDescription:
    """The :class:`DatasetDescription` stored with a stream."""
    meta = load_stream_metadata(root)
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
        super().__init__(_join(str(cfg.root), split), shuffle=train, drop_last=train, seed=cfg.seed)
        self.cfg, self.meta, self.split, self.train, self.compact = cfg, meta, split, train, compact
        self.view = _ItemView(cfg, meta, stream_description(cfg.root), train)

    def preprocessor(self):
        return self.view.preprocessor()

    def __getitem__(self, index: Any) -> dict[str, Any]:
        item = super().__getitem__(index)
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
