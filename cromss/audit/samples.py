"""The samples an audit reads: every labelled (location, timestamp) of a dataset, one at a time.

Any dataset kind cromss reads (generic GeoTIFF, the NoL LMDB / GeoTIFF tree, downstream tiles, litdata
streams) is walked in a fixed order (split by split, entry by entry, every timestamp of a location),
without augmentation or crops, so memory stays constant whatever the dataset's size. Each sample comes
with what the outputs need to know about it: its location and time, its split, the label file and its
georeference (when the source has one) and, for generic datasets, the image files (a cleaned dataset
references them instead of copying).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cromss.data.config import DataConfig
from cromss.errors import DataError


@dataclass
class SampleInfo:
    """Where one audited sample comes from (one location at one timestamp)."""

    index: int  # position in the audit order (0..N-1)
    split: str
    entry: int  # index into its split's dataset (for reading it again)
    location: str
    time: str
    season: int
    #: the source's label file and its georeference (None for LMDB / stream samples)
    label_file: Path | None = None
    transform: Any | None = None
    crs: Any | None = None
    #: generic datasets: modality -> image file, and the reference label file
    images: dict[str, Path] | None = None
    reference_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A file-name-safe unique name: ``<location>`` or ``<location>@<time>``."""
        text = f"{self.location}@{self.time}" if self.time else self.location
        return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


@dataclass
class AuditSample:
    """One normalised sample: model inputs ``[C, H, W]``, the noisy label ``[H, W]`` (class ids, 255 =
    ignore), the reference label when the dataset has one, and ``valid`` (all inputs have data)."""

    info: SampleInfo
    inputs: dict[str, Tensor]
    label: Tensor
    valid: Tensor
    reference: Tensor | None = None


def audit_data_config(run_data: DataConfig, root: str | Path | None = None) -> DataConfig:
    """The run's data config for reading every sample whole: no crop, every timestamp, all samples.

    ``root`` (``--data``) replaces the run's root; the kind follows the folder: a ``dataset.yaml`` makes
    it a generic dataset, a ``cromss_stream.json`` a stream of the kind it records, anything else keeps
    the run's kind (e.g. another NoL folder).
    """
    cfg = copy.deepcopy(run_data)
    if root is not None:
        path = Path(root)
        if "://" not in str(root) and not path.exists():
            raise DataError(f"--data {root}: no such folder")
        cfg.root = str(root)
        if (path / "dataset.yaml").is_file():
            cfg.kind, cfg.format = "generic", "auto"
        elif (path / "cromss_stream.json").is_file() or "://" in str(root):
            from cromss.data.stream import load_stream_metadata

            cfg.kind, cfg.format = load_stream_metadata(root)["kind"], "stream"
        elif cfg.format == "stream":
            cfg.format = "auto"
    cfg.crop_size, cfg.eval_crop, cfg.eval_seasons, cfg.max_samples = None, None, "all", None
    cfg.augment = False
    return cfg


def audit_splits(cfg: DataConfig) -> list[str]:
    """The splits an audit covers: train and val (what pretraining reads), and test where one exists."""
    if cfg.kind == "nol":
        return ["train", "val"]
    splits = ["train", "val"]
    try:
        _open(cfg, "test")
    except DataError:
        return splits
    return [*splits, "test"]


def _open(cfg: DataConfig, split: str) -> Any:
    from cromss.data import build_dataset

    return build_dataset(cfg, split, train=False, compact=False)


def _georeference(path: Path | None) -> tuple[Any, Any]:
    """(transform, crs) of a raster, or (None, None) when it has none (identity transform, no CRS)."""
    if path is None:
        return None, None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            transform, crs = src.transform, src.crs
    if crs is None and transform.is_identity:
        return None, None
    return transform, crs


def _label_file(dataset: Any, location: int, season: int) -> Path | None:
    from cromss.data.generic import GenericDataset
    from cromss.data.layouts import NolGeoTiffDataset, TileDataset

    if isinstance(dataset, GenericDataset):
        return dataset.locations[location].rows[season].label
    if isinstance(dataset, NolGeoTiffDataset):
        return dataset._label_files("label", dataset.sample_id(location))[season]
    if isinstance(dataset, TileDataset):
        return dataset.locations[location].label
    return None


