"""``cromss data index``: write ``dataset.yaml`` + ``samples.csv`` of a folder of GeoTIFFs from file patterns.

The conventions follow TerraTorch's generic datamodules (``GenericNonGeoSegmentationDataModule``) so
that a TerraTorch user can reuse what they already wrote:

* one glob per input (TerraTorch ``img_grep`` / ``label_grep``; here ``--image NAME=GLOB`` per modality,
  ``--label GLOB``, ``--reference GLOB``), relative to the dataset folder;
* the files of one sample pair up by their **sample id**: by default the text the glob's wildcards
  match in the file name (``s2/*_S2Hand.tif`` and ``label/*_LabelHand.tif`` pair on ``Spain_7370579``),
  or the first group (or the group named ``id``) of ``--id-pattern``;
* split files (TerraTorch ``train_split`` / ``val_split`` / ``test_split``) list sample ids one per line
  (a file extension is ignored, as TerraTorch's ``ignore_split_file_extensions``);
* band names (TerraTorch ``dataset_bands``): ``--bands NAME=B1,B2,...``, else the band descriptions of
  the first file of that modality.

cromss adds what TerraTorch has no notion of: timestamps (``--time-pattern``: a regex capturing the date
in the sample id; the rest of the id is the location, and rows sharing a location are its timestamps),
a noisy ``label`` beside a better ``reference``, and a class table mapping raw label values to classes.
Nothing is written unless every file pairs up.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cromss import bands as band_ids
from cromss.data.description import DESCRIPTION_FILE, RESERVED_COLUMNS, SPLITS
from cromss.errors import DataError
from cromss.textfiles import read_text

SAMPLES_FILE = "samples.csv"
#: characters trimmed where the time is cut out of a sample id to leave the location
_SEPARATORS = "_-. "


@dataclass
class IndexSpec:
    """What ``cromss data index`` was asked to do (the CLI options, parsed)."""

    root: Path
    images: dict[str, str]  # modality -> glob relative to root
    label: str
    classes: Path
    reference: str | None = None
    id_pattern: str | None = None
    time_pattern: str | None = None
    splits: dict[str, Path] = field(default_factory=dict)  # split -> file of ids
    bands: dict[str, list[str]] = field(default_factory=dict)
    overwrite: bool = False


@dataclass
class IndexResult:
    """What was written (or would be): the YAML mapping and the sample rows."""

    description: dict[str, Any]
    rows: list[dict[str, str]]
    columns: list[str]
    missing_reference: int = 0
    unsplit_locations: int = 0
    #: one line each, printed as ``cromss: warning: ...`` (e.g. a label nodata that is also a class value)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- parsing helpers
def parse_assignments(values: list[str] | None, option: str) -> dict[str, str]:
    """``['s2=s2/*.tif', ...]`` -> ``{'s2': 's2/*.tif'}``; a malformed or repeated name is a DataError."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        name = name.strip()
        if not sep or not name or not rest.strip():
            raise DataError(f"{option} {value!r}: expected NAME=VALUE, e.g. {option} s2=s2/*.tif")
        if name in out:
            raise DataError(f"{option}: {name!r} given twice")
        out[name] = rest.strip()
    return out


