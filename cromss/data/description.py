"""What a dataset holds, described once: modalities with band names, classes, label values, samples.

A :class:`DatasetDescription` is the one description every dataset of cromss is read through:

* ``data.kind: generic`` — a folder with ``dataset.yaml`` and a sample table (``samples.csv``), any
  sensors, band lists, classes, label sources and numbers of timestamps (docs/data.md, "Your own data");
* the built-in layouts (SSL4EO-S12@NoL, @DW, @OSM, DFC2020) — the same description, filled from the
  band and class tables of :mod:`cromss.schema` (their files are enumerated by
  :mod:`cromss.data.layouts`).

``dataset.yaml`` (keys other than these four are optional)::

    modalities:            # any names; band names in file order; any band count
      s2: [B1, B2, B3, B4, B5, B6, B7, B8, B8A, B9, B10, B11, B12]
      s1: [VV, VH]
    classes: [not_water, water]      # class id = position; or [{name: water, color: '#419BDF'}, ...]
    label_values: {0: 0, 1: 1}       # raw label value -> class id; every other value is ignored
    samples: samples.csv
    colors: ['#cccccc', '#419BDF']   # optional, one per class
    stats: {s2: stats/s2_stats.json} # optional; default <root>/stats/<modality>_stats.json
    nodata: {s2: {value: 0, rule: all}}  # optional per modality: override the file's nodata / rule
    label_nodata: ignore   # optional: a label nodata that is ALSO a label value is nodata (ignore) or the class (keep)

The sample table has the columns ``location``, ``time`` (optional), ``split`` (optional:
train / val / test), one column per modality, ``label`` and ``reference`` (optional). Paths are relative
to the folder. Rows that share a ``location`` are its timestamps.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cromss import bands as band_ids
from cromss import schema
from cromss.errors import DataError
from cromss.textfiles import read_text

DESCRIPTION_FILE = "dataset.yaml"
#: Folder (inside the dataset root) where ``cromss data stats`` writes the band statistics it finds later.
STATS_DIR = "stats"
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Columns of the sample table that are not modalities.
RESERVED_COLUMNS: tuple[str, ...] = ("location", "time", "split", "label", "reference")
NODATA_RULES: tuple[str, ...] = ("any", "all")
#: ``label_nodata`` of dataset.yaml: what a label file's nodata value means when it is ALSO a raw value of
#: ``label_values``: 'ignore' = missing labels (the class gets no pixels of that value), 'keep' = the class.
LABEL_NODATA: tuple[str, ...] = ("ignore", "keep")
#: A palette for classes without colours (tab10-like, then grey).
_PALETTE: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                             "#7f7f7f", "#bcbd22", "#17becf")


@dataclass(frozen=True)
class NodataRule:
    """How nodata of one modality is found: ``value`` (None = the file's own nodata) and ``rule``.

    ``rule='any'``: a pixel is invalid when ANY band equals the value (e.g. SAR: a missing polarisation
    spoils the pixel); ``'all'``: only when EVERY band does (optical: one band such as B10 may read 0).
    Non-finite values are invalid in any band, always.
    """

    value: float | None = None
    rule: str = "all"


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample table: one timestamp of one location."""

    row: int  # 1-based data row number in the CSV (header = row 0), for messages
    location: str
    time: str
    split: str  # '' when the table has no split for it
    images: dict[str, Path]  # modality -> file
    label: Path
    reference: Path | None = None

    @property
    def sample_id(self) -> str:
        return f"{self.location}@{self.time}" if self.time else self.location


@dataclass
class Location:
    """All timestamps (rows sorted by time) of one location."""

    name: str
    split: str
    rows: list[SampleRow] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetDescription:
    """Modalities (ordered name -> band names), class table, label convention, and where it lives."""

    name: str
    modalities: dict[str, tuple[str, ...]]
    classes: schema.ClassTable
    #: raw label value -> class id; ``ignore_unknown`` = other values become IGNORE_INDEX silently
    label_values: dict[int, int]
    ignore_values: tuple[int, ...] = ()
    ignore_unknown: bool = True
    root: Path | None = None
    samples_file: Path | None = None
    stats: dict[str, Path] = field(default_factory=dict)
    nodata: dict[str, NodataRule] = field(default_factory=dict)
    #: 'ignore' | 'keep' | None (not said): see :data:`LABEL_NODATA` and :func:`label_nodata_conflict`
    label_nodata: str | None = None

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def bands(self, modality: str) -> tuple[str, ...]:
        """Band names of ``modality`` in file order."""
        if modality not in self.modalities:
            raise DataError(f"dataset {self.name}: no modality {modality!r} (has {list(self.modalities)})")
        return self.modalities[modality]

    def stats_path(self, modality: str) -> Path | None:
        """The band statistics JSON of ``modality``: declared in dataset.yaml, else ``stats/<m>_stats.json``."""
        if modality in self.stats:
            return self.stats[modality]
        if self.root is not None:
            found = self.root / STATS_DIR / f"{modality}_stats.json"
            if found.is_file():
                return found
        return None

    def nodata_rule(self, modality: str) -> NodataRule:
        return self.nodata.get(modality, NodataRule())


# ----------------------------------------------------------------------------- built-in layouts
def builtin_description(kind: str, s2_bands: int = 13, root: str | Path | None = None) -> DatasetDescription:
    """The description of a built-in layout ('nol', 'dw', 'osm', 'dfc2020'): its band and class tables."""
    from cromss.data.readers import LABEL_MAPS

    if kind not in schema.CLASS_TABLES:
        raise DataError(f"no built-in dataset kind {kind!r} (built-in: {sorted(schema.CLASS_TABLES)})")
    label_map = LABEL_MAPS[kind]
    return DatasetDescription(
        name=kind,
        modalities={"s1": schema.S1_BANDS, "s2": schema.s2_band_names(s2_bands)},
        classes=schema.CLASS_TABLES[kind],
        label_values=dict(label_map.mapping), ignore_values=tuple(label_map.ignore), ignore_unknown=False,
        root=Path(root) if root is not None else None,
        nodata={"s1": NodataRule(None, "any"), "s2": NodataRule(None, "all")},
    )


# ----------------------------------------------------------------------------- dataset.yaml
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _class_table(raw: Any, colors: Any, source: Path) -> schema.ClassTable:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{source}: 'classes' must be a non-empty list of class names")
    names: list[str] = []
    given: list[str | None] = []
    for index, entry in enumerate(raw):
        if isinstance(entry, Mapping):
            name, color = entry.get("name"), entry.get("color")
        else:
            name, color = entry, None
        if not isinstance(name, str | int) or str(name).strip() == "":
            raise DataError(f"{source}: classes[{index}] must be a name (or {{name, color}}), got {entry!r}")
        names.append(str(name))
        given.append(str(color) if color is not None else None)
    if len(names) < 2:
        raise DataError(f"{source}: 'classes' lists {len(names)} class ({names}); segmentation needs at least 2")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{source}: class name(s) {duplicates} appear twice in 'classes'")
    if colors is not None:
        if not isinstance(colors, list) or len(colors) != len(names):
            raise DataError(f"{source}: 'colors' must list one colour per class ({len(names)})")
        given = [str(c) for c in colors]
    resolved = []
    for index, color in enumerate(given):
        color = color or (_PALETTE[index] if index < len(_PALETTE) else "#808080")
        if not (color.startswith("#") and len(color) == 7 and all(c in "0123456789abcdefABCDEF" for c in color[1:])):
            raise DataError(f"{source}: colour {color!r} of class {names[index]!r} is not '#RRGGBB'")
        resolved.append(color)
    return schema.ClassTable(source.parent.name or "dataset", tuple(names), tuple(resolved))


def _label_values(raw: Any, num_classes: int, source: Path) -> dict[int, int]:
    if raw is None:  # default: the raw value is the class id
        return {i: i for i in range(num_classes)}
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(f"{source}: 'label_values' must map raw label values to class ids, e.g. {{0: 0, 1: 1}}")
    out: dict[int, int] = {}
    for key, value in raw.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{source}: label_values key {key!r} is not an integer label value") from None
        if not _is_int(value) or not 0 <= value < num_classes:
            raise DataError(
                f"{source}: label_values maps {key!r} to {value!r}, not a class id in 0..{num_classes - 1}"
            )
        out[number] = value
    return out


#: Parsed and checked dataset.yaml files, by path and content hash: a command parses and checks the
#: description once however many parts of it ask (config resolution, statistics files, train / val
#: datasets); an edited file is parsed again.
_CACHE: dict[tuple[Any, ...], Any] = {}
_CACHE_SIZE = 8


def _file_identity(path: Path, *extra: Any) -> tuple[Any, ...] | None:
    import hashlib

    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
    return (str(path.resolve()), digest, *extra)


def _cached(key: tuple[Any, ...] | None, build: Any) -> Any:
    if key is None:
        return build()
    if key not in _CACHE:
        value = build()  # errors are not cached: a fixed file is read again
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = value
    return _CACHE[key]


def load_description(root: str | Path) -> DatasetDescription:
    """``<root>/dataset.yaml`` as a :class:`DatasetDescription` (the sample table is read separately),
    parsed once per process while the file is unchanged."""
    root = Path(root).expanduser()
    return _cached(_file_identity(root / DESCRIPTION_FILE, "description"), lambda: _read_description(root))


def _read_description(root: str | Path) -> DatasetDescription:
    """Read ``<root>/dataset.yaml`` into a :class:`DatasetDescription` (the sample table is read separately)."""
    import yaml

    root = Path(root).expanduser()
    source = root / DESCRIPTION_FILE
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder")
    if not source.is_file():
        raise DataError(
            f"{root}: no {DESCRIPTION_FILE} (a generic dataset needs one; write it with `cromss data index {root} ...`)"
        )
    try:
        data = yaml.safe_load(read_text(source, "dataset description")) or {}
    except yaml.YAMLError as err:
        raise DataError(f"{source} is not valid YAML: {err}") from None
    if not isinstance(data, Mapping):
        raise DataError(f"{source} must hold a mapping")
    known = {"modalities", "classes", "colors", "label_values", "samples", "stats", "nodata", "name",
             "description", "ignore_values", "label_nodata"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise DataError(f"{source}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
    modalities_raw = data.get("modalities")
    if not isinstance(modalities_raw, Mapping) or not modalities_raw:
        raise DataError(f"{source}: 'modalities' must map each modality name to its band names")
    modalities: dict[str, tuple[str, ...]] = {}
    for name, bands in modalities_raw.items():
        name = str(name)
        if name in RESERVED_COLUMNS or not name.replace("_", "").replace("-", "").isalnum():
            raise DataError(f"{source}: {name!r} cannot be a modality name (reserved or not alphanumeric)")
        if not isinstance(bands, list) or not bands:
            raise DataError(f"{source}: modality {name!r} must list its band names in file order")
        names = tuple(str(b).strip() for b in bands)
        twice = band_ids.duplicate_text(names, name)
        if twice:
            raise DataError(f"{source}: modality {name!r} lists a band twice ({twice}): {list(names)}")
        modalities[name] = names
    classes = _class_table(data.get("classes"), data.get("colors"), source)
    label_values = _label_values(data.get("label_values"), classes.num_classes, source)
    ignore_values = data.get("ignore_values") or []
    if not isinstance(ignore_values, list) or not all(_is_int(v) for v in ignore_values):
        raise DataError(f"{source}: 'ignore_values' must be a list of integers")
    stats: dict[str, Path] = {}
    for modality, path in (data.get("stats") or {}).items():
        if modality not in modalities:
            raise DataError(f"{source}: stats for unknown modality {modality!r}")
        stats[str(modality)] = inside(root, str(path), f"{source}: stats of {modality}")
    nodata: dict[str, NodataRule] = {}
    for modality, spec in (data.get("nodata") or {}).items():
        if modality not in modalities:
            raise DataError(f"{source}: nodata for unknown modality {modality!r}")
        spec = spec if isinstance(spec, Mapping) else {"value": spec}
        value = spec.get("value")
        rule = spec.get("rule", "all")
        if value is not None and not isinstance(value, int | float):
            raise DataError(f"{source}: nodata value of {modality} must be a number, got {value!r}")
        if rule not in NODATA_RULES:
            raise DataError(f"{source}: nodata rule of {modality} must be 'any' or 'all', got {rule!r}")
        nodata[str(modality)] = NodataRule(None if value is None else float(value), rule)
    samples = data.get("samples", "samples.csv")
    label_nodata = data.get("label_nodata")
    if label_nodata is not None and label_nodata not in LABEL_NODATA:
        raise DataError(f"{source}: 'label_nodata' must be 'ignore' or 'keep', got {label_nodata!r}")
    return DatasetDescription(
        name=str(data.get("name") or root.name), modalities=modalities, classes=classes,
        label_values=label_values, ignore_values=tuple(ignore_values), ignore_unknown=True, root=root,
        samples_file=inside(root, str(samples), f"{source}: samples"), stats=stats, nodata=nodata,
        label_nodata=label_nodata,
    )


def label_nodata_conflict(nodata: Any, label_values: Mapping[int, int], class_names: Any,
                          label_nodata: str | None, path: Path | str, what: str = "label") -> str | None:
    """The problem of a label file whose GeoTIFF nodata is ALSO a raw value of ``label_values`` when the
    dataset does not say which is meant (``label_nodata`` unset), else None.

    Such a file (e.g. a label written with the image's profile: Sentinel-2 files declare nodata 0) would
    silently drop that class: its pixels read as nodata.
    """
    value = finite_or_none(nodata)
    if label_nodata is not None or value is None or value != int(value) or int(value) not in label_values:
        return None
    class_id = label_values[int(value)]
    name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
    return (f"{what} {path}: its GeoTIFF nodata {int(value)} is also the raw value of class {name!r} in "
            f"label_values; say which is meant in dataset.yaml: label_nodata: ignore (the value marks missing "
            f"labels) or label_nodata: keep (it is class {name!r})")


def label_nodata_value(nodata: Any, label_values: Mapping[int, int], label_nodata: str | None) -> float | None:
    """The label nodata value to ignore: the file's (finite) nodata, unless ``label_nodata: keep`` says a
    value that is also a class value is that class."""
    value = finite_or_none(nodata)
    if (value is not None and label_nodata == "keep" and value == int(value)
            and int(value) in label_values):
        return None
    return value


def inside(root: Path, relative: str, what: str, allow_absolute: bool = False) -> Path:
    """``root / relative``, refusing paths that leave ``root`` with ``..``.

    ``allow_absolute``: an absolute path is taken as it is (the sample table of a dataset that references
    files kept elsewhere, e.g. the images of a ``cromss audit --clean`` dataset); else it is refused.
    """
    if relative.strip() == "":
        raise DataError(f"{what}: empty path")
    path = Path(relative)
    if path.is_absolute() and allow_absolute and ".." not in path.parts:
        return path
    if path.is_absolute() or ".." in path.parts:
        also = " (or be an absolute path)" if allow_absolute else ""
        raise DataError(f"{what}: path {relative!r} must be relative to {root} and stay inside it{also}")
    return root / path


# ----------------------------------------------------------------------------- sample table
def read_samples(description: DatasetDescription, check_files: bool = True) -> list[Location]:
    """Read and check the sample table; return locations (rows grouped, timestamps sorted by time).

    Errors name the file, the row and the problem: a missing column or file, a row without a modality,
    an unknown split, a duplicate (location, time), a path outside the folder, a location whose rows
    disagree on the split.
    """
    if description.samples_file is None or description.root is None:
        raise DataError(f"dataset {description.name} has no sample table")
    path = description.samples_file
    if not path.is_file():
        raise DataError(f"sample table {path} not found (named by 'samples' in {description.root / DESCRIPTION_FILE})")
    # UTF-8 with or without BOM (Excel's "CSV UTF-8"): a BOM kept in the text would rename 'location'
    reader = csv.DictReader(io.StringIO(read_text(path, "sample table"), newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    raw_rows = list(reader)
    needed = ["location", *description.modalities, "label"]
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"sample table {path}: column(s) {missing} missing (has {header})")
    extra = [c for c in header if c not in needed and c not in RESERVED_COLUMNS]
    if extra:
        raise DataError(
            f"sample table {path}: column(s) {extra} are neither a modality of dataset.yaml "
            f"({list(description.modalities)}) nor one of {list(RESERVED_COLUMNS)}"
        )
    root = description.root
    seen: dict[tuple[str, str], int] = {}
    locations: dict[str, Location] = {}
    for number, raw in enumerate(raw_rows, start=1):
        row = {str(k).strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"sample table {path} row {number}"
        location = row.get("location", "")
        if not location:
            raise DataError(f"{where}: empty 'location'")
        time = row.get("time", "")
        split = row.get("split", "").lower()
        if split and split not in SPLITS:
            raise DataError(f"{where}: split {split!r} is not one of {list(SPLITS)}")
        key = (location, time)
        if key in seen:
            raise DataError(
                f"{where}: location {location!r} time {time!r} appears again (first in row {seen[key]}); "
                "each (location, time) must be one row"
            )
        seen[key] = number
        images: dict[str, Path] = {}
        for modality in description.modalities:
            if not row.get(modality):
                raise DataError(f"{where} ({location}): no {modality} file (every row needs every modality)")
            images[modality] = inside(root, row[modality], f"{where}: {modality}", allow_absolute=True)
        if not row.get("label"):
            raise DataError(f"{where} ({location}): no label file")
        label = inside(root, row["label"], f"{where}: label", allow_absolute=True)
        reference = (inside(root, row["reference"], f"{where}: reference", allow_absolute=True)
                     if row.get("reference") else None)
        if check_files:
            for what, file in [*images.items(), ("label", label), ("reference", reference)]:
                if file is not None and not file.is_file():
                    raise DataError(f"{where} ({location}): {what} file {file} not found")
        entry = locations.setdefault(location, Location(location, split))
        if entry.split != split:
            raise DataError(
                f"{where}: location {location!r} has split {split or '(none)'!r} here but "
                f"{entry.split or '(none)'!r} in an earlier row (all timestamps of a location share its split)"
            )
        entry.rows.append(SampleRow(number, location, time, split, images, label, reference))
    if not locations:
        raise DataError(f"sample table {path} has no rows")
    for entry in locations.values():
        entry.rows.sort(key=lambda r: r.time)
    return list(locations.values())


def split_locations(
    locations: list[Location], split: str, val_fraction: float, seed: int
) -> list[Location]:
    """Locations of ``split``. Without ``val`` rows, validation is a seeded draw of training LOCATIONS
    (no timestamp of a validation location is trained on); rows without a split count as training."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if split == "test":
        return [loc for loc in locations if loc.split == "test"]
    pool = [loc for loc in locations if loc.split in ("", "train")]
    declared_val = [loc for loc in locations if loc.split == "val"]
    if declared_val:
        return declared_val if split == "val" else pool
    from cromss.data.splits import split_indices

    train_idx, val_idx = split_indices(len(pool), val_fraction, seed)
    return [pool[i] for i in (train_idx if split == "train" else val_idx)]


def max_timestamps(locations: list[Location]) -> int:
    """The largest number of timestamps of any location (label stacks are padded to it)."""
    return max((len(loc.rows) for loc in locations), default=1)


def finite_or_none(value: Any) -> float | None:
    """``float(value)`` when finite, else None (nodata values of files may be NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
