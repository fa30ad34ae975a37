"""Building the NoLDO-S12 subsets from their sources (paper Sec. II).

* OSM quality filter (Sec. II-B, Table I): a tile's OSM label mask is kept when it agrees with the
  Dynamic World expert labels on more than 75 % of the pixels labelled in both.
* Padding of the 510 x 510 DW training tiles used as test tiles to 512 x 512 (Sec. II-B).
* Assembly of SSL4EO-S12@NoL (Sec. II-A): keep the locations whose four seasons all have S1, S2
  and a noisy label mask, and say why every other location was dropped.

The numeric parts are pure numpy functions; the ``*_dir`` / ``write_*`` functions do the file work
that the ``cromss data osm-filter | pad | assemble-nol`` commands expose.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cromss.errors import DataError
from cromss.schema import NUM_SEASONS, OSM_TO_DW

#: Published DW tile values: 0 = unlabeled, 1..9 = DW classes 0..8, 10 = cloud (unlabeled).
DW_UNLABELED: int = 0
DW_CLOUD: int = 10
#: Published OSM tile values: 0 = unlabeled, 1..13 = OSM classes.
OSM_UNLABELED: int = 0
NUM_OSM_PUBLISHED: int = 14  # values 0..13
NUM_DW_PUBLISHED: int = 10  # values 0..9 take part in the table; 10 (cloud) is handled as unlabeled

#: The paper keeps a tile when acc > 0.75 (strictly greater).
DEFAULT_MIN_ACCURACY: float = 0.75


# ----------------------------------------------------------------------------- OSM agreement
def admissible_pairs(osm_to_dw: Mapping[int, Iterable[int]] = OSM_TO_DW) -> np.ndarray:
    """Lookup table of Table I in published ids: bool ``[14, 10]``, ``[osm_value, dw_value]``.

    ``osm_to_dw`` maps OSM published ids (1..13) to admissible DW class ids (0..8); DW class ``k`` is
    published as ``k + 1``. Row 0 and column 0 (unlabeled) are all False.
    """
    table = np.zeros((NUM_OSM_PUBLISHED, NUM_DW_PUBLISHED), dtype=bool)
    for osm_value, dw_classes in osm_to_dw.items():
        if not 1 <= osm_value < NUM_OSM_PUBLISHED:
            raise DataError(f"OSM id {osm_value} in the OSM->DW table is outside 1..{NUM_OSM_PUBLISHED - 1}")
        for dw_class in dw_classes:
            if not 0 <= dw_class < NUM_DW_PUBLISHED - 1:
                raise DataError(f"DW class {dw_class} (for OSM id {osm_value}) is outside 0..8")
            table[osm_value, dw_class + 1] = True
    return table


_ADMISSIBLE = admissible_pairs()


def osm_agreement(
    dw_label: np.ndarray, osm_label: np.ndarray, table: np.ndarray | None = None
) -> tuple[float, int]:
    """Agreement of an OSM label mask with the DW expert labels of the same tile (Sec. II-B).

    Args:
        dw_label: ``[H, W]`` integer DW tile in published ids (0 unlabeled, 1..9 classes, 10 cloud).
        osm_label: ``[H, W]`` integer OSM tile in published ids (0 unlabeled, 1..13 classes).
        table: optional admissible-pair table ``[14, 10]`` (default: Table I, :func:`admissible_pairs`).

    Returns:
        ``(acc, n)``: ``n`` = number of pixels labelled in both (DW not 0/10, OSM not 0) and
        ``acc = TP / n`` where TP counts the pixels whose OSM class admits their DW class (Table I).
        ``acc`` is NaN when ``n == 0``.
    """
    dw = np.asarray(dw_label)
    osm = np.asarray(osm_label)
    if dw.shape != osm.shape or dw.ndim != 2:
        raise DataError(f"DW label {dw.shape} and OSM label {osm.shape} must be 2-D arrays of the same shape")
    for name, arr, top in (("DW", dw, DW_CLOUD), ("OSM", osm, NUM_OSM_PUBLISHED - 1)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"{name} label must hold integer ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > top):
            bad = arr[(arr < 0) | (arr > top)][0]
            raise DataError(f"{name} label value {int(bad)} is outside the published ids 0..{top}")
    table = _ADMISSIBLE if table is None else table
    dw = dw.astype(np.intp, copy=False)
    osm = osm.astype(np.intp, copy=False)
    labelled = (dw != DW_UNLABELED) & (dw != DW_CLOUD) & (osm != OSM_UNLABELED)
    n_labelled = int(labelled.sum())
    if n_labelled == 0:
        return math.nan, 0
    true_positives = int(table[osm[labelled], dw[labelled]].sum())
    return true_positives / n_labelled, n_labelled


def keep_tile(accuracy: float, min_accuracy: float = DEFAULT_MIN_ACCURACY) -> bool:
    """The paper's filter: keep when ``accuracy > min_accuracy`` (strict); NaN (no pixels) is dropped."""
    return bool(accuracy > min_accuracy)


