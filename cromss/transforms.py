"""Input normalisation (mean +/- 2 sigma clipping to [0, 1]) and joint augmentation.

Paper Sec. IV-A: "The model input data is normalized to [0, 1] after discarding the values
outside <x> +/- 2 sigma(x)". The band statistics are data (``cromss/resources/<modality>_stats.json``),
not code; ``cromss data stats`` computes new ones.

Augmentation (Sec. IV-A): random crop, flips, rotation by multiples of 90 degrees; the dataset
picks the random season. Every image and every label tensor of one sample gets the SAME geometric
transform.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cromss import bands as band_ids
from cromss import schema
from cromss.errors import DataError
from cromss.textfiles import read_text

#: Keys of a sample that are images (float, [C, H, W]); the other spatial keys are masks.
IMAGE_KEYS: tuple[str, ...] = ("s1", "s2")
#: Keys of a sample that are label-like masks ([H, W] or [T, H, W]); transformed with the images.
MASK_KEYS: tuple[str, ...] = ("label", "labels_all_seasons", "valid", "label_true")


# ----------------------------------------------------------------------------- statistics
def load_band_stats(modality: str, path: str | Path | None = None) -> dict[str, Any]:
    """Read the band statistics JSON of ``modality`` ('s1' | 's2').

    ``path=None`` (or ``'packaged'``, as resolved configs record it) reads the packaged SSL4EO-S12 statistics. The JSON holds ``bands`` (names),
    ``mean`` and ``std`` (one number per band, raw units: dB for S1, L1C DN for S2).
    """
    if path == "packaged":
        path = None
    if path is None and modality not in ("s1", "s2"):
        raise DataError(f"no packaged band statistics for modality {modality!r} (only 's1', 's2'); give a file")
    if path is None:
        text = resources.files("cromss.resources").joinpath(f"{modality}_stats.json").read_text()
        source = f"cromss/resources/{modality}_stats.json"
    else:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"band statistics file not found: {path}")
        text = read_text(path, "band statistics file")
        source = str(path)
    try:
        stats = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"band statistics file {source} is not valid JSON: {err}") from None
    for key in ("bands", "mean", "std"):
        if key not in stats:
            raise DataError(f"band statistics file {source} lacks key '{key}'")
    if not len(stats["bands"]) == len(stats["mean"]) == len(stats["std"]):
        raise DataError(f"band statistics file {source}: 'bands', 'mean', 'std' differ in length")
    if any(not (float(s) > 0) for s in stats["std"]):
        raise DataError(f"band statistics file {source}: every std must be > 0, got {stats['std']}")
    stats["source"] = stats.get("source", source)
    return stats


class ClipNormalize:
    """Clip every band to ``mean +/- 2 std`` and scale that range linearly to [0, 1].

    ``y = (clamp(x, m - 2s, m + 2s) - (m - 2s)) / (4 s)`` per band. Callable on float tensors
    ``[C, H, W]`` or ``[B, C, H, W]`` of raw values (S1 in dB, S2 in L1C DN); returns float32.
    Non-finite inputs stay non-finite (the dataset masks them via ``valid``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], num_std: float = 2.0) -> None:
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean_t.numel() != std_t.numel():
            raise DataError(f"ClipNormalize: {mean_t.numel()} means but {std_t.numel()} stds")
        if not bool((std_t > 0).all()):
            raise DataError(f"ClipNormalize: every std must be > 0, got {std_t.tolist()}")
        self.mean = mean_t.float()
        self.std = std_t.float()
        #: the statistics as given (float64), e.g. to store them with a converted dataset
        self.stats64 = (mean_t.tolist(), std_t.tolist())
        self.num_std = float(num_std)
        self.low = (mean_t - num_std * std_t).float()
        self.high = (mean_t + num_std * std_t).float()
        #: (low, high) per device: moved once, not at every call (a blocking upload on CUDA)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_bands(self) -> int:
        return int(self.mean.numel())

    @classmethod
    def for_modality(
        cls, modality: str, num_bands: int | None = None, stats_path: str | Path | None = None
    ) -> ClipNormalize:
        """Build the normaliser of ``'s1'`` (2 bands) or ``'s2'`` (13 or 9 bands).

        The 9-band S2 input takes the statistics of its bands by name (B2..B8, B11, B12).
        """
        stats = load_band_stats(modality, stats_path)
        try:
            wanted = schema.modality_bands(modality, num_bands or (2 if modality == "s1" else 13))
        except ValueError as err:
            raise DataError(str(err)) from None
        if modality == "s1" and num_bands not in (None, 2):
            raise DataError(f"Sentinel-1 input has 2 bands (VV, VH), got num_bands={num_bands}")
        names = [str(b) for b in stats["bands"]]
        missing = band_ids.missing_bands(names, wanted, modality)
        if missing:
            raise DataError(f"band statistics {stats['source']} lack band(s) {missing} of {modality}")
        index = band_ids.pick(names, wanted, modality)
        return cls([stats["mean"][i] for i in index], [stats["std"][i] for i in index])

    @classmethod
    def for_bands(cls, modality: str, bands: Sequence[str], stats_path: str | Path) -> ClipNormalize:
        """The normaliser of any modality: statistics of ``bands`` picked BY NAME (:mod:`cromss.bands`:
        ``B01`` in the file is ``B1`` of the model) from ``stats_path``."""
        stats = load_band_stats(modality, stats_path)
        names = [str(name) for name in stats["bands"]]
        missing = band_ids.missing_bands(names, list(bands), modality)
        if missing:
            raise DataError(
                f"band statistics {stats['source']} lack band(s) {missing} of modality {modality!r} "
                f"(it has {names})"
            )
        index = band_ids.pick(names, list(bands), modality)
        return cls([stats["mean"][i] for i in index], [stats["std"][i] for i in index])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (3, 4):
            raise DataError(f"ClipNormalize expects [C,H,W] or [B,C,H,W], got shape {tuple(x.shape)}")
        channels = x.shape[-3]
        if channels != self.num_bands:
            raise DataError(f"ClipNormalize built for {self.num_bands} bands got {channels} bands")
        bounds = self._on_device.get(x.device)
        if bounds is None:
            bounds = self._on_device[x.device] = (self.low.to(x.device).view(-1, 1, 1),
                                                  self.high.to(x.device).view(-1, 1, 1))
        low, high = bounds
        x = x.float()
        return ((torch.minimum(torch.maximum(x, low), high) - low) / (high - low)).float()

    def __repr__(self) -> str:
        return f"ClipNormalize(num_bands={self.num_bands}, num_std={self.num_std})"