def _check_modality_name(name: str) -> None:
    if name in RESERVED_COLUMNS or not name.replace("_", "").replace("-", "").isalnum():
        raise DataError(f"--image {name}=...: {name!r} cannot be a modality name (reserved or not alphanumeric)")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex equivalent to the glob ``pattern`` with one capture group per wildcard of the file name."""
    *folders, name = pattern.split("/")
    parts = []
    for folder in folders:
        if folder == "**":
            parts.append(r"(?:[^/]+/)*")
        else:
            parts.append(_translate(folder, capture=False) + "/")
    parts.append(_translate(name, capture=True))
    return re.compile("".join(parts) + r"\Z")


def _translate(segment: str, capture: bool) -> str:
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("([^/]*)" if capture else "[^/]*")
        elif char == "?":
            out.append("([^/])" if capture else "[^/]")
        elif char == "[":
            end = segment.find("]", i + 2)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = segment[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"([{body}])" if capture else f"[{body}]")
                i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _find(root: Path, pattern: str, option: str) -> list[str]:
    """Files (POSIX paths relative to root, sorted) matching ``pattern``; refuses patterns leaving root."""
    if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
        raise DataError(f"{option} {pattern!r}: the pattern must be relative to {root} and stay inside it")
    found = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern) if p.is_file())
    found = [f for f in found if f not in (DESCRIPTION_FILE, SAMPLES_FILE)]
    if not found:
        raise DataError(f"{option} {pattern!r} matches no file under {root}")
    return found


def _sample_ids(files: list[str], pattern: str, id_pattern: re.Pattern[str] | None, option: str) -> dict[str, str]:
    """Sample id -> file. Default id: the text the glob's wildcards match in the file name."""
    glob_re = _glob_regex(pattern)
    out: dict[str, str] = {}
    for file in files:
        if id_pattern is not None:
            match = id_pattern.search(file)
            if match is None:
                raise DataError(f"{option}: file {file} does not match --id-pattern {id_pattern.pattern!r}")
            groups = match.groupdict()
            sample = groups["id"] if groups.get("id") is not None else (match.group(1) if match.groups() else match.group(0))
        else:
            match = glob_re.match(file)
            sample = "".join(g for g in match.groups() if g) if match is not None else ""
            if match is not None and not sample:  # the file name has no wildcard: the folders hold the id
                sample = str(Path(file).parent.as_posix())
            if match is None or not sample or sample == ".":
                raise DataError(
                    f"{option}: cannot take a sample id from {file} with pattern {pattern!r}; give --id-pattern"
                )
        if sample in out:
            raise DataError(
                f"{option}: files {out[sample]} and {file} have the same sample id {sample!r}; "
                "give --id-pattern (a regex whose first group is the id)"
            )
        out[sample] = file
    return out


def _split_time(sample: str, time_re: re.Pattern[str], file: str) -> tuple[str, str]:
    """(location, time) of a sample id: the time is the regex's capture, the location the rest of the id."""
    match = time_re.search(sample)
    if match is None:
        raise DataError(f"sample id {sample!r} ({file}) does not match --time-pattern {time_re.pattern!r}")
    group = "time" if "time" in time_re.groupindex else (1 if time_re.groups else 0)
    time = match.group(group)
    start, end = match.span(group)
    left, right = sample[:start].rstrip(_SEPARATORS), sample[end:].lstrip(_SEPARATORS)
    location = f"{left}_{right}" if left and right else (left or right)
    if not time or not location:
        raise DataError(f"sample id {sample!r} ({file}): --time-pattern leaves an empty time or location")
    return location, time