@dataclass
class TileAgreement:
    """Result of the OSM check of one tile."""

    tile: str
    accuracy: float
    n_labelled: int
    kept: bool


def read_label_tile(path: Path) -> np.ndarray:
    """Band 1 of a label GeoTIFF as published ids (no remapping), ``[H, W]`` integer array."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            if src.count < 1:
                raise DataError(f"label file {path} has no band")
            data = src.read(1)
    except RasterioIOError as err:
        raise DataError(f"cannot read label file {path}: {err}") from None
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise DataError(f"label file {path} holds non-integer values (dtype {data.dtype})")
        data = data.astype(np.int64)
    return data


def _tiles_by_name(root: Path, what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise DataError(f"{what} folder not found: {root}")
    # same pairing rule as the tile reader: prefixes dw_/osm_/label_/... are dropped from the stem
    from cromss.data.layouts import _tile_key

    tiles: dict[str, Path] = {}
    for path in sorted(root.rglob("*.tif")) + sorted(root.rglob("*.tiff")):
        name = _tile_key(path.stem)
        if name in tiles:
            raise DataError(f"{what} folder {root} holds two tiles named {name!r}: {tiles[name]} and {path}")
        tiles[name] = path
    if not tiles:
        raise DataError(f"{what} folder {root} holds no .tif label tiles")
    return tiles


@dataclass
class OsmFilterResult:
    """All checked tiles plus the tiles present on one side only."""

    tiles: list[TileAgreement]
    only_dw: list[str] = field(default_factory=list)
    only_osm: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[TileAgreement]:
        return [t for t in self.tiles if t.kept]


def filter_osm_tiles(
    dw_dir: Path, osm_dir: Path, min_accuracy: float = DEFAULT_MIN_ACCURACY
) -> OsmFilterResult:
    """Check every OSM label tile against the DW tile of the same name, searching both folders recursively.

    Tiles pair by file stem after dropping the prefixes the tile reader drops (``dw_12.tif`` pairs
    with ``osm_12.tif``; see docs/data.md).
    """
    if not 0.0 <= min_accuracy <= 1.0:
        raise DataError(f"--min-accuracy must lie in [0, 1], got {min_accuracy}")
    dw_tiles = _tiles_by_name(Path(dw_dir), "DW label")
    osm_tiles = _tiles_by_name(Path(osm_dir), "OSM label")
    common = sorted(dw_tiles.keys() & osm_tiles.keys())
    results = []
    for name in common:
        dw = read_label_tile(dw_tiles[name])
        osm = read_label_tile(osm_tiles[name])
        if dw.shape != osm.shape:
            raise DataError(f"tile {name!r}: DW {dw_tiles[name]} is {dw.shape}, OSM {osm_tiles[name]} is {osm.shape}")
        try:
            acc, n = osm_agreement(dw, osm)
        except DataError as err:
            raise DataError(f"tile {name!r} ({dw_tiles[name]}, {osm_tiles[name]}): {err}") from None
        results.append(TileAgreement(name, acc, n, keep_tile(acc, min_accuracy)))
    return OsmFilterResult(
        results,
        only_dw=sorted(dw_tiles.keys() - osm_tiles.keys()),
        only_osm=sorted(osm_tiles.keys() - dw_tiles.keys()),
    )


def accuracy_histogram(accuracies: Iterable[float], bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts of tile accuracies in ``bins`` equal bins over [0, 1] (NaN skipped): (counts, edges)."""
    values = np.array([a for a in accuracies if not math.isnan(a)], dtype=np.float64)
    return np.histogram(values, bins=bins, range=(0.0, 1.0))


