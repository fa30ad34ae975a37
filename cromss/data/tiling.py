"""``cromss data tile``: cut co-registered scenes (images and labels on one grid) into GeoTIFF tiles.

Every input of one call must lie on the same grid (size, transform, CRS); each tile keeps its
georeference (the window transform), dtype, nodata and band descriptions, so ``cromss data index``
can pair the tiles and ``cromss predict`` writes maps back onto the right place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cromss.errors import DataError


def tile_rasters(
    inputs: Mapping[str, str | Path],
    out: str | Path,
    size: int,
    stride: int | None = None,
    prefix: str | None = None,
    keep_empty: bool = False,
) -> list[str]:
    """Write ``<out>/<name>/<prefix>_r<row>_c<col>.tif`` for every input ``name`` and full tile.

    Args:
        inputs: name -> raster file; all on one grid.
        size: tile side in pixels; partial tiles at the right/bottom edge are dropped.
        stride: step between tiles (default ``size``: no overlap).
        prefix: tile name prefix (default: the stem of the first input).
        keep_empty: keep tiles in which every input pixel of the first input is nodata.

    Returns the tile names written.
    """
    import numpy as np
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    if not inputs:
        raise DataError("cromss data tile: give at least one NAME=FILE")
    if size < 1 or (stride is not None and stride < 1):
        raise DataError(f"cromss data tile: size {size} and stride {stride} must be >= 1")
    stride = stride or size
    out = Path(out)
    sources = {}
    try:
        for name, path in inputs.items():
            if not Path(path).is_file():
                raise DataError(f"cromss data tile: {name} file {path} not found")
            sources[name] = rasterio.open(path)
    except RasterioError as err:
        for src in sources.values():
            src.close()
        raise DataError(f"cromss data tile: cannot read {path} as a raster ({err})") from None
    try:
        names = list(sources)
        first = sources[names[0]]
        for name in names[1:]:
            src = sources[name]
            if (src.height, src.width) != (first.height, first.width) or src.crs != first.crs or \
                    not src.transform.almost_equals(first.transform):
                raise DataError(
                    f"cromss data tile: {inputs[name]} ({src.width}x{src.height}, {src.crs}, {tuple(src.transform)[:6]}) "
                    f"is not on the grid of {inputs[names[0]]} ({first.width}x{first.height}, {first.crs}, "
                    f"{tuple(first.transform)[:6]}); resample it first (e.g. gdalwarp -tr/-te)"
                )
        if first.height < size or first.width < size:
            raise DataError(f"cromss data tile: {inputs[names[0]]} is {first.width}x{first.height}, smaller than --size {size}")
        prefix = prefix or Path(inputs[names[0]]).stem
        written = []
        for row in range(0, first.height - size + 1, stride):
            for col in range(0, first.width - size + 1, stride):
                window = Window(col, row, size, size)
                if not keep_empty:
                    data = first.read(window=window)
                    nodata = first.nodata
                    bad = ~np.isfinite(data) if data.dtype.kind == "f" else np.zeros(data.shape, bool)
                    if nodata is not None and np.isfinite(nodata):
                        bad |= data == nodata
                    if bad.all():
                        continue
                tile = f"{prefix}_r{row:05d}_c{col:05d}"
                for name, src in sources.items():
                    profile = src.profile.copy()
                    profile.update(driver="GTiff", height=size, width=size,
                                   transform=window_transform(window, src.transform), tiled=False)
                    for key in ("blockxsize", "blockysize", "compress", "interleave"):
                        profile.pop(key, None)
                    target = out / name / f"{tile}.tif"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with rasterio.open(target, "w", **profile) as dst:
                        dst.write(src.read(window=window))
                        for index, text in enumerate(src.descriptions, start=1):
                            if text:
                                dst.set_band_description(index, text)
                written.append(tile)
        return written
    finally:
        for src in sources.values():
            src.close()
