"""Embedded demo dataset: small synthetic SSL4EO-S12@NoL and SSL4EO-S12@DW sets with known truth.

:func:`make_demo` writes the SAME on-disk layouts the real readers read (docs/data.md):

* ``OUT/nol/``: pretraining set, as LMDBs (``0k_251k_uint8_s1.lmdb``, ``0k_251k_uint8_s2c.lmdb``,
  ``dw_labels.lmdb`` + our ``dw_labels_true.lmdb``) and as the GeoTIFF tree (``s1/``, ``s2c/``,
  ``dw_labels/`` + our ``dw_labels_true/``).
* ``OUT/dw/``: downstream SSL4EO-S12@DW-style tiles ``train|test/{s1,s2,label}/<name>.tif`` made
  from the TRUE labels of other locations, published DW ids (0 unlabeled, 1..9, 10 cloud).

The scene model: smooth random class fields (blobs, Dynamic World-like class mix), seasonal
change (snow in winter at cold sites, crops bare after harvest, spring floods), S2 L1C-like spectra
(DN) with shared texture and band correlation, S1 VV/VH dB backscatter with gamma speckle (so S1 is
harder than S2). Noisy labels = truth with a boundary shift plus blob errors to plausible
confusions, partly independent per season, calibrated to ``noise_rate``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from cromss import schema
from cromss.errors import DataError

NUM_CLASSES = len(schema.DW_CLASSES)
WATER, TREES, GRASS, FLOODED, CROPS, SHRUB, BUILT, BARE, SNOW = range(NUM_CLASSES)

#: Area share of each DW class in the demo (roughly the NoL label statistics of Fig. 1).
CLASS_PRIOR = np.array([0.10, 0.24, 0.15, 0.04, 0.17, 0.11, 0.08, 0.09, 0.02])

#: Class-mean L1C top-of-atmosphere DN of the 13 bands B1..B12 (incl. B8A, B10).
S2_SPECTRA = np.array([
    [1400, 1200, 1000, 800, 700, 650, 620, 580, 550, 200, 10, 300, 200],        # water
    [1300, 1000, 900, 700, 1000, 2200, 2600, 2700, 2900, 900, 15, 1500, 800],   # trees
    [1400, 1100, 1100, 1000, 1400, 2300, 2600, 2700, 2900, 950, 18, 2300, 1400],  # grass
    [1350, 1050, 1000, 850, 1000, 1600, 1800, 1900, 2000, 700, 12, 1300, 800],  # flooded veg.
    [1450, 1150, 1200, 1150, 1550, 2600, 3000, 3100, 3300, 1000, 20, 2400, 1500],  # crops
    [1500, 1250, 1250, 1350, 1650, 2000, 2200, 2300, 2450, 900, 20, 2700, 1900],  # shrub
    [1700, 1550, 1500, 1600, 1750, 1900, 2000, 2100, 2150, 850, 25, 2500, 2100],  # built
    [1800, 1700, 1800, 2100, 2300, 2500, 2600, 2700, 2800, 1000, 25, 3200, 2600],  # bare
    [5000, 5200, 5200, 5100, 5000, 4800, 4600, 4500, 4300, 1500, 60, 800, 600],  # snow/ice
], dtype=np.float64)

#: Class-mean backscatter (VV, VH) in dB; classes overlap more than in S2 (as in reality).
S1_BACKSCATTER = np.array([
    [-20.0, -27.0], [-7.5, -13.0], [-10.5, -17.5], [-8.0, -16.0], [-10.0, -16.0],
    [-9.0, -15.0], [-4.0, -10.0], [-13.5, -22.0], [-12.0, -20.0],
])

#: Plausible confusion of each class (used for label noise): water<->flooded veg., trees<->shrub ...
CONFUSION = np.array([FLOODED, SHRUB, CROPS, GRASS, GRASS, GRASS, BARE, SHRUB, BARE])

#: Dates (month, day) of the four seasons; sorted order = season index.
SEASON_DATES = ((3, 15), (6, 15), (9, 15), (12, 15))


@dataclass
class Location:
    """One synthetic location: true labels, noisy labels and images of four seasons."""

    sample_id: str
    truth: np.ndarray  # uint8 [T, H, W]
    noisy: np.ndarray  # uint8 [T, H, W]
    s1: np.ndarray  # float32 dB [T, 2, H, W]
    s2: np.ndarray  # uint16 DN [T, 13, H, W]


def _field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field with unit standard deviation (Gaussian-filtered white noise)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap", truncate=3.0)
    return field / (field.std() + 1e-12)


def _shift(label: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shift a 2-D map by (dy, dx) pixels, repeating the edge (boundary displacement)."""
    height, width = label.shape
    pad = max(abs(dy), abs(dx))
    padded = np.pad(label, pad, mode="edge")
    return padded[pad - dy: pad - dy + height, pad - dx: pad - dx + width]