def write_osm_filter_outputs(
    result: OsmFilterResult, out: Path, min_accuracy: float = DEFAULT_MIN_ACCURACY, bins: int = 20
) -> dict[str, Path]:
    """Write ``kept_tiles.csv``, ``all_tiles.csv``, ``accuracy_histogram.{csv,json,png}`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "kept": out / "kept_tiles.csv",
        "all": out / "all_tiles.csv",
        "hist_csv": out / "accuracy_histogram.csv",
        "hist_json": out / "accuracy_histogram.json",
        "hist_png": out / "accuracy_histogram.png",
    }
    for key, rows in (("kept", result.kept), ("all", result.tiles)):
        with paths[key].open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["tile", "accuracy", "n_labelled", "kept"])
            for t in rows:
                writer.writerow([t.tile, "" if math.isnan(t.accuracy) else f"{t.accuracy:.6f}", t.n_labelled,
                                 int(t.kept)])
    counts, edges = accuracy_histogram((t.accuracy for t in result.tiles), bins)
    with paths["hist_csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["bin_low", "bin_high", "count"])
        for lo, hi, c in zip(edges[:-1], edges[1:], counts):
            writer.writerow([f"{lo:.4f}", f"{hi:.4f}", int(c)])
    summary = {
        "rule": f"keep when accuracy > {min_accuracy} (strict); accuracy = TP / N over pixels labelled in both",
        "min_accuracy": min_accuracy,
        "checked": len(result.tiles),
        "kept": len(result.kept),
        "no_labelled_pixels": sum(1 for t in result.tiles if t.n_labelled == 0),
        "only_dw": result.only_dw,
        "only_osm": result.only_osm,
        "bin_edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
    }
    paths["hist_json"].write_text(json.dumps(summary, indent=2))
    _plot_histogram(counts, edges, min_accuracy, paths["hist_png"])
    return paths


def _plot_histogram(counts: np.ndarray, edges: np.ndarray, min_accuracy: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#397D49", edgecolor="white")
    ax.axvline(min_accuracy, color="#C4281B", linestyle="--", label=f"threshold {min_accuracy}")
    ax.set_xlabel("OSM-DW agreement (Table I), TP / N")
    ax.set_ylabel("tiles")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- padding
def pad_array(array: np.ndarray, pad: int = 1, fill: int | float = 0) -> np.ndarray:
    """Pad the last two axes of ``[..., H, W]`` by ``pad`` pixels on every side with ``fill``."""
    if pad < 0:
        raise DataError(f"padding must be >= 0 pixels, got {pad}")
    widths = [(0, 0)] * (array.ndim - 2) + [(pad, pad), (pad, pad)]
    return np.pad(array, widths, mode="constant", constant_values=fill)


def padded_transform(transform, pad: int = 1):
    """Affine transform of a raster padded by ``pad`` pixels: the origin moves ``pad`` pixels up-left.

    Pixel ``(row, col)`` of the padded raster is pixel ``(row - pad, col - pad)`` of the original, so the
    new transform is ``transform @ translation(-pad, -pad)`` (exact for rotated grids too).
    """
    from affine import Affine

    return transform @ Affine.translation(-pad, -pad)


def pad_geotiff(src_path: Path, dst_path: Path, target: int = 512, is_label: bool = False) -> bool:
    """Pad a GeoTIFF symmetrically to ``target`` x ``target``; returns False if it already has that size.

    Fill: 0 for images (the paper's "one-pixel zero values boundary") and 0 = unlabeled for labels
    in the published DW/OSM ids. The padded border is also marked invalid in the GDAL dataset mask of
    image files (so mask-aware readers see it as nodata). The georeference is kept by shifting the
    transform by ``pad`` pixels; CRS, dtype, band descriptions and nodata are copied.
    """
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(src_path) as src:
            data = src.read()
            profile = src.profile.copy()
            descriptions = src.descriptions
            height, width = src.height, src.width
    except RasterioIOError as err:
        raise DataError(f"cannot read GeoTIFF {src_path}: {err}") from None
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    if (height, width) == (target, target):
        dst_path.write_bytes(Path(src_path).read_bytes())
        return False
    pad_h, pad_w = target - height, target - width
    if pad_h != pad_w or pad_h < 0 or pad_h % 2:
        raise DataError(
            f"{src_path} is {height}x{width}: can only pad square tiles symmetrically to {target}x{target}"
        )
    pad = pad_h // 2
    padded = pad_array(data, pad, 0)
    profile.update(height=target, width=target, transform=padded_transform(src.transform, pad))
    if profile.get("tiled") and target % 16:
        profile.update(tiled=False)
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(padded)
        if any(descriptions):
            for i, d in enumerate(descriptions, start=1):
                if d:
                    dst.set_band_description(i, d)
        if not is_label and profile.get("nodata") is None:
            mask = np.zeros((target, target), dtype=np.uint8)
            mask[pad:target - pad, pad:target - pad] = 255
            dst.write_mask(mask)
    return True


def pad_tree(
    src: Path, out: Path, target: int = 512, label_dirs: tuple[str, ...] = ("label", "labels", "dw", "osm")
) -> dict[str, int]:
    """Pad every GeoTIFF under ``src`` into the same relative path under ``out``.

    A file is treated as a label (border 0 = unlabeled, no dataset mask) when one of its folders is in
    ``label_dirs`` or contains ``label`` (``label_true``, ``dw_labels``), or its name contains
    ``label``; otherwise as an image. Returns counts.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"folder to pad not found: {src}")
    if out.resolve() == src.resolve():
        raise DataError(f"--out must differ from the source folder {src} (files are never overwritten in place)")
    counts = {"padded": 0, "copied": 0}
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    if not files:
        raise DataError(f"no GeoTIFF files under {src}")
    for path in files:
        rel = path.relative_to(src)
        folders = [part.lower() for part in rel.parts[:-1]]
        is_label = (any(f in label_dirs or "label" in f for f in folders) or "label" in path.stem.lower())
        if pad_geotiff(path, out / rel, target, is_label=is_label):
            counts["padded"] += 1
        else:
            counts["copied"] += 1
    return counts