# ----------------------------------------------------------------------------- augmentation
class JointAugment:
    """Random crop, flips and 90-degree rotations applied identically to images and masks.

    Uses ``torchvision.transforms.v2`` (``tv_tensors.Image`` / ``tv_tensors.Mask``) for the crop
    and the flips, so every modality and every label tensor of a sample get the same window and
    flips. The rotation is ``torch.rot90`` by k in {1, 2, 3} with probability ``rotate_p``: exact
    for labels (no interpolation). Randomness comes from torch's global generator, which
    DataLoader seeds per worker.

    Args:
        crop_size: side of the random square crop, ``None`` = no crop.
        flip_p: probability of a horizontal flip and (independently) of a vertical flip.
        rotate_p: probability of a rotation by 90, 180 or 270 degrees (chosen uniformly).
    """

    def __init__(self, crop_size: int | None = 256, flip_p: float = 0.5, rotate_p: float = 0.2,
                 image_keys: Sequence[str] = IMAGE_KEYS) -> None:
        from torchvision.transforms import v2

        self.image_keys = tuple(image_keys)
        self.crop_size = crop_size
        self.flip_p = flip_p
        self.rotate_p = rotate_p
        steps: list[Any] = []
        if crop_size is not None:
            steps.append(v2.RandomCrop(crop_size))
        if flip_p > 0:
            steps += [v2.RandomHorizontalFlip(flip_p), v2.RandomVerticalFlip(flip_p)]
        self._geometric = v2.Compose(steps) if steps else None

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        from torchvision import tv_tensors

        out = dict(sample)
        spatial: dict[str, Any] = {}
        for key in self.image_keys:
            if key in out:
                spatial[key] = tv_tensors.Image(out[key])
        for key in MASK_KEYS:
            if key in out:
                spatial[key] = tv_tensors.Mask(out[key])
        if not spatial:
            return out
        if self.crop_size is not None:
            height, width = next(iter(spatial.values())).shape[-2:]
            if height < self.crop_size or width < self.crop_size:
                raise DataError(
                    f"sample {out.get('id', '?')}: crop_size {self.crop_size} is larger than the "
                    f"{height}x{width} tile; set data.crop_size to at most {min(height, width)} or null"
                )
        if self._geometric is not None:
            spatial = self._geometric(spatial)
        if self.rotate_p > 0 and float(torch.rand(())) < self.rotate_p:
            k = int(torch.randint(1, 4, ()))
            spatial = {key: torch.rot90(value, k, dims=(-2, -1)) for key, value in spatial.items()}
        for key, value in spatial.items():
            out[key] = value.as_subclass(torch.Tensor).contiguous()
        return out


