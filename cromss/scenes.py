"""Scene inputs of ``cromss predict``: band stacks or one file per band, at any resolution, on one grid.

A modality of a scene is given as

* one **stack file** (all bands in one raster): when its band descriptions name the model's bands, every
  model band is read BY NAME in the model's order, whatever the file's order (extra bands are skipped,
  e.g. 4 bands of a 13-band L1C stack; ``B01`` and ``B1`` are one band, :mod:`cromss.bands`); a band the
  file lacks is one line. A stack without band names is taken by its band count (the model's count, or
  a published table of the sensor such as the 13 Sentinel-2 L1C bands);
* a **folder of band files** (e.g. the ``*_B01.jp2`` ... ``*_B12.jp2`` of a Sentinel-2 L1C granule): a
  file belongs to band ``B8A`` when one ``_``/``-``/``.``-separated token of its name is that band name
  (case and leading zeros ignored: ``B01`` = ``B1``); files naming no band (TCI, preview) are ignored;
* an explicit **band -> file** mapping (``--band B8A=path``).

All files of all modalities of a scene are read on ONE target grid: the grid (CRS, transform, size) of the
file with the finest pixels (the first such file in model band order on a tie; when the files are in
several CRSs, the finest among those in the CRS of the first file). Files on another grid
(coarser, shifted or in another CRS) are resampled onto it with bilinear interpolation through a
:class:`rasterio.vrt.WarpedVRT`, window by window; files already on the target grid are read as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cromss import bands as bands_module
from cromss.errors import DataError

#: File name endings read as rasters in band folders and scene folders.
RASTER_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".jp2", ".vrt", ".img")

#: A modality of a scene: a stack file, a folder of band files, or band name -> file.
ModalitySpec = str | Path | Mapping[str, str | Path]


def band_key(name: str, modality: str | None = None) -> str:
    """Band name for matching (:func:`cromss.bands.band_key`: ``b01`` = ``B1``, ``B08A`` = ``B8A``)."""
    return bands_module.band_key(name, modality)


def is_raster(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in RASTER_EXTENSIONS


def match_band_files(folder: str | Path, bands: Sequence[str], modality: str) -> dict[str, Path]:
    """Band name -> file of ``folder`` whose name holds that band name as a token (see module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{modality} band folder not found: {folder}")
    wanted = {band_key(b, modality): b for b in bands}
    found: dict[str, list[Path]] = {}
    files = sorted(p for p in folder.iterdir() if is_raster(p))
    for path in files:
        tokens = re.split(r"[_\-.\s]+", path.stem)
        hits = {wanted[band_key(t, modality)] for t in tokens if band_key(t, modality) in wanted}
        if len(hits) == 1:
            found.setdefault(hits.pop(), []).append(path)
    missing = [b for b in bands if b not in found]
    if missing:
        names = ", ".join(p.name for p in files[:8]) + (" ..." if len(files) > 8 else "")
        raise DataError(
            f"{folder}: no file for {modality} band(s) {missing} (band files are matched by a name token "
            f"such as *_B01.jp2 or *_B8A.tif; raster files there: {names or 'none'})"
        )
    for band, paths in found.items():
        if len(paths) > 1:
            raise DataError(f"{folder}: {modality} band {band} matches several files: "
                            f"{', '.join(p.name for p in paths)}; give it with --band {band}=PATH")
    return {b: found[b][0] for b in bands}


def stack_indexes(path: Path, descriptions: Sequence[str | None], bands: Sequence[str],
                  modality: str) -> tuple[list[int], str]:
    """1-based bands of a stack file to read, in model order, and how they were found ('names'/'count').

    Band descriptions that name any of the model's bands decide: every model band is taken BY NAME
    (:mod:`cromss.bands`: ``B01`` is ``B1``), in the model's order, whatever the file's order (extra bands
    are skipped); a band the file lacks, or a band it names twice, is a DataError. Without such names the
    band count must equal the model's (bands taken in model order), or be the count of a published table
    of the modality's sensor (:data:`cromss.bands.KNOWN_TABLES`, e.g. 13 Sentinel-2 L1C bands), whose
    order the file is then assumed to have, as the built-in datasets assume it.
    """
    names = [str(d) if d else "" for d in descriptions]
    if any(n and bands_module.contains(bands, n, modality) for n in names):
        twice = bands_module.duplicate_text([n for n in names if n], modality)
        if twice:
            raise DataError(f"{modality} file {path}: its band descriptions {list(descriptions)} name one band "
                            f"twice ({twice})")
        found = bands_module.positions(names, bands, modality)
        missing = [b for b, p in zip(bands, found, strict=True) if p is None]
        if missing:
            raise DataError(f"{modality} file {path} lacks band(s) {missing}: its bands are "
                            f"{list(descriptions)}, the model needs {list(bands)}")
        return [int(p) + 1 for p in found if p is not None], "names"
    count = len(descriptions)
    if count == len(bands):
        return list(range(1, count + 1)), "count"
    table = bands_module.known_table(modality, count)
    if table is not None and not bands_module.missing_bands(table, bands, modality):
        return [p + 1 for p in bands_module.pick(table, bands, modality)], "count"
    raise DataError(f"{modality} file {path} has {count} band(s) without band names; the model needs "
                    f"{len(bands)} ({', '.join(bands)})")


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS, affine transform and size."""

    crs: Any
    transform: Any
    width: int
    height: int

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @property
    def pixel_area(self) -> float:
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d)

    def __str__(self) -> str:
        t = self.transform
        return f"{self.width}x{self.height} px of {abs(t.a):g} m at ({t.c:g}, {t.f:g}) in {self.crs}"


@dataclass
class _File:
    """One opened raster: the bands read from it and the model band positions they fill."""

    path: Path
    dataset: Any
    indexes: list[int]
    positions: list[int]
    nodata: float | None
    reader: Any = None  # the dataset itself, or a WarpedVRT onto the target grid


@dataclass
class ModalityInput:
    """The files of one modality of a scene and how the band order was verified."""

    modality: str
    bands: tuple[str, ...]
    files: list[_File]
    band_check: str  # 'names' (descriptions / band file names) or 'count'
    any_band: bool = False  # nodata rule: a pixel is nodata when ANY band (else: ALL bands) holds the value


@dataclass
class Scene:
    """All modalities of one scene, readable window by window on the target :class:`Grid`."""

    inputs: dict[str, ModalityInput]
    grid: Grid
    resampled: list[str] = field(default_factory=list)  # files warped onto the grid

    def read(self, modality: str, row: int, col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw float32 ``[C, h, w]`` of ``modality`` in model band order and its invalid mask ``[h, w]``.

        A pixel is invalid when any band is non-finite (this includes pixels outside a resampled file's
        footprint), or when any / all bands (the modality's nodata rule, as the datasets apply it) equal
        their file's nodata value.
        """
        from rasterio.windows import Window

        item = self.inputs[modality]
        out = np.empty((len(item.bands), height, width), np.float32)
        window = Window(col, row, width, height)
        for f in item.files:
            raw = f.reader.read(f.indexes, window=window, out_dtype="float32")
            out[f.positions] = raw
        invalid = ~np.isfinite(out).all(axis=0)
        hit = np.zeros(out.shape, bool)
        for f in item.files:
            if f.nodata is not None and math.isfinite(f.nodata):
                hit[f.positions] = out[f.positions] == np.float32(f.nodata)
        invalid |= hit.any(axis=0) if item.any_band else hit.all(axis=0)
        return out, invalid

    def close(self) -> None:
        for item in self.inputs.values():
            for f in item.files:
                if f.reader is not None and f.reader is not f.dataset:
                    f.reader.close()
                f.dataset.close()


def _open(path: Path, modality: str) -> Any:
    import rasterio

    if not path.is_file():
        raise DataError(f"{modality} input file not found: {path}")
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as err:
        raise DataError(f"cannot read {modality} raster {path}: {err}") from None


def _single_band(path: Path, dataset: Any, band: str, modality: str) -> int:
    if dataset.count == 1:
        return 1
    position = bands_module.positions([str(d) if d else "" for d in dataset.descriptions], [band], modality)[0]
    if position is not None:
        return position + 1
    raise DataError(f"{modality} band file {path} has {dataset.count} bands, none named {band}; a band file "
                    "holds one band (or names its bands)")


def _open_modality(modality: str, spec: ModalitySpec, bands: tuple[str, ...], nodata: float | None,
                   opened: list[Any]) -> ModalityInput:
    if isinstance(spec, Mapping) or Path(spec).is_dir():
        given = ({str(b): Path(p) for b, p in spec.items()} if isinstance(spec, Mapping)
                 else match_band_files(spec, bands, modality))
        twice = bands_module.duplicate_text(list(given), modality)
        if twice:
            raise DataError(f"{modality} band files: {twice}; give one file per band")
        unknown = bands_module.missing_bands(bands, list(given), modality)
        if unknown:
            raise DataError(f"{modality} band(s) {unknown} are not bands of the model (it reads {list(bands)})")
        # the model's spelling of each band given (B01=... feeds the model's B1)
        per_band = dict(zip(bands_module.spelled_as(bands, list(given), modality), given.values(), strict=True))
        missing = [b for b in bands if b not in per_band]
        if missing:
            raise DataError(f"no file for {modality} band(s) {missing} (the model reads {list(bands)})")
        files: dict[Path, _File] = {}
        for position, band in enumerate(bands):
            path = per_band[band]
            if path not in files:
                dataset = _open(path, modality)
                opened.append(dataset)
                files[path] = _File(path, dataset, [], [], dataset.nodata if nodata is None else nodata)
            f = files[path]
            f.indexes.append(_single_band(path, f.dataset, band, modality))
            f.positions.append(position)
        return ModalityInput(modality, bands, list(files.values()), "names")
    path = Path(spec)
    dataset = _open(path, modality)
    opened.append(dataset)
    indexes, check = stack_indexes(path, dataset.descriptions, bands, modality)
    f = _File(path, dataset, indexes, list(range(len(bands))), dataset.nodata if nodata is None else nodata)
    return ModalityInput(modality, bands, [f], check)


def _check_overlap(path: Path, dataset: Any, target: Grid, target_path: Path) -> None:
    """Refuse a file that does not overlap the map grid at all: resampled, it would be all nodata (a map of
    nothing but nodata, exit 0, is a silent wrong result)."""
    from rasterio.transform import array_bounds
    from rasterio.warp import transform_bounds

    left, bottom, right, top = transform_bounds(dataset.crs, target.crs, *dataset.bounds, densify_pts=21)
    west, south, east, north = array_bounds(target.height, target.width, target.transform)
    if right <= west or left >= east or top <= south or bottom >= north:
        raise DataError(
            f"input {path} ({Grid.of(dataset)}) does not overlap the map grid of {target_path} ({target}): "
            "the inputs of one scene must cover the same area"
        )


def open_scene(specs: Mapping[str, ModalitySpec], bands: Mapping[str, Sequence[str]],
               nodata: float | None | Mapping[str, float | None] = None,
               any_band: Mapping[str, bool] | None = None) -> Scene:
    """Open the inputs of every modality in ``specs`` and put them on the finest grid (see module doc).

    Args:
        specs: modality -> stack file, band folder or band -> file mapping.
        bands: modality -> the model's band names in input order.
        nodata: input nodata value overriding the files' own (NaN is always nodata), or one per modality.
        any_band: modality -> nodata rule (True: nodata in ANY band spoils the pixel; default: in ALL bands).
    """
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    opened: list[Any] = []
    try:
        values = nodata if isinstance(nodata, Mapping) else {m: nodata for m in specs}
        inputs = {m: _open_modality(m, spec, tuple(bands[m]), values.get(m), opened) for m, spec in specs.items()}
        for m, item in inputs.items():
            item.any_band = bool((any_band or {}).get(m, False))
        all_files = [f for item in inputs.values() for f in item.files]
        grids = [Grid.of(f.dataset) for f in all_files]
        for f, grid in zip(all_files, grids, strict=True):
            if grid.crs is None or grid.transform.is_identity:
                raise DataError(f"input {f.path} has no georeference (CRS and transform); predict needs them "
                                "to put every band on one grid and to georeference the map")
        # pixel sizes compare only within one CRS: the finest grid in the CRS of the first file
        same_crs = [g for g in grids if g.crs == grids[0].crs]
        target = min(same_crs, key=lambda g: g.pixel_area)  # min() keeps the first of equal areas
        resampled = []
        for f, grid in zip(all_files, grids, strict=True):
            if grid == target:
                f.reader = f.dataset
                continue
            _check_overlap(f.path, f.dataset, target, next(p.path for p, g in zip(all_files, grids) if g == target))
            options: dict[str, Any] = {}
            if f.nodata is not None and math.isfinite(f.nodata):
                options["src_nodata"] = f.nodata
            # float output with NaN outside the footprint / where nodata: those pixels become invalid
            f.reader = WarpedVRT(f.dataset, crs=target.crs, transform=target.transform, width=target.width,
                                 height=target.height, resampling=Resampling.bilinear, nodata=float("nan"),
                                 dtype="float32", **options)
            resampled.append(str(f.path))
        return Scene(inputs, target, resampled)
    except BaseException:
        for dataset in opened:
            dataset.close()
        raise