# ----------------------------------------------------------------------------- NoL assembly
@dataclass
class NolAssembly:
    """Kept location ids, and every dropped location with its reasons."""

    kept: list[str]
    dropped: dict[str, list[str]]

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for reasons in self.dropped.values():
            for r in reasons:
                key = r.split(":")[0]
                counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def assemble_nol(
    s1_seasons: Mapping[str, int],
    s2_seasons: Mapping[str, int],
    label_seasons: Mapping[str, int],
    num_seasons: int = NUM_SEASONS,
    id_mismatches: Mapping[str, str] | None = None,
) -> NolAssembly:
    """Join image ids with noisy label masks and keep locations complete in all seasons (Sec. II-A).

    Args:
        s1_seasons, s2_seasons, label_seasons: location id -> number of seasons present in that source.
        num_seasons: seasons a location needs in every source (4).
        id_mismatches: location id -> description, for records whose ids disagree across sources.

    Returns:
        :class:`NolAssembly`; reasons are ``missing_s1_season``, ``missing_s2_season``,
        ``missing_label_season`` (``...: k of 4``), ``no_s1``/``no_s2``/``no_label`` and ``id_mismatch``.
    """
    id_mismatches = id_mismatches or {}
    all_ids = sorted(set(s1_seasons) | set(s2_seasons) | set(label_seasons) | set(id_mismatches))
    kept: list[str] = []
    dropped: dict[str, list[str]] = {}
    for loc in all_ids:
        reasons = []
        for name, table in (("s1", s1_seasons), ("s2", s2_seasons), ("label", label_seasons)):
            present = table.get(loc, 0)
            if loc not in table:
                reasons.append(f"no_{name}")
            elif present < num_seasons:
                reasons.append(f"missing_{name}_season: {present} of {num_seasons}")
        if loc in id_mismatches:
            reasons.append(f"id_mismatch: {id_mismatches[loc]}")
        if reasons:
            dropped[loc] = reasons
        else:
            kept.append(loc)
    return NolAssembly(kept, dropped)


