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
    build_layout_dataset,
    detect_format,
    list_tiles,
    resolve_root,
    s2_band_indices,
)
from cromss.data.splits import split_indices


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
    return build_layout_dataset(cfg, split, train, compact)


__all__ = [
    "LMDB_NAMES", "TILE_DIRS", "TREE_DIRS", "GenericDataset", "NolGeoTiffDataset", "NolLmdbDataset",
    "SegmentationDataset", "Tile", "TileDataset", "_Images", "build_dataset", "build_generic_dataset",
    "build_layout_dataset", "detect_format", "list_tiles", "resolve_root", "s2_band_indices", "split_indices",
]