def read_class_table(path: Path) -> tuple[list[dict[str, Any]], dict[int, int] | None]:
    """Classes (``[{name, color?}]``) and ``label_values`` (None = the raw value is the class id).

    ``path`` is YAML/JSON (a list of names; a list of ``{value, name, color}``; or a mapping
    ``value: name``) or a text table (CSV / TSV / whitespace: ``value, name[, color]`` per line,
    header optional). Raw values that share a name share the class.
    """
    import yaml

    if not path.is_file():
        raise DataError(f"--classes {path}: file not found")
    text = read_text(path, "--classes file")
    entries: list[tuple[int | None, str, str | None]] = []
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise DataError(f"--classes {path} is not valid YAML: {err}") from None
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if isinstance(data, dict):
            data = [{"value": k, "name": v} for k, v in data.items()]
        if not isinstance(data, list) or not data:
            raise DataError(f"--classes {path}: expected a list of class names or of {{value, name, color}}")
        for index, item in enumerate(data):
            if isinstance(item, dict):
                if "name" not in item:
                    raise DataError(f"--classes {path}: entry {index} {item!r} has no 'name'")
                value = item.get("value")
                entries.append((_int(value, path, index) if value is not None else None, str(item["name"]),
                                None if item.get("color") is None else str(item["color"])))
            else:
                entries.append((None, str(item), None))
    else:
        for index, line in enumerate(text.splitlines()):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = [f.strip() for f in re.split(r"[,\t;]" if re.search(r"[,\t;]", line) else r"\s+", line)]
            if index == 0 and fields and not re.fullmatch(r"-?\d+", fields[0]):
                continue  # header
            if len(fields) < 2:
                raise DataError(f"--classes {path} line {index + 1}: expected 'value, name[, color]', got {line!r}")
            entries.append((_int(fields[0], path, index), fields[1], fields[2] if len(fields) > 2 and fields[2] else None))
    with_value = [e for e in entries if e[0] is not None]
    if with_value and len(with_value) != len(entries):
        raise DataError(f"--classes {path}: give a raw value for every class or for none")
    classes: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    label_values: dict[int, int] = {}
    for value, name, color in entries:
        if name not in ids:
            ids[name] = len(classes)
            classes.append({"name": name, **({"color": color} if color else {})})
        elif value is None:
            raise DataError(f"--classes {path}: class {name!r} appears twice")
        if value is not None:
            if value in label_values:
                raise DataError(f"--classes {path}: raw value {value} appears twice")
            label_values[value] = ids[name]
    if len(classes) < 2:
        raise DataError(f"--classes {path}: {len(classes)} class; segmentation needs at least 2")
    return classes, (label_values if with_value else None)


def _int(value: Any, path: Path, index: int) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise DataError(f"--classes {path} entry {index + 1}: raw value {value!r} is not an integer") from None


def _read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"split file {path} not found")
    out = []
    for line in read_text(path, "split file").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    if not out:
        raise DataError(f"split file {path} lists no sample id")
    return out


def _band_names(root: Path, modality: str, file: str, given: list[str] | None) -> list[str]:
    """``--bands`` of the modality (checked against the band count), else the first file's descriptions."""
    import rasterio
    from rasterio.errors import RasterioError

    path = root / file
    try:
        with rasterio.open(path) as src:
            count, descriptions = src.count, list(src.descriptions)
    except (RasterioError, OSError) as err:
        raise DataError(f"{modality} file {path} cannot be read as GeoTIFF: {err}") from None
    if given is not None:
        twice = band_ids.duplicate_text(given, modality)
        if twice:
            raise DataError(f"--bands {modality}: {twice}; name every band once")
        if len(given) != count:
            raise DataError(f"--bands {modality}: {len(given)} names {given} but {path} has {count} band(s)")
        conflict = band_ids.description_conflict(descriptions, given, modality)
        if conflict:
            raise DataError(f"--bands {modality}: {path} contradicts it: {conflict}; give the bands in the "
                            "file's order")
        return given
    names = [str(d).strip() if d else "" for d in descriptions]
    if not all(names) or band_ids.duplicates(names, modality):
        raise DataError(
            f"{modality}: {path} ({count} band(s)) has no distinct band descriptions; name the bands with "
            f"--bands {modality}=NAME1,NAME2,..."
        )
    return names


