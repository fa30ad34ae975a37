"""The one dataset core: :class:`SegmentationDataset` assembles a sample of ANY layout.

A layout (the built-in SSL4EO-S12@NoL LMDB / GeoTIFF tree, @DW / @OSM / DFC2020 tiles, or a generic
``dataset.yaml`` + ``samples.csv`` folder) only enumerates its locations and reads the raw images
and label values of one location; this class picks the timestamp, normalises (mean +/- 2 sigma
clip to [0, 1], statistics matched by band name), builds the ``valid`` mask (invalid input -> 0,
label -> IGNORE_INDEX), pads the label stack of locations with fewer timestamps and applies the
joint augmentation. The sample dict is documented in docs/architecture.md.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cromss import schema
from cromss.data.config import DataConfig
from cromss.data.description import DatasetDescription
from cromss.data.preprocess import AUG_KEY, BatchPreprocess
from cromss.data.run_stats import stats_files
from cromss.errors import DataError
from cromss.transforms import ClipNormalize, JointAugment, center_crop, crop_and_draw

#: torch dtypes of the label dtypes of compact samples
_TORCH_DTYPES = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16}


def _storable(data: np.ndarray) -> np.ndarray:
    """``data`` as a contiguous array of a dtype torch holds (uint32 -> int64, uint64 -> float64)."""
    if data.dtype == np.uint32:
        data = data.astype(np.int64)
    elif data.dtype == np.uint64:
        data = data.astype(np.float64)
    elif data.dtype.byteorder not in ("=", "|"):
        data = data.astype(data.dtype.newbyteorder("="))
    # LMDB values are views of read-only buffers: copy, torch tensors must own writable memory
    return np.ascontiguousarray(data) if data.flags.writeable else np.array(data, order="C")


@dataclass
class _Images:
    """One timestamp of one modality: raw or pre-scaled values and its invalid-pixel mask."""

    data: np.ndarray  # [C, H, W]
    invalid: np.ndarray  # bool [H, W]
    prescaled: bool  # True = uint8 clipped+scaled (LMDB): model input = value / 255


class SegmentationDataset(Dataset):
    """Common sample assembly. Layout subclasses provide locations, images and labels.

    ``train=True``: random timestamp (if ``cfg.random_season``) and joint augmentation (if
    ``cfg.augment``). ``train=False``: deterministic; with ``cfg.eval_seasons == 'all'`` every
    location appears once per timestamp.
    """

    #: the label stack length: the most timestamps of any location (4 seasons for SSL4EO-S12)
    num_seasons: int = 1
    #: True when locations may have fewer timestamps than ``num_seasons`` (samples then carry ``num_seasons``)
    variable_timestamps: bool = False
    #: True when the stored images are already clipped and scaled to 0..255 (the NoL LMDBs): input = value / 255
    prescaled: bool = False
    #: True: ``__getitem__`` returns compact samples (stored dtypes, see :meth:`compact_sample`);
    #: False: normalised float samples (docs/architecture.md). Set by ``build_dataset(..., compact=)``.
    compact: bool = False

    def __init__(self, cfg: DataConfig, locations: list[Any], train: bool,
                 description: DatasetDescription | None = None) -> None:
        self.cfg = cfg
        self.train = train
        self.locations = locations
        self.description = description
        self._normalizers: dict[str, ClipNormalize] | None = None
        self._preprocess: BatchPreprocess | None = None
        num_classes = description.num_classes if description is not None else 0
        # uint8 holds class ids 0..254 next to IGNORE_INDEX = 255
        self.label_dtype = np.dtype(np.uint8 if num_classes < schema.IGNORE_INDEX else np.int16)
        # training without augmentation still takes the random crop (fixed-size batches)
        self.augment = None
        if train and (cfg.augment or cfg.crop_size is not None):
            flip_p, rotate_p = (cfg.flip_p, cfg.rotate_p) if cfg.augment else (0.0, 0.0)
            self.augment = JointAugment(cfg.crop_size, flip_p, rotate_p, image_keys=tuple(self.modalities))
        self.entries: list[tuple[int, int | None]] = self._make_entries()
        self.has_true_labels = False

    @property
    def normalizers(self) -> dict[str, ClipNormalize]:
        """Built on first use, so that ``cromss data stats`` can read a dataset that has no statistics yet."""
        if self._normalizers is None:
            self._normalizers = self._build_normalizers()
        return self._normalizers

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.modalities or ["s1", "s2"])

    def bands_of(self, modality: str) -> tuple[str, ...]:
        """Band names fed for ``modality``: ``data.bands`` (a subset / order by name) or the dataset's own."""
        if self.cfg.bands and modality in self.cfg.bands:
            return tuple(self.cfg.bands[modality])
        if self.description is not None and modality in self.description.modalities:
            return self.description.bands(modality)
        return schema.modality_bands(modality, self.cfg.s2_bands)

    def _build_normalizers(self) -> dict[str, ClipNormalize]:
        """One :class:`ClipNormalize` per modality, its statistics picked by band name.

        Built-in kinds: ``data.s1_stats`` / ``data.s2_stats``, else ``<root>/stats/<m>_stats.json`` written
        by ``cromss data stats``, else the packaged SSL4EO-S12 statistics (:func:`stats_files`).
        Generic datasets read ``data.stats[modality]``, else the file the description names or finds in
        ``<root>/stats/`` (written by ``cromss data stats``); no statistics is a DataError saying so.
        """
        cfg, description = self.cfg, self.description
        if description is None or cfg.kind != "generic":
            files = stats_files(cfg)  # data.s1_stats / s2_stats, else <root>/stats/, else packaged
            return {
                "s1": ClipNormalize.for_modality("s1", 2, files["s1"]),
                "s2": ClipNormalize.for_modality("s2", cfg.s2_bands, files["s2"]),
            }
        out = {}
        for modality in self.modalities:
            explicit = (cfg.stats or {}).get(modality)
            path = explicit if explicit is not None else description.stats_path(modality)
            if path is None:
                raise DataError(
                    f"dataset {description.root}: no band statistics for modality {modality!r}; compute them "
                    f"with `cromss data stats {description.root}` (writes stats/{modality}_stats.json) or set "
                    f"data.stats.{modality}"
                )
            out[modality] = ClipNormalize.for_bands(modality, self.bands_of(modality), path)
        return out

    def timestamps(self, location: int) -> int:
        """Number of timestamps of ``location`` (position in ``self.locations``)."""
        return self.num_seasons

    def _make_entries(self) -> list[tuple[int, int | None]]:
        count = len(self.locations)
        if self.train or self.num_seasons == 1 or self.cfg.eval_seasons == "first":
            entries: list[tuple[int, int | None]] = [(i, None) for i in range(count)]
        else:
            entries = [(i, s) for i in range(count) for s in range(self.timestamps(i))]
        return entries if self.cfg.max_samples is None else entries[: self.cfg.max_samples]

    def with_locations(self, positions: list[int]) -> SegmentationDataset:
        """A shallow copy restricted to ``positions`` (indices into ``self.locations``).

        Used for the train/val split without scanning the dataset folder again.
        """
        subset = copy.copy(self)
        subset.locations = [self.locations[i] for i in positions]
        subset.entries = subset._make_entries()
        return subset

    # -- to be provided by layouts
    def sample_id(self, location: int) -> str:
        raise NotImplementedError

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        raise NotImplementedError

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels of all timestamps ``[T, H, W]`` int64 (ignore = 255) and the true labels or None."""
        raise NotImplementedError

    def check_grid(self, location: int, season: int, modality: str) -> None:
        """Layouts that know georeferences check here that ``modality`` shares the label's grid."""

    # -- assembly
    def __len__(self) -> int:
        return len(self.entries)

    def _season(self, location: int, fixed: int | None) -> int:
        if fixed is not None:
            return fixed
        count = self.timestamps(location)
        if count == 1:
            return 0
        if self.train and self.cfg.random_season:
            return int(torch.randint(count, ()))
        return min(self.cfg.season, count - 1)

    def _pad(self, labels: np.ndarray) -> np.ndarray:
        missing = self.num_seasons - labels.shape[0]
        if missing <= 0:
            return labels
        pad = np.full((missing, *labels.shape[1:]), schema.IGNORE_INDEX, dtype=labels.dtype)
        return np.concatenate([labels, pad])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The sample of ``index``: compact (stored dtypes, ``aug``) if ``self.compact``, else normalised floats."""
        sample = self.compact_sample(index)
        return sample if self.compact else self.preprocessor().sample(sample)

    def preprocessor(self) -> BatchPreprocess:
        """The :class:`BatchPreprocess` turning this dataset's compact batches into normalised floats."""
        if self._preprocess is None:
            self._preprocess = BatchPreprocess(
                self.modalities, {m: None if self.prescaled else self.normalizers[m] for m in self.modalities})
        return self._preprocess

    def compact_sample(self, index: int) -> dict[str, Any]:
        """Images in their stored dtype, labels as ``label_dtype``, cropped, geometry drawn (``aug``).

        Normalisation, the ``valid`` masking of images and the flips / rotations are left to
        :class:`~cromss.data.preprocess.BatchPreprocess` (on the training device).
        """
        if not 0 <= index < len(self.entries):
            raise IndexError(index)
        location, fixed = self.entries[index]
        season = self._season(location, fixed)
        sample_id = self.sample_id(location)
        labels, labels_true = self.read_labels(location)
        self._check_label_values(sample_id, labels, labels_true)
        count = labels.shape[0]
        height, width = labels.shape[-2:]
        invalid = np.zeros((height, width), dtype=bool)
        sample: dict[str, Any] = {}
        for modality in self.modalities:
            images = self.read_images(location, season, modality)
            if images.data.shape[-2:] != (height, width):
                raise DataError(
                    f"sample {sample_id}: {modality} image is {images.data.shape[-2]}x{images.data.shape[-1]} "
                    f"but its label is {height}x{width}"
                )
            if images.prescaled != self.prescaled:
                raise DataError(f"sample {sample_id}: {modality} values are not scaled like the rest of the dataset")
            invalid |= images.invalid
            sample[modality] = torch.from_numpy(_storable(images.data))
        valid = torch.from_numpy(~invalid)
        ignore = torch.tensor(schema.IGNORE_INDEX, dtype=_TORCH_DTYPES[self.label_dtype])
        all_seasons = torch.from_numpy(self._pad(labels).astype(self.label_dtype))
        sample.update(
            label=torch.where(valid, all_seasons[season], ignore), labels_all_seasons=all_seasons,
            season=torch.tensor(season, dtype=torch.int64), valid=valid, id=sample_id,
        )
        if self.variable_timestamps:
            sample["num_seasons"] = torch.tensor(count, dtype=torch.int64)
        if labels_true is not None:
            true = torch.from_numpy(np.asarray(labels_true[season]).astype(self.label_dtype))
            sample["label_true"] = torch.where(valid, true, ignore)
        keys = tuple(self.modalities)
        if self.augment is not None:
            aug = self.augment
            return crop_and_draw(sample, aug.crop_size, aug.flip_p, aug.rotate_p, image_keys=keys)
        if not self.train and self.cfg.eval_crop is not None:
            sample = center_crop(sample, self.cfg.eval_crop, image_keys=keys)
        sample[AUG_KEY] = torch.zeros(3, dtype=torch.int64)
        return sample

    def _check_label_values(self, sample_id: str, labels: np.ndarray, labels_true: np.ndarray | None) -> None:
        """Every label value is a class id or IGNORE_INDEX: checked here, in the loader, so that the
        training step's selection and smoothing need not read labels back from the device."""
        num_classes = self.description.num_classes if self.description is not None else 0
        if num_classes < 1:
            return
        for what, values in (("label", labels), ("true label", labels_true)):
            if values is None:
                continue
            bad = (values != schema.IGNORE_INDEX) & ((values < 0) | (values >= num_classes))
            if bad.any():
                raise DataError(
                    f"sample {sample_id}: {what} value {int(values[bad][0])} is not a class id in "
                    f"0..{num_classes - 1} nor the ignore index {schema.IGNORE_INDEX}"
                )

    def labelled_pixels(self, location: int) -> tuple[int, int, dict[str, int]]:
        """Pixels of ``location`` (every timestamp) that train: labelled AND valid in every modality.

        Returns ``(labelled valid pixels, pixels, {what: pixels})`` with ``what`` = 'labels ignored' and
        '<modality> nodata'; reads raw files only (no normalisation statistics needed).
        """
        labels, _ = self.read_labels(location)
        usable = total = 0
        nodata: dict[str, int] = {}
        for season in range(min(self.timestamps(location), labels.shape[0])):
            invalid = np.zeros(labels.shape[-2:], dtype=bool)
            ignored = int((labels[season] == schema.IGNORE_INDEX).sum())
            nodata["labels ignored"] = nodata.get("labels ignored", 0) + ignored
            for modality in self.modalities:
                mask = self.read_images(location, season, modality).invalid
                nodata[f"{modality} nodata"] = nodata.get(f"{modality} nodata", 0) + int(mask.sum())
                invalid |= mask
            usable += int(((labels[season] != schema.IGNORE_INDEX) & ~invalid).sum())
            total += int(invalid.size)
            if usable:
                break
        return usable, total, nodata

    def raw_images(self, location: int):
        """Yield ``(modality, raw [C, H, W] float64, invalid [H, W])`` of every timestamp (statistics)."""
        for season in range(self.timestamps(location)):
            for modality in self.modalities:
                images = self.read_images(location, season, modality)
                if images.prescaled:
                    raise DataError(
                        "the LMDB layout holds already clipped uint8 values; compute band statistics "
                        "on the GeoTIFF layout"
                    )
                yield modality, np.asarray(images.data, dtype=np.float64), images.invalid
