"""Unpack a verified archive atomically into the layout ``data.kind`` expects, then check it.

The archive is extracted into a temporary folder next to the destination (same file system), its
files are moved into the cromss layout there, the layout is checked, and only then is the folder
renamed to its final name. Any failure (a full disk, an unknown layout, a failed check) removes the
temporary folder: the destination either holds a complete, checked layout or is untouched.

Layouts produced (docs/data.md):

* ``dw`` / ``osm``: ``<dest>/{train,test}/{s1,s2,label}/<name>.tif``. Accepted inside the archive:
  that layout, or the authors' folders ``*train*/{image_s1,image_s2,label_dw|label_osm}`` and
  ``*test*/...`` (at any depth up to 3).
* ``nol-labels``: ``<dest>/dw_labels/<id>/<season>.tif`` from ``<id>/<season>.tif`` or
  ``<id>/<season>/label.tif`` (``<id>`` = the numeric SSL4EO-S12 id); other top-level files (id lists)
  are kept beside ``dw_labels/``.
"""

from __future__ import annotations

import errno
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from cromss.fetch.hub import FetchError, write_json_atomic
from cromss.fetch.registry import Artefact

#: Written into every unpacked layout: what was unpacked from which verified file.
LAYOUT_MANIFEST = "cromss-fetch.json"
_SPLIT = re.compile(r"(^|[_\-.])(train|test)([_\-.]|$)", re.IGNORECASE)
_ID = re.compile(r"\d{1,8}")


# ----------------------------------------------------------------------------- extraction
def _copy_member(source: Any, target: Any) -> None:
    """Stream one archive member to disk (a seam for tests that simulate a full disk)."""
    shutil.copyfileobj(source, target, 1 << 20)


def _safe_member(name: str, archive: Path) -> PurePosixPath | None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise FetchError(f"{archive.name}: unsafe member path {name!r} (absolute or with '..'); refusing it")
    if not path.parts or path.parts[0] == "__MACOSX" or path.name == ".DS_Store":
        return None
    return path