# ----------------------------------------------------------------------------- loader / device split
#: Keys of a compact sample whose values are labels (stored as uint8 / int16, int64 after :func:`apply_geometry`).
LABEL_KEYS: tuple[str, ...] = ("label", "labels_all_seasons", "label_true")


def _crop_offset(size: int, crop: int) -> int:
    # the draw of torchvision.transforms.v2.RandomCrop: one randint per cropped axis, none otherwise
    return int(torch.randint(0, size - crop + 1, size=())) if size > crop else 0


def crop_and_draw(sample: Mapping[str, Any], crop_size: int | None, flip_p: float, rotate_p: float,
                  image_keys: Sequence[str] = IMAGE_KEYS) -> dict[str, Any]:
    """The loader half of :class:`JointAugment`: random crop now, flips / rotation only DRAWN.

    Consumes torch's global generator exactly like ``JointAugment`` (crop top, crop left,
    horizontal flip, vertical flip, rotation), so a seeded worker yields the same geometry as
    before. The drawn geometry is stored as ``aug`` = int64 ``[hflip, vflip, k]`` (rotation by
    k x 90 degrees) and applied on the training device by :func:`apply_geometry`.
    """
    out = dict(sample)
    keys = [k for k in (*image_keys, *MASK_KEYS) if k in out]
    if crop_size is not None and keys:
        height, width = out[keys[0]].shape[-2:]
        if height < crop_size or width < crop_size:
            raise DataError(
                f"sample {out.get('id', '?')}: crop_size {crop_size} is larger than the "
                f"{height}x{width} tile; set data.crop_size to at most {min(height, width)} or null"
            )
        top, left = _crop_offset(height, crop_size), _crop_offset(width, crop_size)
        for key in keys:
            out[key] = out[key][..., top:top + crop_size, left:left + crop_size].contiguous()
    hflip = flip_p > 0 and bool(torch.rand(1) < flip_p)
    vflip = flip_p > 0 and bool(torch.rand(1) < flip_p)
    k = int(torch.randint(1, 4, ())) if rotate_p > 0 and float(torch.rand(())) < rotate_p else 0
    out["aug"] = torch.tensor([int(hflip), int(vflip), k], dtype=torch.int64)
    return out


