"""The generic layout (``data.kind: generic``): ``dataset.yaml`` + ``samples.csv``, any sensors and classes.

Each row of the sample table is one timestamp of one location: one GeoTIFF per modality (bands in the
order ``dataset.yaml`` lists them, any dtype), one single-band label GeoTIFF of raw label values and an
optional ``reference`` label. All files of a row must share their grid (same size and transform).
Raw label values map to class ids through ``label_values``; every other value, and the label file's
nodata value, is ignored. Image nodata (the file's, or ``nodata:`` in dataset.yaml) is masked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cromss import bands as band_ids
from cromss import schema
from cromss.data.config import DataConfig
from cromss.data.core import SegmentationDataset, _Images
from cromss.data.description import (
    DatasetDescription,
    Location,
    label_nodata_conflict,
    label_nodata_value,
    load_description,
    max_timestamps,
    read_samples,
    split_locations,
)
from cromss.data.readers import LabelMap, invalid_pixels, read_geotiff
from cromss.errors import DataError


def description_label_map(description: DatasetDescription) -> LabelMap:
    """The :class:`LabelMap` of a description (unknown values ignored for generic datasets)."""
    return LabelMap(f"label_values of {description.name}", dict(description.label_values),
                    tuple(description.ignore_values), ignore_unknown=description.ignore_unknown)


def _grid_text(raster: Any) -> str:
    t = raster.transform
    return (f"{raster.data.shape[-2]}x{raster.data.shape[-1]} px, origin ({t.c:.6g}, {t.f:.6g}), "
            f"pixel ({t.a:.6g}, {t.e:.6g}), {raster.crs}")


def same_grid(a: Any, b: Any) -> bool:
    """True when two rasters have the same size, CRS and (nearly) the same transform."""
    if a.data.shape[-2:] != b.data.shape[-2:]:
        return False
    if (a.crs is None) != (b.crs is None) or (a.crs is not None and a.crs != b.crs):
        return False
    return a.transform.almost_equals(b.transform, precision=1e-9 * max(1.0, abs(a.transform.a)))


def check_band_descriptions(raster: Any, declared: tuple[str, ...], what: str, modality: str | None = None) -> None:
    """Refuse a file whose band descriptions contradict the declared bands
    (:func:`cromss.bands.description_conflict`: ``B02, B01`` for declared ``B1, B2`` is refused)."""
    problem = band_ids.description_conflict(raster.descriptions, declared, modality)
    if problem:
        raise DataError(f"{what} {raster.path}: {problem}; reorder the file or the band list")


class GenericDataset(SegmentationDataset):
    """Locations of a generic dataset; ``labels_all_seasons`` is padded to the most timestamps of any location."""

    variable_timestamps = True

    def __init__(self, cfg: DataConfig, description: DatasetDescription, locations: list[Location],
                 train: bool, num_timestamps: int | None = None) -> None:
        self.num_seasons = num_timestamps or max_timestamps(locations)
        self.label_map = description_label_map(description)
        self._label_grids: dict[Path, Any] = {}
        super().__init__(cfg, locations, train, description)
        self.has_true_labels = any(row.reference is not None for loc in locations for row in loc.rows)

    @property
    def modalities(self) -> list[str]:
        assert self.description is not None
        return list(self.cfg.modalities or self.description.modalities)

    def timestamps(self, location: int) -> int:
        return len(self.locations[location].rows)

    def sample_id(self, location: int) -> str:
        return self.locations[location].name

    def read_images(self, location: int, season: int, modality: str) -> _Images:
        assert self.description is not None
        row = self.locations[location].rows[season]
        path = row.images[modality]
        declared = self.description.bands(modality)
        what = f"{modality} image of sample {row.sample_id}"
        raster = read_geotiff(path, expected_count=len(declared), what=what)
        check_band_descriptions(raster, declared, what, modality)
        grid = self._label_grids.get(row.label)
        if grid is not None and not same_grid(raster, grid):
            raise DataError(
                f"sample {row.sample_id} (row {row.row}): {modality} {path} lies on another grid than its "
                f"label {row.label}: {_grid_text(raster)} vs {_grid_text(grid)}"
            )
        wanted = self.bands_of(modality)
        if tuple(wanted) != declared:
            data = raster.data[band_ids.pick(declared, wanted, modality)]
        else:
            data = raster.data
        rule = self.description.nodata_rule(modality)
        nodata = rule.value if rule.value is not None else raster.nodata
        return _Images(data, invalid_pixels(data, nodata, any_band=rule.rule == "any"), prescaled=False)

    def _read_label(self, path: Path, sample: str, what: str = "label") -> np.ndarray:
        """Class ids ``[H, W]`` of a label (or reference) file; its georeference is kept for grid checks."""
        raster = read_geotiff(path, expected_count=1, allowed_kinds="uif", what=f"{what} of sample {sample}")
        raw = raster.data[0]
        description = self.description
        assert description is not None
        problem = label_nodata_conflict(raster.nodata, description.label_values, description.classes.names,
                                        description.label_nodata, path, f"{what} of sample {sample}")
        if problem:
            raise DataError(problem)
        nodata = label_nodata_value(raster.nodata, description.label_values, description.label_nodata)
        ignore = np.zeros(raw.shape, dtype=bool)
        if raw.dtype.kind == "f":
            ignore = ~np.isfinite(raw)
            finite = np.where(ignore, 0, raw)
            if not np.array_equal(finite, np.round(finite)):
                raise DataError(f"{what} of sample {sample} {path}: float values that are not whole numbers")
            raw = finite.astype(np.int64)
        if nodata is not None:
            ignore |= raw == nodata
        labels = self.label_map.apply(raw, path)
        labels[ignore] = schema.IGNORE_INDEX
        # only the georeference is kept for the grid check of the images (no pixels)
        raster.data = np.broadcast_to(np.zeros((), dtype=np.uint8), (1, *raw.shape))
        self._label_grids[path] = raster
        if len(self._label_grids) > 64:  # keep the cache small in long-running workers
            self._label_grids.pop(next(iter(self._label_grids)))
        return labels

    def _read_reference(self, row: Any, label_grid: Any) -> np.ndarray:
        """The reference label of ``row``, checked like an image: on its label's grid (size, CRS, transform)."""
        reference = self._read_label(row.reference, row.sample_id, what="reference")
        grid = self._label_grids[row.reference]
        if not same_grid(grid, label_grid):
            raise DataError(
                f"sample {row.sample_id} (row {row.row}): reference {row.reference} lies on another grid than "
                f"its label {row.label}: {_grid_text(grid)} vs {_grid_text(label_grid)}"
            )
        return reference

    def read_labels(self, location: int) -> tuple[np.ndarray, np.ndarray | None]:
        loc = self.locations[location]
        labels, grids = [], []
        for row in loc.rows:
            labels.append(self._read_label(row.label, row.sample_id))
            grids.append(self._label_grids[row.label])
        shapes = {label.shape for label in labels}
        if len(shapes) != 1:
            raise DataError(f"location {loc.name}: its label files differ in size {sorted(shapes)}")
        true = None
        if self.has_true_labels:
            true_list = [
                self._read_reference(row, grid) if row.reference is not None
                else np.full(labels[0].shape, schema.IGNORE_INDEX, dtype=np.int64)
                for row, grid in zip(loc.rows, grids, strict=True)
            ]
            true = self._pad(np.stack(true_list))
        return np.stack(labels), true