class SplitReader:
    """The samples of one split, in order, with their :class:`SampleInfo` (file layouts and streams)."""

    def __init__(self, cfg: DataConfig, split: str) -> None:
        self.cfg, self.split = cfg, split
        self.dataset = _open(cfg, split)
        self.stream = cfg.format == "stream"

    def _item(self, index: int) -> dict[str, Any]:
        from litdata import StreamingDataset

        return StreamingDataset.__getitem__(self.dataset, index)

    def __len__(self) -> int:
        """Samples of the split (a stream's training items count ``num_seasons`` each: exact unless
        its locations have different numbers of timestamps, then an upper bound)."""
        if self.stream and self.split == "train":
            return len(self.dataset) * int(self.dataset.meta["num_seasons"])
        return len(self.dataset)

    def samples(self, first_position: int) -> Iterator[AuditSample]:
        """Every sample of the split in order; positions count on from ``first_position``."""
        position = first_position
        for index in range(len(self.dataset)):
            if self.stream:
                item = self._item(index)
                seasons = range(len(item["label"])) if int(item["season"]) < 0 else [None]
                for season in seasons:
                    yield self._read_stream(index, season, position, item)
                    position += 1
            else:
                yield self.read(index, None, position)
                position += 1

    def read(self, index: int, season: int | None, position: int) -> AuditSample:
        """The sample of dataset ``index`` (for a stream's training item: at ``season``)."""
        if self.stream:
            return self._read_stream(index, season, position, self._item(index))
        dataset = self.dataset
        sample = dataset[index]
        location, fixed = dataset.entries[index]
        season_index = dataset._season(location, fixed)
        label_file = _label_file(dataset, location, season_index)
        transform, crs = _georeference(label_file)
        info = SampleInfo(position, self.split, index, dataset.sample_id(location), "", season_index,
                          label_file, transform, crs)
        from cromss.data.generic import GenericDataset

        if isinstance(dataset, GenericDataset):
            row = dataset.locations[location].rows[season_index]
            info.time = row.time
            info.images = dict(row.images)
            info.reference_file = row.reference
        elif dataset.num_seasons > 1:
            info.time = str(season_index)
        return self._to_sample(info, sample, dataset.modalities)

    def _read_stream(self, index: int, season: int | None, position: int, item: dict[str, Any]) -> AuditSample:
        view = self.dataset.view
        view.item = item
        drawn = int(item["season"])
        view.entries = [(0, season if drawn < 0 else drawn)]
        sample = view.preprocessor().sample(view.compact_sample(0))
        season_index = int(sample["season"])
        info = SampleInfo(position, self.split, index, str(item["id"]),
                          str(season_index) if view.num_seasons > 1 else "", season_index)
        return self._to_sample(info, sample, view.modalities)

    @staticmethod
    def _to_sample(info: SampleInfo, sample: dict[str, Any], modalities: list[str]) -> AuditSample:
        reference = sample.get("label_true")
        return AuditSample(info, {m: sample[m].float() for m in modalities}, sample["label"].long(),
                           sample["valid"].bool(), None if reference is None else reference.long())


def open_splits(cfg: DataConfig, splits: list[str] | None = None) -> list[SplitReader]:
    """One :class:`SplitReader` per split the audit covers (:func:`audit_splits` by default)."""
    return [SplitReader(cfg, split) for split in (splits or audit_splits(cfg))]


def iterate(readers: list[SplitReader]) -> Iterator[AuditSample]:
    """Every sample of ``readers`` in order (positions 0..N-1), one at a time."""
    position = 0
    for reader in readers:
        for sample in reader.samples(position):
            yield sample
            position = sample.info.index + 1


def stack_inputs(samples: list[AuditSample]) -> dict[str, Tensor]:
    """Batch the inputs of samples of one size: modality -> ``[B, C, H, W]``."""
    return {m: torch.stack([s.inputs[m] for s in samples]) for m in samples[0].inputs}