def apply_geometry(batch: Mapping[str, Any], aug: torch.Tensor, image_keys: Sequence[str] = IMAGE_KEYS) -> dict[str, Any]:
    """The device half of :class:`JointAugment`: per-sample flips and rotations of a whole batch.

    ``aug`` [B, 3] as drawn by :func:`crop_and_draw`; every image and mask key of the batch (first
    dimension B) gets its sample's horizontal flip, vertical flip, then rotation by k x 90 degrees,
    in JointAugment's order. Square samples (every crop) take one gather per key through a per-sample
    pixel permutation, with no value read back to the host. Non-square samples (tiles without
    ``data.crop_size``) index the chosen samples (a few host reads per batch); their odd rotations are
    refused in batches of more than one (the rotated samples could not share a batch).
    """
    out = dict(batch)
    keys = [k for k in (*image_keys, *MASK_KEYS) if k in out]
    if not keys:
        return out
    first = out[keys[0]]
    aug = aug.to(first.device)
    height, width = first.shape[-2:]
    if height == width:
        return _permute_square(out, keys, aug)
    hflip, vflip, turns = aug[:, 0].bool(), aug[:, 1].bool(), aug[:, 2]
    # only the chosen samples are transformed (index assignment), so an unaugmented batch costs nothing
    steps = [(hflip.nonzero().flatten(), lambda t: t.flip(-1)), (vflip.nonzero().flatten(), lambda t: t.flip(-2))]
    steps += [((turns == k).nonzero().flatten(), lambda t, k=k: torch.rot90(t, k, dims=(-2, -1))) for k in (1, 2, 3)]
    steps = [(index, fn) for index, fn in steps if index.numel()]
    for key in keys:
        x = out[key]
        if steps:
            x = x.clone()
        for index, fn in steps:
            moved = fn(x[index])
            if moved.shape[-2:] != x.shape[-2:]:
                if x.shape[0] != 1:
                    raise DataError(
                        f"rotation by 90 degrees of {x.shape[-2]}x{x.shape[-1]} samples in a batch of "
                        f"{x.shape[0]}: set data.crop_size (square crops) or data.rotate_p: 0"
                    )
                x = moved
                continue
            x[index] = moved
        out[key] = x
    return out


def _permute_square(out: dict[str, Any], keys: list[str], aug: torch.Tensor) -> dict[str, Any]:
    """Flips and rotations of square samples as one gather per key (no host read).

    The geometry is applied to a grid of pixel indices (``torch.where`` over the five possible
    transforms of a ``[B, S, S]`` index map), which then gathers every key's pixels: the same values
    as flipping and rotating each sample, for any dtype.
    """
    size = out[keys[0]].shape[-1]
    batch = aug.shape[0]
    device = aug.device
    grid = torch.arange(size * size, device=device).view(1, size, size).expand(batch, size, size)

    def where(flag: torch.Tensor, changed: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        return torch.where(flag.view(-1, 1, 1), changed, kept)

    grid = where(aug[:, 0] != 0, grid.flip(-1), grid)
    grid = where(aug[:, 1] != 0, grid.flip(-2), grid)
    turns = aug[:, 2]
    rotated = grid
    for k in (1, 2, 3):
        rotated = where(turns == k, torch.rot90(grid, k, dims=(-2, -1)), rotated)
    index = rotated.reshape(batch, size * size)
    for key in keys:
        x = out[key]
        flat = x.reshape(*x.shape[:-2], size * size)
        view = index.view(batch, *([1] * (flat.dim() - 2)), size * size).expand_as(flat)
        out[key] = flat.gather(-1, view).view(x.shape)
    return out


def center_crop(sample: Mapping[str, Any], crop_size: int, image_keys: Sequence[str] = IMAGE_KEYS) -> dict[str, Any]:
    """Deterministic centre crop of every image and mask of a sample (for evaluation)."""
    out = dict(sample)
    for key in (*image_keys, *MASK_KEYS):
        if key in out:
            height, width = out[key].shape[-2:]
            top, left = max(0, (height - crop_size) // 2), max(0, (width - crop_size) // 2)
            out[key] = out[key][..., top:top + crop_size, left:left + crop_size].contiguous()
    return out