# ----------------------------------------------------------------------------- the index
def build_index(spec: IndexSpec) -> IndexResult:
    """Pair the files of ``spec`` into sample rows (nothing is written); DataError on any mismatch."""
    root = spec.root
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    if not spec.images:
        raise DataError("give at least one --image NAME=GLOB")
    for name in spec.images:
        _check_modality_name(name)
    unknown = [m for m in spec.bands if m not in spec.images]
    if unknown:
        raise DataError(f"--bands {unknown[0]}=...: no --image {unknown[0]}=GLOB")
    for modality, names in spec.bands.items():
        twice = band_ids.duplicate_text(names, modality)
        if twice:  # a dataset.yaml listing a band twice is refused by every later command: refuse it here
            raise DataError(f"--bands {modality}: {twice}; name every band once")
    try:
        id_re = re.compile(spec.id_pattern) if spec.id_pattern else None
        time_re = re.compile(spec.time_pattern) if spec.time_pattern else None
    except re.error as err:
        raise DataError(f"--id-pattern / --time-pattern: invalid regular expression: {err}") from None
    classes, label_values = read_class_table(spec.classes)

    inputs: dict[str, tuple[str, str]] = {m: (g, f"--image {m}") for m, g in spec.images.items()}
    inputs["label"] = (spec.label, "--label")
    if spec.reference:
        inputs["reference"] = (spec.reference, "--reference")
    by_input: dict[str, dict[str, str]] = {}
    for key, (pattern, option) in inputs.items():
        by_input[key] = _sample_ids(_find(root, pattern, option), pattern, id_re, option)

    # a file of one input claimed by another (e.g. '*.tif' for the image): refuse, it would pair with itself
    owner: dict[str, str] = {}
    for key, files in by_input.items():
        for file in files.values():
            if file in owner:
                raise DataError(f"{file} matches both {inputs[owner[file]][1]} and {inputs[key][1]}; make the patterns disjoint")
            owner[file] = key

    labels = by_input["label"]
    needed = list(spec.images)
    for key in [*needed, "reference"]:
        for sample, file in sorted(by_input.get(key, {}).items()):
            if sample not in labels:
                raise DataError(
                    f"{file} ({inputs[key][1]}, sample id {sample!r}) has no label file "
                    f"(--label {spec.label!r}); {_count_unpaired(by_input.get(key, {}), labels)} unpaired"
                )
    for sample, file in sorted(labels.items()):
        for modality in needed:
            if sample not in by_input[modality]:
                missing = sum(1 for s in labels if s not in by_input[modality])
                raise DataError(
                    f"sample {sample!r} (label {file}) has no {modality} file (--image {modality}="
                    f"{spec.images[modality]!r}); {missing} sample(s) lack {modality}"
                )

    split_of: dict[str, str] = {}  # sample id or location -> split
    for split, path in spec.splits.items():
        for entry in _read_split_file(path):
            for key in {entry, _strip_extension(entry)}:
                if key in split_of and split_of[key] != split:
                    raise DataError(f"split files: {key!r} is listed for both {split_of[key]} and {split}")
                split_of[key] = split

    rows: list[dict[str, str]] = []
    location_split: dict[str, str] = {}
    used_split_keys: set[str] = set()
    seen: dict[tuple[str, str], str] = {}
    for sample in sorted(labels):
        location, time = (sample, "")
        if time_re is not None:
            location, time = _split_time(sample, time_re, labels[sample])
        if (location, time) in seen:
            raise DataError(f"samples {seen[(location, time)]!r} and {sample!r} are both location {location!r} time {time!r}")
        seen[(location, time)] = sample
        split = ""
        if spec.splits:
            for key in (sample, location):
                if key in split_of:
                    split = split_of[key]
                    used_split_keys.add(key)
                    break
            if location in location_split and location_split[location] != split:
                raise DataError(
                    f"location {location!r}: its timestamps are in different splits "
                    f"({location_split[location] or '(none)'} and {split or '(none)'}); list locations in split files"
                )
            location_split[location] = split
        row = {"location": location}
        if time_re is not None:
            row["time"] = time
        if spec.splits:
            row["split"] = split
        for modality in needed:
            row[modality] = by_input[modality][sample]
        row["label"] = labels[sample]
        if spec.reference:
            row["reference"] = by_input["reference"].get(sample, "")
        rows.append(row)
    for split, path in spec.splits.items():
        for entry in _read_split_file(path):
            if entry not in used_split_keys and _strip_extension(entry) not in used_split_keys:
                raise DataError(f"split file {path} ({split}): {entry!r} is no sample id or location of the index")

    modalities = {m: _band_names(root, m, next(iter(sorted(by_input[m].values()))), spec.bands.get(m))
                  for m in needed}
    description: dict[str, Any] = {"modalities": modalities}
    if all("color" not in c for c in classes):
        description["classes"] = [c["name"] for c in classes]
    else:
        description["classes"] = classes
    if label_values is not None:
        description["label_values"] = label_values
    description["samples"] = SAMPLES_FILE
    columns = ["location", *(["time"] if time_re is not None else []), *(["split"] if spec.splits else []),
               *needed, "label", *(["reference"] if spec.reference else [])]
    warnings = _label_nodata_warnings(root, rows, classes, label_values)
    return IndexResult(
        description, rows, columns,
        missing_reference=sum(1 for r in rows if spec.reference and not r["reference"]),
        unsplit_locations=sum(1 for s in location_split.values() if not s), warnings=warnings,
    )


