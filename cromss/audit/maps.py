"""Score maps: one float32 GeoTIFF per audited sample, on the label's grid.

Band 1 is the combined score, then one band per modality (``1 - W_l`` by default; ``--score``), each named in the band
descriptions; unlabelled pixels are nodata (NaN). The map carries the label file's transform and CRS
when the source has them (generic GeoTIFF datasets, the NoL GeoTIFF tree, downstream tiles); LMDB and
stream samples have no georeference, so their maps are written on pixel coordinates only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cromss.outputs import writing

NODATA: float = float("nan")


def write_geotiff(path: Path, data: np.ndarray, transform: Any | None, crs: Any | None, nodata: float | int | None,
                  descriptions: Sequence[str] = (), what: str = "GeoTIFF") -> Path:
    """Write ``data [K, H, W]`` (or ``[H, W]``) to ``path`` via ``<path>.tmp`` + rename (deflate-compressed)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    data = data if data.ndim == 3 else data[None]
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": data.shape[0],
        "dtype": data.dtype.name, "nodata": nodata, "compress": "deflate",
    }
    if transform is not None:
        profile["transform"] = transform
    if crs is not None:
        profile["crs"] = crs
    temp = path.with_name(path.name + ".tmp")
    with writing(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(temp, "w", **profile) as dst:
                dst.write(data)
                for index, name in enumerate(descriptions, start=1):
                    dst.set_band_description(index, name)
        os.replace(temp, path)
    return path


def write_score_map(path: Path, combined: np.ndarray, per_modality: dict[str, np.ndarray], labelled: np.ndarray,
                    transform: Any | None, crs: Any | None, combine: str, score: str = "weight") -> Path:
    """The score map of one sample: ``[combined, modality...]`` float32, NaN where unlabelled; ``score``
    names what the bands hold (cromss.audit.scoring.SCORES)."""
    bands = [combined, *per_modality.values()]
    stack = np.stack(bands).astype(np.float32)
    stack[:, ~labelled] = NODATA
    meaning = {"weight": "1 - W_l", "ratio": "1 / (1 + f / f_c)", "confidence": "1 - f"}.get(score, score)
    names = [f"score_{combine}", *[f"score_{m} ({meaning})" for m in per_modality]]
    return write_geotiff(path, stack, transform, crs, NODATA, names, what="score map")
