"""Preprocessing of compact batches on the training device (normalisation, flips, rotations).

Datasets built with ``compact=True`` (the DataModule's) return images in their stored dtype and
labels as uint8 (int16 for more than 255 classes), cropped but not yet normalised or flipped: about
7x fewer bytes cross the DataLoader worker boundary and the host-to-device copy. After the transfer,
:class:`BatchPreprocess` turns such a batch into the normalised float batch of docs/architecture.md:
images scaled (uint8 / 255 for the clipped LMDB values, mean +/- 2 sigma clip to [0, 1] for raw
values, statistics by band name), invalid pixels set to 0, labels int64, then the per-sample flips /
rotations drawn in the loader. It draws no random numbers, so resumed runs replay exactly.

A batch without the ``aug`` key is taken as already preprocessed and returned unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from cromss.errors import DataError
from cromss.transforms import LABEL_KEYS, ClipNormalize, apply_geometry

#: Key of a compact sample / batch holding the drawn geometry ``[hflip, vflip, k]``.
AUG_KEY = "aug"


class BatchPreprocess:
    """Compact batch -> normalised float batch (any device, batched).

    ``normalizers[m]`` is the :class:`ClipNormalize` of modality ``m``; ``None`` means the values are
    already clipped and scaled to 0..255 (the NoL LMDBs): ``x / 255``.
    """

    def __init__(self, modalities: Sequence[str], normalizers: Mapping[str, ClipNormalize | None]) -> None:
        self.modalities = tuple(modalities)
        self.normalizers = dict(normalizers)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if AUG_KEY not in batch:
            return dict(batch)
        out = dict(batch)
        aug = out.pop(AUG_KEY)
        valid = out["valid"].bool()
        for modality in self.modalities:
            if modality not in out:
                continue
            if modality not in self.normalizers:
                raise DataError(f"no normalisation known for modality {modality!r} of the batch")
            x = out[modality].float()
            norm = self.normalizers[modality]
            x = x / 255.0 if norm is None else norm(x)
            out[modality] = torch.where(valid.unsqueeze(-3), x, torch.zeros((), dtype=x.dtype, device=x.device))
        for key in LABEL_KEYS:
            if key in out:
                out[key] = out[key].long()
        return apply_geometry(out, aug, image_keys=self.modalities)

    def sample(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """One compact sample (no batch dimension) -> the normalised sample."""
        if AUG_KEY not in sample:
            return dict(sample)
        batched = {k: v.unsqueeze(0) if torch.is_tensor(v) else v for k, v in sample.items()}
        return {k: v[0] if torch.is_tensor(v) else v for k, v in self(batched).items()}

    def __repr__(self) -> str:
        kinds = {m: "uint8/255" if n is None else "clip" for m, n in self.normalizers.items()}
        return f"BatchPreprocess({kinds})"


def preprocess_batch(module: Any, batch: Any) -> Any:
    """``on_after_batch_transfer`` of the cromss LightningModules: preprocess a compact batch.

    The preprocessing comes from ``module.batch_preprocess`` if set, else from the trainer's
    datamodule (``.preprocess``). A compact batch with neither is a DataError (it would train on
    unnormalised values).
    """
    if not isinstance(batch, Mapping) or AUG_KEY not in batch:
        return batch
    preprocess = getattr(module, "batch_preprocess", None)
    if preprocess is None and getattr(module, "_trainer", None) is not None:
        preprocess = getattr(module.trainer.datamodule, "preprocess", None)
    if preprocess is None:
        raise DataError("a compact batch (stored dtypes) reached the model without its BatchPreprocess; "
                        "use CromSSDataModule or build_dataset(..., compact=False)")
    return preprocess(batch)
