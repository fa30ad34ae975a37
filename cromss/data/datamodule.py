"""LightningDataModule over :func:`cromss.data.datasets.build_dataset`."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from cromss import schema
from cromss.data.config import DataConfig
from cromss.data.datasets import build_dataset
from cromss.data.preprocess import BatchPreprocess
from cromss.data.resolution import class_table_of
from cromss.errors import DataError, warn

#: training samples (spread over the split) checked for one labelled valid pixel before training
TRAINABLE_CHECK_SAMPLES = 16


def check_trainable(dataset: Any, root: str, limit: int = TRAINABLE_CHECK_SAMPLES) -> None:
    """Refuse a training split whose every pixel is ignored or nodata, before training starts.

    Up to ``limit`` locations spread evenly over the split are read (raw files, every timestamp); the
    first one with a labelled valid pixel ends the check, so a normal dataset costs one read. If none
    has one, the run would train to loss 0.0 on nothing: a DataError naming the split and an example.
    """
    locations = len(getattr(dataset, "locations", []))
    if locations == 0 or not hasattr(dataset, "labelled_pixels"):
        return
    count = min(limit, locations)
    positions = sorted({round(i * (locations - 1) / max(1, count - 1)) for i in range(count)})
    first: tuple[str, int, int, dict[str, int]] | None = None
    for position in positions:
        usable, total, nodata = dataset.labelled_pixels(position)
        if usable:
            return
        if first is None:
            first = (dataset.sample_id(position), usable, total, nodata)
    assert first is not None
    sample, _, total, nodata = first
    worst = ", ".join(f"{what} on {n} of {total}" for what, n in nodata.items())
    raise DataError(
        f"the training split of {root} has no labelled valid pixel in the {len(positions)} of its {locations} "
        f"samples checked: every label is ignored or every image pixel is nodata (e.g. sample {sample}: "
        f"{worst} pixels); check the files, label values and nodata with `cromss data inspect {root}`"
    )


#: training locations (spread over the split) whose labels are counted per class before training
CLASS_CHECK_LOCATIONS = 512


def warn_absent_classes(dataset: Any, class_table: schema.ClassTable, root: str,
                        limit: int = CLASS_CHECK_LOCATIONS) -> list[str]:
    """One warning line naming the classes without a labelled pixel in the training split (up to
    ``limit`` locations spread over it are read; the line says how many when that is not all).

    A class the training labels never show cannot be learned, and an evaluation on it says nothing (a
    label file whose nodata value is that class's value is the usual cause). Returns the classes named.
    """
    import numpy as np

    locations = len(getattr(dataset, "locations", []))
    if locations == 0 or not hasattr(dataset, "read_labels"):
        return []
    count = min(limit, locations)
    positions = sorted({round(i * (locations - 1) / max(1, count - 1)) for i in range(count)})
    pixels = np.zeros(class_table.num_classes, dtype=np.int64)
    for position in positions:
        labels, _ = dataset.read_labels(position)
        labels = np.asarray(labels)
        labelled = labels[labels != schema.IGNORE_INDEX]
        pixels += np.bincount(labelled.ravel().astype(np.int64), minlength=class_table.num_classes)[
            : class_table.num_classes]
    absent = [name for name, n in zip(class_table.names, pixels.tolist(), strict=True) if n == 0]
    if absent:
        read = "" if len(positions) == locations else f" (of the {len(positions)} of {locations} locations read)"
        warn(f"class(es) {absent} have no labelled pixel in the training split of {root}{read}: they cannot be "
             f"learned; check the label values and the label files' nodata with `cromss data inspect {root}`",
             once=False)
    return absent


class CromSSDataModule(L.LightningDataModule):
    """Train / val / test loaders of one dataset.

    Train: shuffled, augmented, random season, ``drop_last`` only when the split has more than one
    batch. Val/test: no augmentation, deterministic season(s) (``cfg.eval_seasons``), full tiles.
    ``num_classes`` and ``class_table`` come from the dataset's description (built-in or ``dataset.yaml``).

    Batches are compact (stored dtypes, labels uint8, see :mod:`cromss.data.preprocess`); the cromss
    LightningModules finish them on the device with :attr:`preprocess` in ``on_after_batch_transfer``.
    """

    def __init__(self, cfg: DataConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.class_table: schema.ClassTable = class_table_of(cfg)
        self.num_classes: int = self.class_table.num_classes
        self.datasets: dict[str, Dataset] = {}
        self._checked_train = False

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built once."""
        if split not in self.datasets:
            self.datasets[split] = build_dataset(self.cfg, split, train=split == "train", compact=True)
        return self.datasets[split]

    @property
    def preprocess(self) -> BatchPreprocess:
        """Compact batch -> normalised float batch (the same for every split of one dataset)."""
        built = next(iter(self.datasets.values()), None)
        return (built if built is not None else self.dataset("train")).preprocessor()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            train = self.dataset("train")
            self.dataset("val")
            if not self._checked_train:
                check_trainable(train, self.cfg.root)
                warn_absent_classes(train, self.class_table, self.cfg.root)
                if self.cfg.format != "stream":
                    # one sample of each split through the whole core (crop, eval crop, label map): a crop
                    # larger than the tiles is refused here, before the run writes anything
                    for split in ("train", "val"):
                        if len(self.datasets[split]):
                            self.datasets[split][0]
                self._checked_train = True
        if stage == "validate":
            self.dataset("val")
        if stage in ("test", "predict") and self.cfg.kind != "nol":
            self.dataset("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if len(dataset) == 0:
            raise DataError(f"the {split} split of {self.cfg.root} is empty")
        if self.cfg.format == "stream":
            from cromss.data.stream import stream_loader

            # rank / worker sharding, shuffling and the resumable state are litdata's
            return stream_loader(dataset, self.cfg, train=shuffle)
        workers = self.cfg.num_workers
        kwargs: dict[str, Any] = {}
        if workers > 0:
            kwargs["persistent_workers"] = self.cfg.persistent_workers
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, num_workers=workers,
            pin_memory=self.cfg.pin_memory, drop_last=shuffle and len(dataset) > self.cfg.batch_size,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
