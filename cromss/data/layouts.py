"""The built-in layouts: they only enumerate their files and read raw values; the core does the rest.

* :class:`NolLmdbDataset` - SSL4EO-S12 uint8 LMDBs + ``dw_labels.lmdb`` (pretraining).
* :class:`NolGeoTiffDataset` - SSL4EO-S12 GeoTIFF tree ``<id>/<season>/<band>.tif`` + NoL masks.
* :class:`TileDataset` - downstream SSL4EO-S12@DW / @OSM tiles and DFC2020 patches.

Band and class tables come from :func:`cromss.data.description.builtin_description`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cromss import schema
from cromss.data.config import DataConfig
from cromss.data.core import SegmentationDataset, _Images
from cromss.data.description import builtin_description
from cromss.data.generic import build_generic_dataset
from cromss.data.readers import (
    LABEL_MAPS,
    NOL_LABELS,
    LmdbReader,
    invalid_pixels,
    raster_shape,
    read_geotiff,
    read_label_geotiff,
    season_sort_key,
)
from cromss.data.splits import split_indices
from cromss.errors import DataError

#: File names of the SSL4EO-S12 / NoL LMDB release (the image names carry "s1" / "s2c").
LMDB_NAMES: dict[str, str] = {
    "s1": "0k_251k_uint8_s1.lmdb",
    "s2": "0k_251k_uint8_s2c.lmdb",
    "label": "dw_labels.lmdb",
    "label_true": "dw_labels_true.lmdb",
}
#: Folder names of the SSL4EO-S12 GeoTIFF tree and of the NoL label masks.
TREE_DIRS: dict[str, str] = {"s1": "s1", "s2": "s2c", "label": "dw_labels", "label_true": "dw_labels_true"}
#: Folders of the downstream tile layout ``<root>/<split>/<dir>/<name>.tif``.
TILE_DIRS: dict[str, str] = {"s1": "s1", "s2": "s2", "label": "label", "label_true": "label_true"}
LOGGER = logging.getLogger("cromss.data")
_WARNED: set[str] = set()


def warn_dropped(message: str) -> None:
    """One warning line (``cromss: warning: ...``) per distinct message and process.

    Dropped tiles and locations are counted in one line, not one per file; the train and val datasets
    of a run scan the same folder, so the same line is not repeated.
    """
    if message in _WARNED:
        return
    _WARNED.add(message)
    LOGGER.warning("cromss: warning: %s", message)


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


#: Prefixes stripped from tile file stems so that s1_12.tif, s2_12.tif and dw_12.tif pair up.
_TILE_PREFIXES: tuple[str, ...] = ("s1_", "s2_", "dw_", "osm_", "label_", "lbl_")


def s2_band_indices(num_bands: int) -> tuple[int, ...]:
    """Indices into the 13 stored S2 bands of the 13- or 9-band input."""
    return tuple(range(13)) if num_bands == 13 else schema.S2_9BAND_INDICES


def resolve_root(cfg: DataConfig) -> Path:
    """The dataset folder; a folder holding ``nol/`` / ``dw/`` (the demo) is stepped into."""
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {root} does not exist")
    sub = root / cfg.kind
    if sub.is_dir() and not any(root.glob("*.lmdb")) and not (root / "train").is_dir():
        return sub
    return root


def detect_format(root: Path) -> str:
    """'lmdb' when ``root`` holds ``*.lmdb``, 'geotiff' when it holds the ``s2c``/``s1`` tree."""
    if any(root.glob("*.lmdb")):
        return "lmdb"
    if (root / TREE_DIRS["s2"]).is_dir() or (root / TREE_DIRS["s1"]).is_dir():
        return "geotiff"
    raise DataError(
        f"{root}: no pretraining layout found (neither *.lmdb files nor the s1/ s2c/ GeoTIFF tree)"
    )


# ----------------------------------------------------------------------------- NoL, LMDB
class NolLmdbDataset(SegmentationDataset):
    """SSL4EO-S12@NoL from the released LMDBs (uint8 images, shape (4, C, H, W); labels (4, H, W))."""

    num_seasons = schema.NUM_SEASONS
    prescaled = True

    def __init__(self, cfg: DataConfig, root: Path, indices: list[int] | None, train: bool) -> None:
        self.root = root
        self._cache_index: int | None = None
        self._cache: tuple[np.ndarray, str] = (np.zeros(0, np.uint8), "")
        self.readers: dict[str, LmdbReader] = {}
        for key in ["label", *(cfg.modalities or ["s1", "s2"])]:
            self.readers[key] = LmdbReader(self._find(root, key))
        true_path = root / LMDB_NAMES["label_true"]
        if true_path.exists():
            self.readers["label_true"] = LmdbReader(true_path)
        total = len(self.readers["label"])
        for reader in self.readers.values():
            if len(reader) < total:
                raise DataError(f"LMDB {reader.path} has {len(reader)} entries, fewer than the {total} labels")
        super().__init__(cfg, list(range(total)) if indices is None else indices, train,
                         builtin_description(cfg.kind, cfg.s2_bands, root))
        self.has_true_labels = "label_true" in self.readers
        self._band_index = list(s2_band_indices(cfg.s2_bands))

    @staticmethod
    def _find(root: Path, key: str) -> Path:
        path = root / LMDB_NAMES[key]
        if path.exists():
            return path
        suffix = {"s1": "_s1.lmdb", "s2": "_s2c.lmdb", "label": "labels.lmdb"}[key]
        found = sorted(p for p in root.glob(f"*{suffix}") if "true" not in p.name)
        if len(found) == 1:
            return found[0]
        raise DataError(f"{root}: LMDB {LMDB_NAMES[key]} not found (needed for {key})")

    def _label(self, index: int) -> tuple[np.ndarray, str]:
        # the label value is needed for the id check of every modality: read it once per index
        if self._cache_index != index:
            self._cache = self.readers["label"].get(index)
            self._cache_index = index
        return self._cache

    def _get(self, key: str, location: int) -> tuple[np.ndarray, str]:
        index = self.locations[location]
        if key == "label":
            return self._label(index)
        array, sample_id = self.readers[key].get(index)
        label_id = self._label(index)[1]
        if sample_id != label_id:
            raise DataError(
                f"LMDB index {index}: {key} sample id {sample_id!r} differs from label id {label_id!r} "
                f"({self.readers[key].path} vs {self.readers['label'].path})"
            )
        return array, sample_id

    def sample_id(self, location: int) -> str:
        return self._label(self.locations[location])[1]

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        array, sample_id = self._get(modality, location)
        channels = 2 if modality == "s1" else 13
        if array.ndim != 4 or array.shape[0] != self.num_seasons or array.shape[1] != channels:
            raise DataError(
                f"LMDB {self.readers[modality].path} key '{self.locations[location]}' (id {sample_id}): "
                f"shape {array.shape}, expected ({self.num_seasons}, {channels}, H, W)"
            )
        data = array[season] if modality == "s1" else array[season][self._band_index]
        return _Images(data, np.zeros(data.shape[-2:], dtype=bool), prescaled=True)

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        index = self.locations[location]
        out = []
        for key in ("label", "label_true"):
            if key not in self.readers:
                out.append(None)
                continue
            array, sample_id = self._get(key, location)
            if array.ndim != 3 or array.shape[0] != self.num_seasons:
                raise DataError(
                    f"LMDB {self.readers[key].path} key '{index}' (id {sample_id}): label shape "
                    f"{array.shape}, expected ({self.num_seasons}, H, W)"
                )
            out.append(NOL_LABELS.apply(array, f"{self.readers[key].path} key '{index}'"))
        return out[0], out[1]


# ----------------------------------------------------------------------------- NoL, GeoTIFF tree
class NolGeoTiffDataset(SegmentationDataset):
    """SSL4EO-S12@NoL from the GeoTIFF tree (raw values, one file per band and season).

    ``s1/<id>/<season>/{VV,VH}.tif``, ``s2c/<id>/<season>/B1.tif .. B12.tif``,
    ``dw_labels/<id>/<season>.tif`` (optional ``dw_labels_true/``); seasons sorted by date.
    Only ids with 4 seasons in every needed folder are used.
    """

    num_seasons = schema.NUM_SEASONS

    def __init__(self, cfg: DataConfig, root: Path, indices: list[int] | None, train: bool) -> None:
        self.root = root
        self.skipped: list[str] = []
        self.ids = self.complete_ids(root, cfg.modalities or ["s1", "s2"], self.skipped)
        if self.skipped:
            warn_dropped(
                f"{len(self.skipped)} of {len(self.skipped) + len(self.ids)} locations of {root} skipped: they lack "
                f"one of the {self.num_seasons} seasons of {'/'.join(cfg.modalities or ['s1', 's2'])} or of the "
                f"labels ({_examples(self.skipped)})"
            )
        if not self.ids:
            raise DataError(f"{root}: no location has all {self.num_seasons} seasons of {cfg.modalities} and labels")
        super().__init__(cfg, list(range(len(self.ids))) if indices is None else indices, train,
                         builtin_description(cfg.kind, cfg.s2_bands, root))
        self.has_true_labels = (root / TREE_DIRS["label_true"]).is_dir()
        self.s2_names = schema.s2_band_names(cfg.s2_bands)

    @classmethod
    def complete_ids(cls, root: Path, modalities: list[str], skipped: list[str] | None = None) -> list[str]:
        """Sorted ids with 4 season folders per modality and 4 label files."""
        label_dir = root / TREE_DIRS["label"]
        if not label_dir.is_dir():
            raise DataError(f"{root}: label folder {TREE_DIRS['label']}/ not found")
        ids = []
        for folder in sorted(p for p in label_dir.iterdir() if p.is_dir()):
            sample_id = folder.name
            complete = len(list(folder.glob("*.tif"))) == cls.num_seasons
            for modality in modalities:
                mod_dir = root / TREE_DIRS[modality] / sample_id
                seasons = [p for p in mod_dir.iterdir() if p.is_dir()] if mod_dir.is_dir() else []
                complete &= len(seasons) == cls.num_seasons
            if complete:
                ids.append(sample_id)
            elif skipped is not None:
                skipped.append(sample_id)
        if skipped is not None:  # ids with images but no label folder at all are dropped too
            labelled = {p.name for p in label_dir.iterdir() if p.is_dir()}
            for modality in modalities:
                folder = root / TREE_DIRS[modality]
                if folder.is_dir():
                    skipped.extend(p.name for p in sorted(folder.iterdir())
                                   if p.is_dir() and p.name not in labelled and p.name not in skipped)
        return ids

    def sample_id(self, location: int) -> str:
        return self.ids[self.locations[location]]

    def _season_dirs(self, modality: str, sample_id: str) -> list[Path]:
        folder = self.root / TREE_DIRS[modality] / sample_id
        dirs = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: season_sort_key(p.name))
        if len(dirs) != self.num_seasons:
            raise DataError(f"{folder}: {len(dirs)} season folders, expected {self.num_seasons}")
        return dirs

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        sample_id = self.sample_id(location)
        folder = self._season_dirs(modality, sample_id)[season]
        names = schema.S1_BANDS if modality == "s1" else self.s2_names
        what = "Sentinel-1 band" if modality == "s1" else "Sentinel-2 band"
        kinds = "f" if modality == "s1" else "uif"
        target = self._label_shape(sample_id)
        bands, nodatas = [], set()
        for name in names:
            path = folder / f"{name}.tif"
            if not path.is_file():
                raise DataError(f"{what} {name} missing: {path}")
            raster = read_geotiff(path, expected_count=1, allowed_kinds=kinds, what=what, out_shape=target)
            bands.append(raster.data[0])
            nodatas.add(raster.nodata)
        stack = np.stack(bands)
        # one shared nodata value is a fill value; mixed per-band values are ignored
        nodata = next(iter(nodatas)) if len(nodatas) == 1 else None
        invalid = invalid_pixels(stack, nodata, any_band=modality == "s1")
        return _Images(stack, invalid, prescaled=False)

    def _label_files(self, key: str, sample_id: str) -> list[Path]:
        folder = self.root / TREE_DIRS[key] / sample_id
        files = sorted(folder.glob("*.tif"), key=lambda p: season_sort_key(p.name))
        if len(files) != self.num_seasons:
            raise DataError(f"{folder}: {len(files)} label files, expected {self.num_seasons}")
        return files

    def _label_shape(self, sample_id: str) -> tuple[int, int]:
        return raster_shape(self._label_files("label", sample_id)[0], "label")

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        sample_id = self.sample_id(location)
        out: list[np.ndarray | None] = []
        for key in ("label", "label_true"):
            if key == "label_true" and not self.has_true_labels:
                out.append(None)
                continue
            files = self._label_files(key, sample_id)
            seasons = [read_label_geotiff(p, NOL_LABELS).data[0] for p in files]
            shapes = [season.shape for season in seasons]
            common = max(shapes, key=shapes.count)  # the grid of most seasons: the odd file is named
            for path, shape in zip(files, shapes):
                if shape != common:
                    other = files[shapes.index(common)].name
                    raise DataError(
                        f"label {path} is {shape[0]}x{shape[1]} px, the label {other} of {sample_id} in "
                        f"{TREE_DIRS[key]}/ is {common[0]}x{common[1]}"
                    )
            out.append(np.stack(seasons))
        return out[0], out[1]


# ----------------------------------------------------------------------------- downstream tiles
def _tile_key(stem: str) -> str:
    for prefix in _TILE_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


@dataclass
class Tile:
    """Files of one downstream tile."""

    name: str
    s1: Path | None
    s2: Path | None
    label: Path
    label_true: Path | None = None


def list_tiles(root: Path, kind: str, split: str) -> list[Tile]:
    """Tiles of ``split`` ('train' | 'test') of a downstream layout, sorted by name.

    DW/OSM: ``<root>/<split>/{s1,s2,label}/<name>.tif``. DFC2020 (SEN12MS-style names):
    files ``*_dfc_*.tif`` under a folder whose name contains 'validation' (= our train split, as
    the paper) or 'test'; their S1/S2 partners replace ``dfc`` by ``s1`` / ``s2`` in folder and name.
    """
    if kind == "dfc2020":
        marker = "validation" if split == "train" else "test"
        tiles = []
        for label in sorted(root.rglob("*_dfc_*.tif")):
            if marker not in str(label.relative_to(root)):
                continue
            parts = {}
            for mod in ("s1", "s2"):
                parent = label.parent.parent / label.parent.name.replace("dfc", mod)
                parts[mod] = parent / label.name.replace("_dfc_", f"_{mod}_")
            tiles.append(Tile(label.stem.replace("_dfc_", "_"), parts["s1"], parts["s2"], label))
        if not tiles:
            raise DataError(f"{root}: no DFC2020 '*_dfc_*.tif' label files under a '{marker}' folder")
        return tiles
    split_dir = root / split
    label_dir = split_dir / TILE_DIRS["label"]
    if not label_dir.is_dir():
        raise DataError(f"{root}: split folder {split}/{TILE_DIRS['label']}/ not found")
    found: dict[str, dict[str, Path]] = {}
    for key, dirname in TILE_DIRS.items():
        folder = split_dir / dirname
        if folder.is_dir():
            for path in folder.glob("*.tif"):
                found.setdefault(_tile_key(path.stem), {})[key] = path
    tiles = [
        Tile(name, files.get("s1"), files.get("s2"), files["label"], files.get("label_true"))
        for name, files in sorted(found.items()) if "label" in files
    ]
    if not tiles:
        raise DataError(f"{label_dir}: no label GeoTIFFs")
    unlabelled = sorted(name for name, files in found.items() if "label" not in files)
    if unlabelled:
        warn_dropped(
            f"{len(unlabelled)} of {len(found)} tiles of {split_dir} skipped: no label file in "
            f"{TILE_DIRS['label']}/ ({_examples(unlabelled)})"
        )
    return tiles


class TileDataset(SegmentationDataset):
    """Downstream single-date tiles (SSL4EO-S12@DW / @OSM, DFC2020); ``labels_all_seasons`` is [1, H, W]."""

    num_seasons = 1

    def __init__(self, cfg: DataConfig, tiles: list[Tile], train: bool) -> None:
        self.tiles = tiles
        self.label_map = LABEL_MAPS[cfg.kind]
        super().__init__(cfg, list(range(len(tiles))), train, builtin_description(cfg.kind, cfg.s2_bands))
        self.has_true_labels = any(t.label_true is not None for t in tiles)

    def sample_id(self, location: int) -> str:
        return self.tiles[self.locations[location]].name

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        tile = self.tiles[self.locations[location]]
        path = tile.s1 if modality == "s1" else tile.s2
        what = "Sentinel-1 image" if modality == "s1" else "Sentinel-2 image"
        if path is None or not path.is_file():
            raise DataError(f"tile {tile.name}: {what} file missing ({path or TILE_DIRS[modality] + '/'})")
        if modality == "s1":
            raster = read_geotiff(path, expected_count=2, allowed_kinds="f", what=what)
            return _Images(raster.data, invalid_pixels(raster.data, raster.nodata, any_band=True), False)
        counts = (13, 9) if self.cfg.s2_bands == 9 else (13,)
        raster = read_geotiff(path, expected_count=counts, allowed_kinds="uif", what=what)
        data = raster.data
        if data.shape[0] == 13 and self.cfg.s2_bands == 9:
            data = data[list(schema.S2_9BAND_INDICES)]
        return _Images(data, invalid_pixels(data, raster.nodata, any_band=False), False)

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        tile = self.tiles[self.locations[location]]
        label = read_label_geotiff(tile.label, self.label_map).data
        true = None
        if self.has_true_labels:
            if tile.label_true is None:
                true = np.full_like(label, schema.IGNORE_INDEX)
            else:
                true = read_label_geotiff(tile.label_true, self.label_map).data
        return label, true


def build_layout_dataset(cfg: DataConfig, split: str, train: bool, compact: bool = False) -> SegmentationDataset:
    """The dataset of ``split`` of a FILE layout (built-in or generic; not a stream): the part of
    :func:`cromss.data.datasets.build_dataset` that the stream converter reads from."""
    dataset = _build_layout(cfg, split, train)
    dataset.compact = compact
    return dataset


def _build_layout(cfg: DataConfig, split: str, train: bool) -> SegmentationDataset:
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
    cfg.validate()
    if cfg.kind == "generic":
        return build_generic_dataset(cfg, split, train)
    root = resolve_root(cfg)
    if cfg.kind == "nol":
        if split == "test":
            raise DataError("the pretraining set 'nol' has no test split (use 'train' or 'val')")
        fmt = detect_format(root) if cfg.format == "auto" else cfg.format
        cls = NolLmdbDataset if fmt == "lmdb" else NolGeoTiffDataset
        full = cls(cfg, root, None, train)
        train_idx, val_idx = split_indices(len(full.locations), cfg.val_fraction, cfg.seed)
        return full.with_locations(train_idx if split == "train" else val_idx)
    if split == "test":
        return TileDataset(cfg, list_tiles(root, cfg.kind, "test"), train)
    tiles = list_tiles(root, cfg.kind, "train")
    train_idx, val_idx = split_indices(len(tiles), cfg.val_fraction, cfg.seed)
    return TileDataset(cfg, [tiles[i] for i in (train_idx if split == "train" else val_idx)], train)