def _label_nodata_warnings(root: Path, rows: list[dict[str, str]], classes: list[dict[str, Any]],
                           label_values: dict[int, int] | None) -> list[str]:
    """A warning when the first label (or reference) file's GeoTIFF nodata is also a raw class value: it
    would silently drop that class unless dataset.yaml says ``label_nodata: ignore | keep``."""
    import rasterio
    from rasterio.errors import RasterioError

    from cromss.data.description import label_nodata_conflict

    values = label_values if label_values is not None else {i: i for i in range(len(classes))}
    names = [c["name"] for c in classes]
    out = []
    for column in ("label", "reference"):
        first = next((r[column] for r in rows if r.get(column)), None)
        if first is None:
            continue
        try:
            with rasterio.open(root / first) as src:
                nodata = src.nodata
        except (RasterioError, OSError):
            continue  # unreadable files are reported by cromss data inspect
        problem = label_nodata_conflict(nodata, values, names, None, root / first, column)
        if problem:
            out.append(f"{problem} (checked in the first {column} file; cromss data inspect checks them all, "
                       "and training refuses until it is said)")
    return out


def _count_unpaired(files: dict[str, str], labels: dict[str, str]) -> int:
    return sum(1 for s in files if s not in labels)


def _strip_extension(entry: str) -> str:
    return re.sub(r"\.[A-Za-z][A-Za-z0-9]{0,4}$", "", entry)


def write_index(spec: IndexSpec, result: IndexResult, command: str = "") -> tuple[Path, Path]:
    """Write ``dataset.yaml`` and ``samples.csv`` (each to a temporary file renamed into place)."""
    import yaml

    root = spec.root
    targets = (root / DESCRIPTION_FILE, root / SAMPLES_FILE)
    if not spec.overwrite:
        existing = [p for p in targets if p.exists()]
        if existing:
            raise DataError(f"{existing[0]} already exists; give --overwrite to replace it")
    header = "# written by cromss data index" + (f": {command}" if command else "") + "\n"
    text = header + yaml.safe_dump(result.description, sort_keys=False, default_flow_style=None)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=result.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    temps = []
    try:
        for target, content in zip(targets, (text, buffer.getvalue())):
            temp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            temp.write_text(content)
            temps.append((temp, target))
        for temp, target in temps:
            os.replace(temp, target)
    except OSError as err:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise DataError(f"cannot write the index into {root}: {err}") from None
    return targets


def index_dataset(spec: IndexSpec, command: str = "") -> tuple[IndexResult, tuple[Path, Path]]:
    """Build and write the index of ``spec``; the written folder loads with ``load_description`` + ``read_samples``."""
    result = build_index(spec)
    return result, write_index(spec, result, command)


__all__ = ["IndexResult", "IndexSpec", "SPLITS", "build_index", "index_dataset", "parse_assignments",
           "read_class_table", "write_index"]
