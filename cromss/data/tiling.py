"""``cromss data tile``: cut co-registered scenes (images and labels on one grid) into GeoTIFF tiles.

Every input of one call must lie on the same grid (size, transform, CRS); each tile keeps its
georeference (the window transform), dtype, nodata and band descriptions, so ``cromss data index``
can pair the tiles and ``cromss predict`` writes maps back onto the right place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from cromss.errors import ConfigError, DataError, OutputError

#: A tile name prefix: one plain file-name part (no folder, no '..').
_PREFIX = re.compile(r"^[^/\\\x00]+$")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a plain file-name part; ConfigError for '../x', 'a/b', '.', '..' or ''."""
    if not prefix or not _PREFIX.match(prefix) or prefix in (".", "..") or Path(prefix).name != prefix:
        raise ConfigError(f"--prefix {prefix!r}: must be a plain name without folders ('/', '..'); tiles are "
                          "always written inside --out")
    return prefix


def existing_tiles(out: Path, names: list[str], prefix: str) -> list[Path]:
    """Tiles of ``prefix`` already in ``out/<name>/`` (any size or position: a re-tiling would mix with them)."""
    pattern = re.compile(rf"^{re.escape(prefix)}_r\d+_c\d+\.tif$")
    found: list[Path] = []
    for name in names:
        folder = out / name
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if pattern.match(p.name))
    return found


def tile_rasters(
    inputs: Mapping[str, str | Path],
    out: str | Path,
    size: int,
    stride: int | None = None,
    prefix: str | None = None,
    keep_empty: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """Write ``<out>/<name>/<prefix>_r<row>_c<col>.tif`` for every input ``name`` and full tile.

    Args:
        inputs: name -> raster file; all on one grid.
        size: tile side in pixels; partial tiles at the right/bottom edge are dropped.
        stride: step between tiles (default ``size``: no overlap).
        prefix: tile name prefix (default: the stem of the first input).
        keep_empty: keep tiles in which every input pixel of the first input is nodata.
        overwrite: replace the tiles of ``prefix`` already in ``out`` (refused otherwise, before anything is
            written). The old tiles of that prefix are removed once every new tile is in place, so no mix
            of two tilings remains.

    All tiles are written as ``<tile>.tif.tmp``, read back, and renamed into place only when every one of
    them is complete: a full disk or a read-only folder stops with one line naming the tile, and leaves
    no partial tile (and, with ``overwrite``, the earlier tiles untouched).

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
    for name in inputs:
        if not name or Path(name).name != name or name in (".", ".."):
            raise ConfigError(f"--input {name}=...: the name must be a plain folder name (it is the folder of its tiles)")
    stride = stride or size
    out = Path(out)
    prefix = check_prefix(prefix if prefix is not None else Path(next(iter(inputs.values()))).stem)
    earlier = existing_tiles(out, list(inputs), prefix)
    if earlier and not overwrite:
        raise OutputError(f"{out} already holds {len(earlier)} tile(s) of prefix {prefix!r} (e.g. {earlier[0]}): pass "
                          "--overwrite to replace them, or choose another --prefix / --out")
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
    temps: list[tuple[Path, Path]] = []  # (tile.tif.tmp, tile.tif), renamed only when all are written
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
        written: list[str] = []
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
                    temp = target.with_name(target.name + ".tmp")
                    temps.append((temp, target))
                    _write_tile(temp, target, profile, src.read(window=window), src.descriptions)
                written.append(tile)
        for temp, target in temps:  # every tile is complete: now they replace the earlier ones
            try:
                os.replace(temp, target)
            except OSError as err:
                from cromss.outputs import output_error

                raise output_error(err, target, "tile") from None
        new = {target for _, target in temps}
        for old in earlier:  # tiles of an earlier tiling (other size / stride) that this one does not replace
            if old not in new:
                old.unlink(missing_ok=True)
        return written
    except BaseException:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise
    finally:
        for src in sources.values():
            src.close()


def _write_tile(temp: Path, target: Path, profile: dict, data: object, descriptions: tuple) -> None:
    """Write one tile to ``temp`` and read it back; any failure is one OutputError naming ``target``."""
    import numpy as np
    import rasterio
    from rasterio.errors import RasterioError

    from cromss.outputs import output_error, prepare_output_dir

    prepare_output_dir(target.parent, "tile folder")
    printed: list[str] = []
    try:
        with _c_stderr(printed):  # libtiff prints a failed write ("_tiffWriteProc: ...") on stderr itself
            with rasterio.open(temp, "w", **profile) as dst:
                dst.write(data)
                for index, text in enumerate(descriptions, start=1):
                    if text:
                        dst.set_band_description(index, text)
            with rasterio.open(temp) as check:  # it may only print it: read every pixel back
                if not np.array_equal(check.read(), data, equal_nan=np.asarray(data).dtype.kind == "f"):
                    raise RasterioError(f"{temp} reads back other values than were written")
    except RasterioError:  # RasterioIOError is an OSError too: GDAL's text ("Write failed") names no cause
        raise OutputError(f"cannot write tile {target}: {_write_failure_cause(target.parent, ''.join(printed))}; "
                          "no tile of this call was kept") from None
    except OSError as err:
        raise output_error(err, target, "tile") from None


@contextmanager
def _c_stderr(printed: list[str]) -> Iterator[None]:
    """Collect what C code prints on file descriptor 2 inside the block (into ``printed``)."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            printed.append(capture.read(4096).decode(errors="replace"))


def _write_failure_cause(folder: Path, printed: str = "") -> str:
    """Why a GeoTIFF write came out incomplete, as far as the system and libtiff tell (GDAL's error does not)."""
    import resource

    try:
        if os.statvfs(folder).f_bavail == 0 or "No space left" in printed:
            return "no space left on the device"
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if "File too large" in printed or soft != resource.RLIM_INFINITY:
        return "file too large (a file size limit, see 'ulimit -f')"
    detail = " ".join(printed.split())[:200]
    return f"the written file is incomplete ({detail or 'disk full, quota or a file size limit?'})"
