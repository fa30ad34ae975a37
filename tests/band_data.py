"""Real-file datasets in two spellings of the same bands (issue 20), from the shared Sen1Floods11 chip.

* :func:`chip_arrays` reads a crop of the REAL chip (S2 L1C 13 bands ``B1``..``B12``, nodata 0; the hand
  label -1 / 0 / 1).
* :func:`write_dataset` writes a generic dataset of 64 px tiles in any band spelling: ``B1`` style as the
  chip, or BigEarthNet-style ``B01``..``B12`` L2A (12 bands, B10 dropped) with band descriptions.
* :func:`write_stack` writes one stack file (any band subset / order / spelling) with descriptions.

Band statistics are computed here with numpy (independent of cromss.data.stats).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from generic_data import S2_NAMES, write_description, write_samples, write_stats, write_tif
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

#: BigEarthNet-v2 spelling of its 12 Sentinel-2 L2A bands (no B10).
B01_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
#: The same 12 bands in the chip's spelling.
L2A_NAMES = [b for b in S2_NAMES if b != "B10"]
CHIP = "Spain_7370579"


def chip_arrays(shared_dir: Path, size: int = 256) -> dict:
    """The top-left ``size`` px of the real chip: S2 (13 bands, int16), hand label (int16), transform, crs."""
    import rasterio

    folder = shared_dir / "data" / "sen1floods11"
    window = Window(0, 0, size, size)
    with rasterio.open(folder / f"{CHIP}_S2Hand.tif") as src:
        s2, transform, crs = src.read(window=window), window_transform(window, src.transform), src.crs
    with rasterio.open(folder / f"{CHIP}_LabelHand.tif") as src:
        hand = src.read(1, window=window)
    return {"s2": s2, "hand": hand, "transform": transform, "crs": crs}


def select(s2: np.ndarray, names: list[str]) -> np.ndarray:
    """Bands of the 13-band chip array by their chip names (``B1`` spelling), independent of cromss."""
    return s2[[S2_NAMES.index(n) for n in names]]


def write_stack(path: Path, chip: dict, chip_bands: list[str], spelled: list[str] | None = None,
                crop: int | None = None) -> Path:
    """A stack of ``chip_bands`` (chip spelling, any order), described as ``spelled`` (default: as given)."""
    data = select(chip["s2"], chip_bands)
    if crop is not None:
        data = data[:, :crop, :crop]
    write_tif(path, np.ascontiguousarray(data), chip["transform"], crs=chip["crs"], nodata=0,
              descriptions=spelled or chip_bands)
    return path


def write_dataset(root: Path, chip: dict, names: list[str], chip_bands: list[str] | None = None,
                  tile: int = 64, test_tiles: int = 4, label: str = "hand", label_nodata_value=None,
                  describe_files: bool = True, extra: dict | None = None) -> Path:
    """A generic dataset of ``tile`` px tiles of the chip: modality ``s2`` with bands ``names`` (the chip's
    ``chip_bands``, default: the same names), label = the hand label (``label='ndwi'``: NDWI > 0 of S2,
    the hand label as ``reference``). ``label_nodata_value``: the GeoTIFF nodata written into the label
    files (e.g. 0, as a label written with the image's profile)."""
    chip_bands = chip_bands or names
    s2 = select(chip["s2"], chip_bands)
    hand = chip["hand"]
    green, nir = chip["s2"][2].astype(np.float64), chip["s2"][7].astype(np.float64)
    ndwi = ((green - nir) / np.maximum(green + nir, 1.0) > 0).astype(np.int16)
    size = s2.shape[-1]
    per_side = size // tile
    count = per_side ** 2
    rows = []
    for index in range(count):
        r, c = divmod(index, per_side)
        window = Window(c * tile, r * tile, tile, tile)
        transform = window_transform(window, chip["transform"])
        sl = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
        name = f"t{index:02d}"
        write_tif(root / "s2" / f"{name}.tif", np.ascontiguousarray(s2[:, sl[0], sl[1]]), transform, crs=chip["crs"],
                  nodata=0, descriptions=names if describe_files else None)
        row = {"location": name, "split": "test" if index >= count - test_tiles else "", "s2": f"s2/{name}.tif"}
        labels = ndwi if label == "ndwi" else hand
        write_tif(root / "label" / f"{name}.tif", np.ascontiguousarray(labels[sl]), transform, crs=chip["crs"],
                  nodata=label_nodata_value)
        row["label"] = f"label/{name}.tif"
        if label == "ndwi":
            write_tif(root / "hand" / f"{name}.tif", np.ascontiguousarray(hand[sl]), transform, crs=chip["crs"])
            row["reference"] = f"hand/{name}.tif"
        rows.append(row)
    write_description(root, {"s2": names}, ["not_water", "water"], {0: 0, 1: 1}, **(extra or {}))
    write_samples(root, rows)
    write_stats(root, "s2", names, [s2], nodata=0)
    return root
