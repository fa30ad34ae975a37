"""``cromss data inspect``: detect a dataset layout and summarise it (counts, bands, classes, noise)."""

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

    kind: str  # 'nol' | 'dw' | 'osm' | 'dfc2020'
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
    for root in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
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
            f"{path}: no known layout (SSL4EO-S12@NoL LMDB or GeoTIFF tree, SSL4EO-S12@DW/OSM tiles, DFC2020)"
        )
    return found


def summarize(layout: Layout, fmt: str, max_samples: int | None = 500) -> dict[str, Any]:
    """Counts, bands, class histogram and (with true labels) the measured noise rate of one layout."""
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
    bands: dict[str, int] = {}
    sizes: set[tuple[int, int]] = set()
    looked = 0
    for dataset in datasets.values():
        for location in range(len(dataset.locations)):
            if max_samples is not None and looked >= max_samples:
                break
            labels, true = dataset.read_labels(location)
            sizes.add(tuple(labels.shape[-2:]))
            counts = np.bincount(labels[labels != schema.IGNORE_INDEX].ravel(), minlength=table.num_classes)
            histogram[: table.num_classes] += counts[: table.num_classes]
            histogram[-1] += int((labels == schema.IGNORE_INDEX).sum())
            if true is not None:
                both = (labels != schema.IGNORE_INDEX) & (true != schema.IGNORE_INDEX)
                wrong += int((labels[both] != true[both]).sum())
                checked += int(both.sum())
            if not bands:
                for modality in ("s1", "s2"):
                    try:
                        bands[modality] = int(dataset.read_images(location, 0, modality).data.shape[0])
                    except DataError:
                        pass
            looked += 1
    return {
        "kind": layout.kind, "root": str(layout.root), "format": fmt,
        "counts": {split: len(d.locations) for split, d in datasets.items()},
        "seasons": datasets[next(iter(datasets))].num_seasons if datasets else 0,
        "tile_sizes": sorted(sizes), "bands": bands, "classes": list(table.names),
        "histogram": histogram.tolist(), "samples_examined": looked,
        "noise_rate": (wrong / checked) if checked else None,
        "skipped_incomplete": list(getattr(datasets.get("all"), "skipped", [])),
    }


def format_summary(info: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`."""
    lines = [f"{info['kind']} dataset ({info['format']} layout) at {info['root']}"]
    counts = ", ".join(f"{split}: {n}" for split, n in info["counts"].items())
    lines.append(f"  samples      {counts}  (seasons per sample: {info['seasons']})")
    if info["skipped_incomplete"]:
        lines.append(f"  skipped      {len(info['skipped_incomplete'])} ids without all 4 seasons")
    lines.append(f"  tile size    {', '.join(f'{h}x{w}' for h, w in info['tile_sizes'])}")
    band_text = {"s1": "S1 (VV, VH)", "s2": "S2 L1C"}
    lines.append("  bands        " + ", ".join(f"{band_text[m]}: {n}" for m, n in info["bands"].items()))
    total = max(1, sum(info["histogram"]))
    lines.append(f"  classes      {len(info['classes'])} (histogram over {info['samples_examined']} samples)")
    for name, count in zip([*info["classes"], f"<ignore {schema.IGNORE_INDEX}>"], info["histogram"]):
        lines.append(f"    {name:<34s}{count:>12d}  {100 * count / total:5.1f} %")
    if info["noise_rate"] is not None:
        lines.append(f"  noise rate   {100 * info['noise_rate']:.1f} % of labeled pixels differ from the true labels")
    return "\n".join(lines)