def check_headers(description: DatasetDescription, locations: list[Location]) -> None:
    """Open every file of ``locations`` (headers only, no pixels): band counts and band descriptions as
    declared, one label band, the label's nodata not also a class value unless ``label_nodata`` says which,
    every modality AND the reference label on the label's grid. Bad input is found before a run writes
    anything."""
    import rasterio
    from rasterio.errors import RasterioError

    for location in locations:
        for row in location.rows:
            grids = {}
            files = [("label", row.label), *(([("reference", row.reference)]) if row.reference else []),
                     *row.images.items()]
            for what, path in files:
                where = f"sample {row.sample_id} (row {row.row}): {what} {path}"
                try:
                    with rasterio.open(path) as src:
                        count, shape, crs, transform = src.count, (src.height, src.width), src.crs, src.transform
                        nodata, descriptions = src.nodata, src.descriptions
                except (RasterioError, OSError) as err:
                    raise DataError(f"{where} cannot be read as GeoTIFF: {err}") from None
                is_label = what in ("label", "reference")
                expected = 1 if is_label else len(description.bands(what))
                if count != expected:
                    raise DataError(
                        f"{where} has {count} band(s), expected {expected}"
                        + ("" if is_label else f" ({', '.join(description.bands(what))})")
                    )
                if is_label:
                    problem = label_nodata_conflict(nodata, description.label_values, description.classes.names,
                                                    description.label_nodata, path, f"{what} of sample {row.sample_id}")
                else:
                    problem = band_ids.description_conflict(descriptions, description.bands(what), what)
                    problem = f"{where}: {problem}; reorder the file or the band list" if problem else None
                if problem:
                    raise DataError(problem)
                grids[what] = (shape, crs, transform, path)
            label_shape, label_crs, label_transform, _ = grids.pop("label")
            for what, (shape, crs, transform, path) in grids.items():
                if shape != label_shape or crs != label_crs or not transform.almost_equals(label_transform):
                    raise DataError(
                        f"sample {row.sample_id} (row {row.row}): {what} {path} lies on another grid than its "
                        f"label {row.label}: {shape[0]}x{shape[1]} px, {tuple(transform)[:6]}, {crs} vs "
                        f"{label_shape[0]}x{label_shape[1]} px, {tuple(label_transform)[:6]}, {label_crs}"
                    )


def build_generic_dataset(cfg: DataConfig, split: str, train: bool) -> GenericDataset:
    """The ``split`` of the generic dataset at ``cfg.root`` (validation drawn by location when not declared)."""
    description = load_description(cfg.root)
    unknown = [m for m in (cfg.modalities or []) if m not in description.modalities]
    if unknown:
        raise DataError(
            f"data.modalities: {unknown[0]!r} is not a modality of {description.root}/dataset.yaml "
            f"(it has {list(description.modalities)})"
        )
    locations = read_samples(description)
    chosen = split_locations(locations, split, cfg.val_fraction, cfg.seed)
    if not chosen:
        raise DataError(f"{description.samples_file}: no rows of split '{split}'")
    check_headers(description, chosen)
    return GenericDataset(cfg, description, chosen, train, max_timestamps(locations))