def extract_zip(archive: Path, out: Path, copy: Callable[[Any, Any], None] | None = None) -> int:
    """Extract regular files of ``archive`` below ``out``; returns the number of files."""
    copy = copy or _copy_member
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                member = _safe_member(info.filename, archive)
                if member is None or info.is_dir():
                    continue
                target = out.joinpath(*member.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as source, open(target, "wb") as handle:
                    copy(source, handle)
                count += 1
    except zipfile.BadZipFile as err:
        raise FetchError(f"{archive}: not a readable zip archive ({err})") from None
    return count


# ----------------------------------------------------------------------------- layouts
def _dirs(root: Path, depth: int) -> list[Path]:
    found, level = [], [root]
    for _ in range(depth):
        level = sorted(c for p in level for c in p.iterdir() if c.is_dir())
        found += level
    return found


def _modality_dir(name: str, kind: str) -> str | None:
    low = name.lower()
    if "label" in low or low in {kind, "dw", "osm", "mask", "masks"}:
        return "label"
    if "s1" in low:
        return "s1"
    if "s2" in low:
        return "s2"
    return None


def _tiles_layout(raw: Path, out: Path, kind: str, archive: str) -> None:
    """Move the split/modality folders of a DW/OSM archive into ``out/{train,test}/{s1,s2,label}``."""
    splits: dict[str, list[Path]] = {"train": [], "test": []}
    for folder in _dirs(raw, 3):
        match = _SPLIT.search(folder.name)
        if match and any(_modality_dir(c.name, kind) == "label" for c in folder.iterdir() if c.is_dir()):
            splits[match.group(2).lower()].append(folder)
    for split, folders in splits.items():
        if len(folders) > 1:
            raise FetchError(f"{archive}: several {split} folders ({', '.join(f.name for f in folders)}); "
                             "unpack it by hand (docs/data.md)")
    if not splits["train"] and not splits["test"]:
        top = sorted(p.name for p in raw.iterdir())[:8]
        raise FetchError(
            f"{archive}: no train/test folders with s1/s2/label subfolders found (top level: {top}); "
            "unpack it by hand into the layout of docs/data.md"
        )
    for split, folders in splits.items():
        if not folders:
            continue
        for child in sorted(c for c in folders[0].iterdir() if c.is_dir()):
            modality = _modality_dir(child.name, kind)
            if modality is None:
                continue
            target = out / split / modality
            if target.exists():
                raise FetchError(f"{archive}: two {modality} folders in {folders[0].name}/")
            target.parent.mkdir(parents=True, exist_ok=True)
            child.rename(target)


def _nol_labels_layout(raw: Path, out: Path, archive: str) -> None:
    """Move NoL label masks into ``out/dw_labels/<id>/<season>.tif``; keep top-level side files."""
    moved = 0
    for tif in sorted(p for p in raw.rglob("*") if p.suffix.lower() in (".tif", ".tiff") and p.is_file()):
        parts = tif.relative_to(raw).parts
        ids = [i for i, part in enumerate(parts[:-1]) if _ID.fullmatch(part)]
        if not ids:
            continue
        index = ids[-1] if len(parts) - 1 - ids[-1] <= 2 else ids[0]
        rest = parts[index + 1 :]
        season = rest[0] if len(rest) == 2 else PurePosixPath(rest[-1]).stem
        target = out / "dw_labels" / parts[index] / f"{season}.tif"
        if target.exists():
            raise FetchError(f"{archive}: two label files for id {parts[index]} season {season}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tif.rename(target)
        moved += 1
    if not moved:
        top = sorted(p.name for p in raw.iterdir())[:8]
        raise FetchError(f"{archive}: no label GeoTIFFs under numeric SSL4EO-S12 id folders (top level: {top})")
    roots = [raw, *(p for p in raw.iterdir() if p.is_dir())]
    for root in roots:
        for side in root.iterdir():
            if side.is_file() and side.suffix.lower() in (".csv", ".txt", ".json", ".md"):
                side.rename(out / side.name)


# ----------------------------------------------------------------------------- checks
def check_layout(root: Path, art: Artefact) -> dict[str, Any]:
    """The same check as ``cromss data inspect`` (DW/OSM), or a label-only check (NoL labels)."""
    from cromss.errors import DataError

    try:
        if art.data_kind in ("dw", "osm"):
            from cromss.data.inspect import detect_layouts, summarize

            layouts = [lay for lay in detect_layouts(root) if lay.root == root]
            if not layouts or layouts[0].kind != art.data_kind:
                found = layouts[0].kind if layouts else "none"
                raise DataError(f"expected a {art.data_kind} tile layout, found {found}")
            summary = summarize(layouts[0], "geotiff", max_samples=50)
            if summary["problems"]:  # inspect lists unusable files instead of stopping at the first
                raise DataError(summary["problems"][0])
            return summary
        return _check_nol_labels(root)
    except DataError as err:
        raise FetchError(f"{art.name}: the unpacked layout fails the data check: {err}") from None


def _check_nol_labels(root: Path) -> dict[str, Any]:
    from cromss import schema
    from cromss.data.readers import NOL_LABELS, read_label_geotiff
    from cromss.errors import DataError

    label_dir = root / "dw_labels"
    complete, incomplete = [], []
    for folder in sorted(p for p in label_dir.iterdir() if p.is_dir()):
        (complete if len(list(folder.glob("*.tif"))) == schema.NUM_SEASONS else incomplete).append(folder)
    if not complete:
        raise DataError(f"{label_dir}: no id with {schema.NUM_SEASONS} label files")
    first = sorted(complete[0].glob("*.tif"))[0]
    label = read_label_geotiff(first, NOL_LABELS).data  # raises DataError on values outside DW 0..8/255
    return {"kind": "nol-labels", "root": str(root), "ids_complete": len(complete),
            "ids_incomplete": len(incomplete), "tile_size": list(label.shape[-2:])}


# ----------------------------------------------------------------------------- atomic unpack
def unpack(art: Artefact, archive: Path, dest: Path, record: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Unpack ``archive`` into ``dest/art.folder`` atomically, check it, write its manifest.

    An existing folder with a manifest of the same sha256 is kept as is (checked again); any other
    existing folder is replaced only after the new one is complete.
    """
    final = dest / (art.folder or art.name.replace("/", "_"))
    stamp = final / LAYOUT_MANIFEST
    if stamp.is_file():
        import json

        try:
            previous = json.loads(stamp.read_bytes().decode("utf-8"))
        except (OSError, ValueError):  # UnicodeDecodeError too: an unreadable stamp means 'unpack again'
            previous = {}
        if previous.get("sha256") == record["sha256"]:
            return final, check_layout(final, art)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=dest))
    except OSError as err:
        raise FetchError(f"{art.name}: cannot create {dest}: {err}") from None
    try:
        raw, layout = work / "raw", work / final.name
        layout.mkdir()
        extract_zip(archive, raw)
        if art.data_kind == "nol-labels":
            _nol_labels_layout(raw, layout, archive.name)
        else:
            _tiles_layout(raw, layout, art.data_kind or "", archive.name)
        summary = check_layout(layout, art)
        write_json_atomic(layout / LAYOUT_MANIFEST, {**record, "layout": art.data_kind})
        old = work / "previous"
        if final.exists():
            final.rename(old)
        try:
            layout.rename(final)
        except OSError:
            if old.exists():
                old.rename(final)  # keep the previous layout rather than nothing
            raise
    except OSError as err:
        reason = "no space left on device" if err.errno == errno.ENOSPC else str(err)
        raise FetchError(f"{art.name}: unpacking {archive.name} into {final} failed ({reason}); "
                         f"nothing was written to {dest}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["root"] = str(final)
    return final, summary