def class_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """Base land-cover map: blobs from the argmax of smooth per-class fields plus a location prior."""
    prior = rng.dirichlet(CLASS_PRIOR * 25)
    prior[SNOW] *= 0.3  # permanent snow/ice is rare; winter snow comes from the seasonal model
    fields = np.stack([_field(rng, (size, size), size / 14) for _ in range(NUM_CLASSES)])
    return np.argmax(fields + 1.0 * np.log(prior + 1e-3)[:, None, None], axis=0).astype(np.uint8)


def seasonal_truth(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """Four seasons [T, H, W] of the base map: harvest, spring floods, winter snow at cold sites."""
    cold = rng.random() < 0.3
    harvest = _field(rng, base.shape, base.shape[0] / 10)
    seasons = np.repeat(base[None], schema.NUM_SEASONS, axis=0).copy()
    crops, flooded = base == CROPS, base == FLOODED
    seasons[0][crops & (harvest < -0.4)] = BARE  # spring: not yet grown
    seasons[0][flooded & (harvest > 0.0)] = WATER  # spring: flooded
    seasons[2][crops & (harvest > 0.3)] = BARE  # autumn: harvested
    winter = seasons[3]
    winter[crops] = BARE
    if cold:
        winter[np.isin(base, (GRASS, CROPS, BARE, SHRUB))] = SNOW
    return seasons


def noisy_labels(rng: np.random.Generator, truth: np.ndarray, noise_rate: float) -> np.ndarray:
    """Noisy copy of ``truth`` [T, H, W] with about ``noise_rate`` of pixels wrong.

    Errors: a per-season boundary shift (1-2 px), then blobs (partly shared across seasons, partly
    season-specific) relabelled to the class's plausible confusion (80 %) or another class (20 %).
    """
    if noise_rate <= 0:
        return truth.copy()
    seasons, size = truth.shape[0], truth.shape[-1]
    shared = _field(rng, truth.shape[1:], size / 16)
    noisy = np.empty_like(truth)
    for t in range(seasons):
        dy, dx = rng.integers(-2, 3, size=2)
        shifted = _shift(truth[t], int(dy), int(dx))
        base_error = float((shifted != truth[t]).mean())
        blob_share = np.clip((noise_rate - base_error) / max(1e-6, 1 - base_error), 0.0, 1.0)
        score = 0.6 * shared + 0.8 * _field(rng, truth.shape[1:], size / 16)
        blobs = score > np.quantile(score, 1 - blob_share) if blob_share > 0 else np.zeros_like(score, bool)
        other = (shifted + rng.integers(1, NUM_CLASSES, size=shifted.shape)) % NUM_CLASSES
        random_pick = _field(rng, truth.shape[1:], 3.0) > 0.84  # ~20 % of a blob area
        wrong = np.where(random_pick, other, CONFUSION[shifted])
        noisy[t] = np.where(blobs, wrong, shifted)
    return noisy.astype(np.uint8)


def render_s2(rng: np.random.Generator, labels: np.ndarray, season: int) -> np.ndarray:
    """L1C-like DN [13, H, W] uint16 for one season's labels [H, W]."""
    size = labels.shape[-1]
    mean = S2_SPECTRA[labels].transpose(2, 0, 1)  # [13, H, W]
    texture = _field(rng, labels.shape, 1.5)  # shared across bands -> correlated bands
    fine = rng.standard_normal((13, *labels.shape))
    gain = rng.uniform(0.95, 1.05) * (1.0 - 0.05 * (season == 3))  # low winter sun
    haze = rng.uniform(0, 150) * np.linspace(1.0, 0.0, 13)[:, None, None]  # blue bands hazier
    image = mean * gain * (1 + 0.05 * texture[None] + 0.03 * fine) + haze
    # mixed pixels along class boundaries
    image = gaussian_filter(image, sigma=(0, 0.6, 0.6))
    del size
    return np.clip(np.rint(image), 1, 10000).astype(np.uint16)


def render_s1(rng: np.random.Generator, labels: np.ndarray, season: int) -> np.ndarray:
    """VV, VH backscatter [2, H, W] float32 dB with 3-look gamma speckle."""
    mean_db = S1_BACKSCATTER[labels].transpose(2, 0, 1)
    mean_db = mean_db + 2.0 * _field(rng, labels.shape, 3.0)[None]  # texture (moisture, structure)
    mean_db = mean_db + (1.5 if season == 1 else 0.0) * (labels == CROPS)[None]  # summer crop canopy
    looks = 3.0
    speckle = rng.gamma(looks, 1.0 / looks, size=mean_db.shape)
    return (mean_db + 10 * np.log10(speckle)).astype(np.float32)


def make_location(rng: np.random.Generator, sample_id: str, size: int, noise_rate: float) -> Location:
    """Truth, noisy labels and images of one location."""
    truth = seasonal_truth(rng, class_map(rng, size))
    noisy = noisy_labels(rng, truth, noise_rate)
    s1 = np.stack([render_s1(rng, truth[t], t) for t in range(schema.NUM_SEASONS)])
    s2 = np.stack([render_s2(rng, truth[t], t) for t in range(schema.NUM_SEASONS)])
    return Location(sample_id, truth, noisy, s1, s2)


# ----------------------------------------------------------------------------- writers
def _to_uint8(raw: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Clip [..., C, H, W] to mean +/- 2 std and scale to 0..255 (as the SSL4EO-S12 LMDBs)."""
    mean_a = np.asarray(mean)[:, None, None]
    std_a = np.asarray(std)[:, None, None]
    low, high = mean_a - 2 * std_a, mean_a + 2 * std_a
    return np.rint((np.clip(raw, low, high) - low) / (high - low) * 255).astype(np.uint8)


def _write_tif(path: Path, data: np.ndarray, transform, nodata=None, names=None) -> None:
    import rasterio

    data = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
        dtype=data.dtype, crs="EPSG:32632", transform=transform, nodata=nodata,
    ) as dst:
        dst.write(data)
        for i, name in enumerate(names or ()):
            dst.set_band_description(i + 1, name)


def _transform(index: int, size: int):
    from affine import Affine

    # locations on a 50 km grid in UTM 32N, 10 m pixels (north-up)
    return Affine(10.0, 0.0, 300000.0 + 50000 * (index % 20), 0.0, -10.0, 5500000.0 - 50000 * (index // 20))


def _season_names(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    s2_names, s1_names = [], []
    for month, day in SEASON_DATES:
        day = int(min(28, day + rng.integers(-10, 11)))
        date = f"2020{month:02d}{day:02d}"
        s2_names.append(f"{date}T103021_{date}T103603_T32TLQ")
        s1_names.append(f"S1A_IW_GRDH_1SDV_{date}T054032_{date}T054057_031667_03A5C8_4D2A")
    return s2_names, s1_names


def write_nol(locations: list[Location], out: Path, layouts: tuple[str, ...], rng: np.random.Generator) -> None:
    """Write the pretraining set in the LMDB and/or GeoTIFF layouts."""
    from cromss.data.readers import write_lmdb

    out.mkdir(parents=True, exist_ok=True)
    if "lmdb" in layouts:
        s1 = [(_to_uint8(loc.s1, schema.S1_MEAN, schema.S1_STD), loc.sample_id) for loc in locations]
        s2 = [(_to_uint8(loc.s2.astype(np.float64), schema.S2_MEAN, schema.S2_STD), loc.sample_id)
              for loc in locations]
        size = sum(a.nbytes for a, _ in s1 + s2) * 2 + (1 << 24)
        write_lmdb(out / "0k_251k_uint8_s1.lmdb", s1, map_size=size)
        write_lmdb(out / "0k_251k_uint8_s2c.lmdb", s2, map_size=size)
        write_lmdb(out / "dw_labels.lmdb", [(loc.noisy, loc.sample_id) for loc in locations], map_size=size)
        write_lmdb(out / "dw_labels_true.lmdb", [(loc.truth, loc.sample_id) for loc in locations],
                   map_size=size)
    if "geotiff" in layouts:
        for index, loc in enumerate(locations):
            transform = _transform(index, loc.truth.shape[-1])
            s2_names, s1_names = _season_names(rng)
            for t in range(schema.NUM_SEASONS):
                for b, band in enumerate(schema.S1_BANDS):
                    _write_tif(out / "s1" / loc.sample_id / s1_names[t] / f"{band}.tif", loc.s1[t, b],
                               transform, names=[band])
                for b, band in enumerate(schema.S2_BANDS):
                    _write_tif(out / "s2c" / loc.sample_id / s2_names[t] / f"{band}.tif", loc.s2[t, b],
                               transform, nodata=0, names=[band])
                _write_tif(out / "dw_labels" / loc.sample_id / f"{s2_names[t]}.tif", loc.noisy[t], transform)
                _write_tif(out / "dw_labels_true" / loc.sample_id / f"{s2_names[t]}.tif", loc.truth[t],
                           transform)


def write_dw_tiles(rng: np.random.Generator, out: Path, counts: dict[str, int], size: int, first_id: int) -> None:
    """Downstream DW-style tiles from TRUE labels (ids +1; 0 unlabeled blobs, 10 = cloud blobs)."""
    index = first_id
    for split, count in counts.items():
        for _ in range(count):
            loc = make_location(rng, f"{index:07d}", size, 0.0)
            season = int(rng.integers(schema.NUM_SEASONS))
            label = loc.truth[season].astype(np.uint8) + 1
            unlabeled = _field(rng, label.shape, size / 12)
            label[unlabeled > np.quantile(unlabeled, 0.9)] = 0  # ~10 % not annotated
            cloud = _field(rng, label.shape, 3.0)
            label[cloud > np.quantile(cloud, 0.99)] = 10  # ~1 % marked cloud
            transform = _transform(index, size)
            name = f"{index:07d}"
            _write_tif(out / split / "s1" / f"{name}.tif", loc.s1[season], transform, names=list(schema.S1_BANDS))
            _write_tif(out / split / "s2" / f"{name}.tif", loc.s2[season], transform, nodata=0,
                       names=list(schema.S2_BANDS))
            _write_tif(out / split / "label" / f"{name}.tif", label, transform)
            index += 1


def make_demo(
    out: str | Path,
    locations: int = 48,
    size: int = 96,
    noise_rate: float = 0.3,
    seed: int = 0,
    dw_train: int = 24,
    dw_test: int = 8,
    dw_size: int | None = None,
    layouts: tuple[str, ...] = ("lmdb", "geotiff"),
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset to ``out`` (``out/nol``, ``out/dw``, ``out/demo.json``); returns ``out``.

    Args:
        locations: pretraining locations (4 seasons each).
        size: tile side in pixels of the pretraining set (and of DW tiles unless ``dw_size``).
        noise_rate: target fraction of wrong pixels in the noisy labels (0 <= rate < 1).
        seed: everything is a deterministic function of it.
        dw_train, dw_test: number of downstream DW tiles per split.
        layouts: which pretraining layouts to write ('lmdb', 'geotiff').
        overwrite: replace an existing ``out/nol`` and ``out/dw``.
    """
    out = Path(out)
    if locations < 2:
        raise DataError(f"make_demo: locations={locations}; need at least 2 (train + validation)")
    if size < 8:
        raise DataError(f"make_demo: size={size}; need at least 8 pixels")
    if not 0.0 <= noise_rate < 1.0:
        raise DataError(f"make_demo: noise_rate={noise_rate} must be in [0, 1)")
    unknown = set(layouts) - {"lmdb", "geotiff"}
    if unknown or not layouts:
        raise DataError(f"make_demo: layouts {sorted(layouts)} must be a non-empty subset of ['lmdb', 'geotiff']")
    for sub in ("nol", "dw"):
        if (out / sub).exists():
            if not overwrite:
                raise DataError(f"{out / sub} already exists; pass overwrite=True (CLI: --overwrite)")
            shutil.rmtree(out / sub)
    import rasterio

    with rasterio.Env():  # one GDAL environment for the thousands of small files
        _make_demo(out, locations, size, noise_rate, seed, dw_train, dw_test, dw_size, tuple(layouts))
    return out


def _make_demo(out: Path, locations: int, size: int, noise_rate: float, seed: int, dw_train: int,
               dw_test: int, dw_size: int | None, layouts: tuple[str, ...]) -> None:
    rng = np.random.default_rng(seed)
    # SSL4EO-S12 ids are 7-digit strings; keep them non-contiguous like the real NoL subset
    ids = np.sort(rng.choice(np.arange(0, 251079), size=locations, replace=False))
    locs = [make_location(rng, f"{i:07d}", size, noise_rate) for i in ids]
    write_nol(locs, out / "nol", tuple(layouts), rng)
    if dw_train + dw_test > 0:
        write_dw_tiles(rng, out / "dw", {"train": dw_train, "test": dw_test}, dw_size or size, 300000)
    truth = np.stack([loc.truth for loc in locs])
    noisy = np.stack([loc.noisy for loc in locs])
    info = {
        "generator": "cromss.data.demo.make_demo",
        "locations": locations, "size": size, "noise_rate_target": noise_rate,
        "noise_rate_measured": float((truth != noisy).mean()), "seed": seed,
        "dw_train": dw_train, "dw_test": dw_test, "dw_size": dw_size or size, "layouts": list(layouts),
        "class_share_true": np.bincount(truth.ravel(), minlength=NUM_CLASSES).tolist(),
    }
    (out / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