def _count_season_dirs(root: Path, band_file: str | None = None) -> dict[str, int]:
    """``root/<id>/<season>/...`` -> {id: number of season folders holding at least one .tif}."""
    counts: dict[str, int] = {}
    if not root.is_dir():
        return counts
    for loc_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        n = sum(1 for season in loc_dir.iterdir() if season.is_dir() and any(season.glob("*.tif")))
        counts[loc_dir.name] = n
    return counts


def _count_label_files(root: Path) -> dict[str, int]:
    """Label masks as ``root/<id>/<season>.tif`` or ``root/<id>/<season>/*.tif`` -> {id: seasons}."""
    counts: dict[str, int] = {}
    if not root.is_dir():
        return counts
    for loc_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [p for p in loc_dir.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff")]
        dirs = [p for p in loc_dir.iterdir() if p.is_dir() and any(p.glob("*.tif"))]
        counts[loc_dir.name] = len(files) + len(dirs)
    return counts


def assemble_nol_tree(
    s1_dir: Path, s2_dir: Path, label_dir: Path, num_seasons: int = NUM_SEASONS
) -> NolAssembly:
    """:func:`assemble_nol` over SSL4EO-S12 GeoTIFF trees ``s1/<id>/<date>/*.tif``, ``s2c/<id>/<date>/*.tif``
    and a label tree ``<id>/<season>.tif`` (or ``<id>/<season>/*.tif``)."""
    for what, path in (("S1", s1_dir), ("S2", s2_dir), ("label", label_dir)):
        if not Path(path).is_dir():
            raise DataError(f"{what} folder not found: {path}")
    return assemble_nol(
        _count_season_dirs(Path(s1_dir)), _count_season_dirs(Path(s2_dir)), _count_label_files(Path(label_dir)),
        num_seasons,
    )


def assemble_nol_lmdb(
    s1_lmdb: Path, s2_lmdb: Path, label_lmdb: Path, num_seasons: int = NUM_SEASONS
) -> NolAssembly:
    """:func:`assemble_nol` over the LMDB layout: the values at index i of the three LMDBs must carry
    the same sample id and ``num_seasons`` seasons (first axis); location ids are the label ids."""
    from cromss.data.readers import LmdbReader

    readers = {"s1": LmdbReader(s1_lmdb), "s2": LmdbReader(s2_lmdb), "label": LmdbReader(label_lmdb)}
    seasons: dict[str, dict[str, int]] = {"s1": {}, "s2": {}, "label": {}}
    mismatches: dict[str, str] = {}
    for index in range(len(readers["label"])):
        label, label_id = readers["label"].get(index)
        seasons["label"][label_id] = int(label.shape[0]) if label.ndim == 3 else 0
        for name in ("s1", "s2"):
            try:
                array, sample_id = readers[name].get(index)
            except DataError:
                continue  # absent key: reported as no_s1 / no_s2
            if sample_id != label_id:
                mismatches[label_id] = f"index {index}: {name} id {sample_id} != label id {label_id}"
                continue
            seasons[name][label_id] = int(array.shape[0]) if array.ndim == 4 else 0
    return assemble_nol(seasons["s1"], seasons["s2"], seasons["label"], num_seasons, mismatches)


def write_assembly_report(result: NolAssembly, out: Path) -> dict[str, Path]:
    """Write ``kept_ids.txt``, ``dropped.csv`` (id, reasons) and ``assembly_report.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"kept": out / "kept_ids.txt", "dropped": out / "dropped.csv", "report": out / "assembly_report.json"}
    paths["kept"].write_text("".join(f"{k}\n" for k in result.kept))
    with paths["dropped"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "reasons"])
        for loc, reasons in result.dropped.items():
            writer.writerow([loc, "; ".join(reasons)])
    report = {
        "kept": len(result.kept),
        "dropped": len(result.dropped),
        "reasons": result.reason_counts(),
        "rule": "keep a location only if S1, S2 and the noisy label exist for all four seasons "
        "and the ids agree (paper Sec. II-A)",
    }
    paths["report"].write_text(json.dumps(report, indent=2))
    return paths
