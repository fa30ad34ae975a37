"""Datasets of every layout, all returning the sample dict of docs/architecture.md.

One dataset core (:class:`~cromss.data.core.SegmentationDataset`) assembles samples; layouts only
enumerate files and read raw values:

* :class:`NolLmdbDataset`, :class:`NolGeoTiffDataset`, :class:`TileDataset` - the built-in layouts
  (:mod:`cromss.data.layouts`);
* :class:`GenericDataset` - any data described by ``dataset.yaml`` + ``samples.csv`` (:mod:`cromss.data.generic`).

:func:`build_dataset` is the one entry point used by the DataModule and the commands.
"""

from __future__ import annotations

from cromss.data.config import DataConfig
from cromss.data.core import SegmentationDataset, _Images
from cromss.data.generic import GenericDataset, build_generic_dataset
from cromss.data.layouts import (
    LMDB_NAMES,
    TILE_DIRS,
    TREE_DIRS,
    NolGeoTiffDataset,
    NolLmdbDataset,
    Tile,
    TileDataset,
    detect_format,
    list_tiles,
    resolve_root,
    s2_band_indices,
)
from cromss.data.splits import split_indices
from cromss.errors import DataError


# ----------------------------------------------------------------------------- factory
def build_dataset(cfg: DataConfig, split: str, train: bool, compact: bool = False) -> SegmentationDataset:
    """Dataset of ``split`` ('train' | 'val' | 'test') for ``cfg``.

    ``compact=False``: samples hold normalised float images (docs/architecture.md). ``compact=True``
    (the DataModule's): stored dtypes, cropped, geometry drawn but not applied; its
    :meth:`~SegmentationDataset.preprocessor` finishes the batch on the training device.

    'val' is a seeded ``cfg.val_fraction`` split (at least 1 sample) of the training locations
    ('nol') or training tiles (downstream; the test set is never used for validation). Generic datasets:
    their declared splits, else validation drawn by location.
    """
    if cfg.format == "stream":
        from cromss.data.stream import build_stream_dataset

        cfg.validate()
        return build_stream_dataset(cfg, split, train, compact)
    dataset = _build(cfg, split, train)
    dataset.compact = compact
    return dataset


def _build(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
    cfg.validate()
    if cfg.kind == "generic":
        return build_generic_dataset(cfg, split, train)
    root = resolve_root(cfg)
    if cfg.kind == "nol":
        if split == "test":
            raise DataError("the pretraining set 'nol' has no test split (use 'train' or 'val')")
        fmt = detect_format(root) if cfg.format == "auto" else cfg.format
        cls = NolLmdbDataset if fmt == "lmdb" else NolGeoTiffDataset
        full = cls(cfg, root, None, train)
        train_idx, val_idx = split_indices(len(full.locations), cfg.val_fraction, cfg.seed)
        return full.with_locations(train_idx if split == "train" else val_idx)
    if split == "test":
        return TileDataset(cfg, list_tiles(root, cfg.kind, "test"), train)
    tiles = list_tiles(root, cfg.kind, "train")
    train_idx, val_idx = split_indices(len(tiles), cfg.val_fraction, cfg.seed)
    return TileDataset(cfg, [tiles[i] for i in (train_idx if split == "train" else val_idx)], train)


__all__ = [
    "LMDB_NAMES", "TILE_DIRS", "TREE_DIRS", "GenericDataset", "NolGeoTiffDataset", "NolLmdbDataset",
    "SegmentationDataset", "Tile", "TileDataset", "_Images", "build_dataset", "detect_format", "list_tiles",
    "resolve_root", "s2_band_indices", "split_indices",
]
