"""``cromss data inspect``: detect a dataset layout and summarise it (counts, bands, classes, noise).

The summary reports only what it opened: labels and images of the locations examined are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cromss import schema
from cromss.errors import DataError


@dataclass
class Layout:
    """A dataset found on disk."""

    kind: str  # 'nol' | 'dw' | 'osm' | 'dfc2020' | 'generic'
    root: Path
    formats: list[str] = field(default_factory=list)


def _tile_kind(root: Path) -> str:
    """'osm' or 'dw' for a tile layout: by folder name, else by the label values of one tile."""
    name = root.name.lower()
    if "osm" in name:
        return "osm"
    if "dw" in name:
        return "dw"
    from cromss.data.readers import read_geotiff

    first = next(iter(sorted((root / "train" / "label").glob("*.tif"))), None)
    if first is not None and int(read_geotiff(first, allowed_kinds="ui", what="label").data.max()) > 10:
        return "osm"
    return "dw"


def detect_layouts(path: str | Path) -> list[Layout]:
    """Every dataset at ``path`` or in its direct subfolders (e.g. the demo's ``nol/`` and ``dw/``)."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a folder")
    found = []
    from cromss.data.description import DESCRIPTION_FILE

    if (path / DESCRIPTION_FILE).is_file():
        return [Layout("generic", path, ["geotiff"])]
    for root in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (root / DESCRIPTION_FILE).is_file():
            found.append(Layout("generic", root, ["geotiff"]))
            continue
        formats = []
        if any(root.glob("*.lmdb")):
            formats.append("lmdb")
        if (root / "dw_labels").is_dir() and ((root / "s2c").is_dir() or (root / "s1").is_dir()):
            formats.append("geotiff")
        if formats:
            found.append(Layout("nol", root, formats))
        elif (root / "train" / "label").is_dir():
            found.append(Layout(_tile_kind(root), root, ["geotiff"]))
        elif root == path and any(root.rglob("*_dfc_*.tif")):
            found.append(Layout("dfc2020", root, ["geotiff"]))
    if not found:
        raise DataError(
            f"{path}: no known layout (a generic dataset.yaml, SSL4EO-S12@NoL LMDB or GeoTIFF tree, "
            "SSL4EO-S12@DW/OSM tiles, DFC2020)"
        )
    return found


def summarize(layout: Layout, fmt: str, max_samples: int | None = 500) -> dict[str, Any]:
    """Counts, bands, class histogram and (with true labels) the measured noise rate of one layout.

    Every location examined (the first ``max_samples``) is OPENED: its labels and the images of every
    modality and timestamp are read, so a corrupt or missing file is reported in ``problems``; the
    summary says how many locations were not opened.
    """
    if layout.kind == "generic":
        return summarize_generic(layout.root, max_samples)
    from cromss.data.config import DataConfig
    from cromss.data.datasets import NolGeoTiffDataset, NolLmdbDataset, TileDataset, list_tiles

    cfg = DataConfig(kind=layout.kind, root=str(layout.root), format=fmt, crop_size=None, augment=False,
                     eval_seasons="first")
    table = schema.CLASS_TABLES[layout.kind]
    datasets: dict[str, Any] = {}
    if layout.kind == "nol":
        cls = NolLmdbDataset if fmt == "lmdb" else NolGeoTiffDataset
        datasets["all"] = cls(cfg, layout.root, None, train=False)
    else:
        for split in ("train", "test"):
            try:
                datasets[split] = TileDataset(cfg, list_tiles(layout.root, layout.kind, split), train=False)
            except DataError:
                continue
    histogram = np.zeros(table.num_classes + 1, dtype=np.int64)  # last bin: ignore
    wrong = checked = 0
    bands: dict[str, list[str]] = {}
    nodata = _NodataCounter()
    sizes: set[tuple[int, int]] = set()
    problems: list[str] = []
    looked = 0
    total = sum(len(d.locations) for d in datasets.values())
    for dataset in datasets.values():
        for location in range(len(dataset.locations)):
            if max_samples is not None and looked >= max_samples:
                break
            looked += 1
            try:
                labels, true = dataset.read_labels(location)
            except DataError as err:
                problems.append(str(err))
                continue
            sizes.add(tuple(labels.shape[-2:]))
            counts = np.bincount(labels[labels != schema.IGNORE_INDEX].ravel(), minlength=table.num_classes)
            histogram[: table.num_classes] += counts[: table.num_classes]
            histogram[-1] += int((labels == schema.IGNORE_INDEX).sum())
            if true is not None:
                both = (labels != schema.IGNORE_INDEX) & (true != schema.IGNORE_INDEX)
                wrong += int((labels[both] != true[both]).sum())
                checked += int(both.sum())
            _open_images(dataset, location, dataset.modalities, bands, nodata, problems)
    return {
        "kind": layout.kind, "root": str(layout.root), "format": fmt,
        "counts": {split: len(d.locations) for split, d in datasets.items()},
        "seasons": datasets[next(iter(datasets))].num_seasons if datasets else 0,
        "tile_sizes": sorted(sizes), "bands": bands, "classes": list(table.names),
        "histogram": histogram.tolist(), "samples_examined": looked, "samples_total": total,
        "noise_rate": (wrong / checked) if checked else None, "nodata": nodata.fractions(),
        "skipped_incomplete": list(getattr(datasets.get("all"), "skipped", [])), "problems": problems,
    }


class _NodataCounter:
    """Invalid (nodata / non-finite) pixels per modality over the images opened."""

    def __init__(self) -> None:
        self.invalid: dict[str, int] = {}
        self.total: dict[str, int] = {}

    def add(self, modality: str, invalid: np.ndarray) -> None:
        self.invalid[modality] = self.invalid.get(modality, 0) + int(invalid.sum())
        self.total[modality] = self.total.get(modality, 0) + int(invalid.size)

    def fractions(self) -> dict[str, float]:
        return {m: self.invalid[m] / max(1, self.total[m]) for m in self.total}


def _open_images(dataset: Any, location: int, modalities: list[str], bands: dict[str, list[str]],
                 nodata: _NodataCounter, problems: list[str]) -> None:
    """Read every modality of every timestamp of ``location``; record band names, nodata and problems."""
    for season in range(dataset.timestamps(location)):
        for modality in modalities:
            try:
                images = dataset.read_images(location, season, modality)
            except DataError as err:
                problems.append(str(err))
                continue
            names = list(dataset.bands_of(modality))
            if len(names) != images.data.shape[0]:
                names = [f"band{i + 1}" for i in range(images.data.shape[0])]
            previous = bands.setdefault(modality, names)
            if len(previous) != len(names):
                problems.append(f"sample {dataset.sample_id(location)}: {modality} has {len(names)} bands, "
                                f"earlier samples {len(previous)}")
            nodata.add(modality, images.invalid)


def summarize_generic(root: Path, max_samples: int | None = 500) -> dict[str, Any]:
    """The summary of a generic dataset (``dataset.yaml``): splits, timestamps, bands by name, classes
    with the dataset's names, raw label values outside ``label_values`` (ignored), noise vs ``reference``.

    Files of the first ``max_samples`` locations are opened (images: band count, band descriptions,
    grid vs label; labels: raw values); the summary says how many were not.
    """
    from cromss.data.config import DataConfig
    from cromss.data.description import label_nodata_value, load_description, max_timestamps, read_samples
    from cromss.data.generic import GenericDataset
    from cromss.data.readers import read_geotiff

    description = load_description(root)
    locations = read_samples(description)
    cfg = DataConfig(kind="generic", root=str(root), crop_size=None, augment=False, eval_seasons="first")
    dataset = GenericDataset(cfg, description, locations, train=False, num_timestamps=max_timestamps(locations))
    num_classes = description.num_classes
    counts: dict[str, int] = {}
    for loc in locations:
        key = loc.split or "unassigned"
        counts[key] = counts.get(key, 0) + 1
    timestamps: dict[int, int] = {}
    for loc in locations:
        timestamps[len(loc.rows)] = timestamps.get(len(loc.rows), 0) + 1
    histogram = np.zeros(num_classes + 1, dtype=np.int64)
    outside: dict[int, int] = {}
    nodata_labels = 0
    wrong = checked = 0
    bands: dict[str, list[str]] = {}
    nodata = _NodataCounter()
    sizes: set[tuple[int, int]] = set()
    problems: list[str] = []
    looked = 0
    for position, loc in enumerate(locations):
        if max_samples is not None and looked >= max_samples:
            break
        looked += 1
        for row in loc.rows:
            try:
                raster = read_geotiff(row.label, expected_count=1, allowed_kinds="uif", what=f"label of {row.sample_id}")
            except DataError as err:
                problems.append(str(err))
                continue
            raw = raster.data[0]
            finite = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
            # the value read as nodata: the file's, unless label_nodata: keep says it is a class
            # (a nodata that is also a class value without label_nodata is a PROBLEM: read_labels reports it)
            nodata_value = label_nodata_value(raster.nodata, description.label_values, description.label_nodata)
            if nodata_value is not None:
                finite &= raw != nodata_value
            nodata_labels += int((~finite).sum())
            values, value_counts = np.unique(raw[finite].astype(np.int64), return_counts=True)
            for value, count in zip(values.tolist(), value_counts.tolist()):
                class_id = description.label_values.get(value)
                if class_id is None:
                    outside[value] = outside.get(value, 0) + count
                else:
                    histogram[class_id] += count
            sizes.add(tuple(raw.shape))
        try:
            labels, true = dataset.read_labels(position)
        except DataError as err:
            problems.append(str(err))
            continue
        if true is not None:
            labels = labels[: true.shape[0]]
            both = (labels != schema.IGNORE_INDEX) & (true[: labels.shape[0]] != schema.IGNORE_INDEX)
            wrong += int((labels[both] != true[: labels.shape[0]][both]).sum())
            checked += int(both.sum())
        _open_images(dataset, position, list(description.modalities), bands, nodata, problems)
    histogram[-1] = nodata_labels + sum(outside.values())
    return {
        "kind": "generic", "root": str(root), "format": "dataset.yaml + " + description.samples_file.name,
        "name": description.name, "counts": counts, "rows": sum(len(loc.rows) for loc in locations),
        "timestamps": dict(sorted(timestamps.items())), "seasons": max_timestamps(locations),
        "tile_sizes": sorted(sizes), "bands": bands, "declared_bands": {m: list(b) for m, b in description.modalities.items()},
        "classes": list(description.classes.names), "label_values": dict(description.label_values),
        "histogram": histogram.tolist(), "outside_values": dict(sorted(outside.items())),
        "label_nodata": nodata_labels, "samples_examined": looked, "samples_total": len(locations),
        "noise_rate": (wrong / checked) if checked else None, "nodata": nodata.fractions(),
        "stats": {m: (str(p) if (p := description.stats_path(m)) else None) for m in description.modalities},
        "skipped_incomplete": [], "problems": problems,
    }


def format_summary(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`."""
    lines = [f"{info['kind']} dataset ({info['format']} layout) at {info['root']}"]
    counts = ", ".join(f"{split}: {n}" for split, n in info["counts"].items())
    if info["kind"] == "generic":
        lines.append(f"  locations    {counts}  ({info['rows']} rows)")
        per = ", ".join(f"{n} location(s) with {t}" for t, n in info["timestamps"].items())
        lines.append(f"  timestamps   {per}")
    else:
        lines.append(f"  samples      {counts}  (seasons per sample: {info['seasons']})")
    if info["skipped_incomplete"]:
        lines.append(f"  skipped      {len(info['skipped_incomplete'])} ids without all 4 seasons")
    examined, total = info["samples_examined"], info["samples_total"]
    opened = f"opened the labels and images of {examined} of {total} locations (every timestamp)"
    if examined < total:
        opened += f"; {total - examined} NOT opened (raise --max-samples to check them)"
    lines.append(f"  checked      {opened}")
    lines.append(f"  tile size    {', '.join(f'{h}x{w}' for h, w in info['tile_sizes'])}")
    for modality, names in info["bands"].items():
        lines.append(f"  bands {modality:<6s} {len(names)}: {', '.join(names)}")
    for modality in info.get("declared_bands", {}):
        if modality not in info["bands"]:
            lines.append(f"  bands {modality:<6s} (no file of it could be opened)")
    if info.get("nodata"):
        lines.append("  nodata       " + ", ".join(f"{m}: {100 * f:.1f} %" for m, f in info["nodata"].items())
                     + " of the pixels opened")
    total_px = max(1, sum(info["histogram"]))
    lines.append(f"  classes      {len(info['classes'])} (histogram over {examined} samples)")
    ignore_name = "<ignored: outside label_values / nodata>" if info["kind"] == "generic" else f"<ignore {schema.IGNORE_INDEX}>"
    for name, count in zip([*info["classes"], ignore_name], info["histogram"]):
        lines.append(f"    {name:<42s}{count:>12d}  {100 * count / total_px:5.1f} %")
    if info.get("outside_values"):
        shown = ", ".join(f"{v}: {n}" for v, n in list(info["outside_values"].items())[:10])
        more = len(info["outside_values"]) - 10
        lines.append(f"  ignored      raw label values outside label_values {shown}"
                     + (f" (+{more} more values)" if more > 0 else "") + " pixels")
    if info.get("label_nodata"):
        lines.append(f"  ignored      {info['label_nodata']} label pixels are the label file's nodata")
    if info["noise_rate"] is not None:
        truth = "reference" if info["kind"] == "generic" else "true labels"
        lines.append(f"  noise rate   {100 * info['noise_rate']:.1f} % of labeled pixels differ from the {truth}")
    if info.get("stats") is not None:
        missing = [m for m, p in info["stats"].items() if p is None]
        found = ", ".join(f"{m}: {p}" for m, p in info["stats"].items() if p is not None)
        lines.append("  statistics   " + (found or "none")
                     + (f"; missing for {missing}: run `cromss data stats {info['root']}`" if missing else ""))
    if info["problems"]:
        lines.append(f"  PROBLEMS     {len(info['problems'])} file(s) could not be used; first: {info['problems'][0]}")
    return "\n".join(lines)
