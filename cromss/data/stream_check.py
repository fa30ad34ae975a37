"""Trust checks of litdata streams: declared formats, completeness, checksums (``cromss data verify``).

A stream is data from elsewhere (``data.root`` may be a bucket URL). litdata decodes every field of an
item with the serializer its ``index.json`` names (``config.data_format``), and some of them unpickle
(``pickle``; ``graph`` falls back to pickle) or hand bytes to media decoders. So before ANY item is read:

* :func:`check_index` compares the declared formats with the ones cromss writes (:data:`ALLOWED_FORMATS`:
  ``str``, ``int``, ``numpy`` and header-less numpy arrays), and the item loader, compression and
  encryption with cromss's; anything else is refused with one line naming the ``index.json``.
  :func:`check_stream_index` does it for the stream's own files (a local folder, or an object-store URL
  read through fsspec: for a remote root ``index.json`` is also what litdata downloads first), and the
  dataset checks again the local copy litdata then parses from its cache;
* :func:`guarded_serializers` replaces every other litdata serializer by one that refuses, so even an
  ``index.json`` swapped between the check and the read cannot make litdata unpickle;
* for local roots every chunk the index lists must exist with the size the index records (a truncated
  copy is reported as one, not as litdata's "timed out waiting for chunk").

``cromss data convert`` records the size and SHA-256 of every file of the stream in
``cromss_stream.json``; :func:`verify_stream` recomputes them (flipped bytes inside a chunk are found
there: training does not hash every read, as for LMDBs).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cromss.errors import DataError

STREAM_VERSION = 2  # 2: cromss_stream.json records the size and SHA-256 of every file ('files')

__all__ = ["ALLOWED_FORMATS", "INDEX_FILE", "META_FILE", "StreamCheck", "check_index", "check_stream_index",
           "file_digest", "guarded_serializers", "read_index", "verify_stream"]

META_FILE = "cromss_stream.json"
INDEX_FILE = "index.json"
#: Field formats cromss writes (id: str, season: int, images / masks / labels: numpy arrays).
ALLOWED_FORMATS: tuple[str, ...] = ("str", "int", "numpy")
_NO_HEADER_NUMPY = re.compile(r"^no_header_numpy:\d+$")
_ITEM_LOADER = "PyTreeLoader"
_COMPRESSIONS = (None, "zstd")


def _join(root: str, name: str) -> str:
    return f"{str(root).rstrip('/')}/{name}"


def is_url(root: str | Path) -> bool:
    return "://" in str(root)


def _format_allowed(name: Any) -> bool:
    return isinstance(name, str) and (name in ALLOWED_FORMATS or bool(_NO_HEADER_NUMPY.match(name)))


def check_index(index: Any, where: str) -> list[dict[str, Any]]:
    """Refuse (DataError naming ``where``) an ``index.json`` whose items cromss did not write; return its chunks."""
    if not isinstance(index, dict) or not isinstance(index.get("config"), dict) or not isinstance(index.get("chunks"), list):
        raise DataError(f"stream index {where} is not a litdata index (needs 'config' and 'chunks')")
    config = index["config"]
    formats = config.get("data_format")
    if not isinstance(formats, list) or not formats:
        raise DataError(f"stream index {where}: no 'data_format' list; it was not written by `cromss data convert`")
    refused = sorted({str(f) for f in formats if not _format_allowed(f)})
    if refused:
        unsafe = [f for f in refused if "pickle" in f or f.split(":")[0] in ("pickle", "graph")]
        why = ("deserialising it would run code stored in the stream (pickle)" if unsafe else
               "cromss writes only " + ", ".join(ALLOWED_FORMATS) + " fields")
        raise DataError(
            f"stream index {where} declares item format(s) {refused}: refused before reading any item ({why}); "
            "convert the source again with `cromss data convert`"
        )
    if config.get("item_loader", _ITEM_LOADER) != _ITEM_LOADER:
        raise DataError(f"stream index {where}: item loader {config.get('item_loader')!r} is not cromss's {_ITEM_LOADER}")
    if config.get("compression") not in _COMPRESSIONS:
        raise DataError(f"stream index {where}: compression {config.get('compression')!r} is not one cromss reads "
                        f"({[c for c in _COMPRESSIONS if c]} or none)")
    if config.get("encryption"):
        raise DataError(f"stream index {where} is encrypted; cromss streams are not")
    for chunk in index["chunks"]:
        name = chunk.get("filename") if isinstance(chunk, dict) else None
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise DataError(f"stream index {where}: chunk file name {name!r} is not a plain file name")
    return index["chunks"]


def read_index(root: str | Path, split: str) -> tuple[Any, str]:
    """The parsed ``index.json`` of ``split`` (local or through fsspec) and its path; one line if absent."""
    from cromss.textfiles import decode_text

    path = _join(str(root), f"{split}/{INDEX_FILE}")
    try:
        if is_url(root):
            import fsspec

            with fsspec.open(path, "rb") as handle:
                data = handle.read()
        else:
            data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"stream {root}: split '{split}' has no {INDEX_FILE} ({path}): the stream is incomplete "
                        "(an interrupted conversion or copy); convert or copy it again") from None
    except (OSError, ImportError, ValueError) as err:
        raise DataError(f"stream {root}: cannot read {path}: {' '.join(str(err).split())}") from None
    try:
        return json.loads(decode_text(data, path, "stream index")), path
    except json.JSONDecodeError as err:
        raise DataError(f"stream index {path} is not valid JSON (line {err.lineno}: {err.msg}): the file is "
                        "truncated or corrupt; copy the stream again") from None


def check_stream_index(root: str | Path, split: str) -> list[dict[str, Any]]:
    """:func:`check_index` on the ``index.json`` of ``split``; for local roots also each chunk's presence and size."""
    index, path = read_index(root, split)
    chunks = check_index(index, path)
    if not is_url(root):
        folder = Path(root) / split
        for chunk in chunks:
            file = folder / chunk["filename"]
            expected = chunk.get("chunk_bytes")
            if not file.is_file():
                raise DataError(f"stream chunk {file} (listed in {path}) is missing: the stream is incomplete; "
                                "copy it again")
            size = file.stat().st_size
            if isinstance(expected, int) and size < expected:
                raise DataError(f"stream chunk {file} is {size} bytes but {path} records {expected}: it is truncated "
                                "(an interrupted copy?); copy the stream again (`cromss data verify` checks it)")
    return chunks


class _RefusingSerializer:
    """Stands in for every litdata serializer cromss does not write: refuses at setup and at decode."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _refuse(self) -> Any:
        raise DataError(f"stream item format {self.name!r} refused: cromss does not deserialise it (pickle or "
                        "foreign decoders could run code)")

    def setup(self, data_format: Any = None) -> None:
        self._refuse()

    def deserialize(self, data: bytes) -> Any:
        self._refuse()

    def serialize(self, item: Any) -> Any:
        self._refuse()

    def can_serialize(self, item: Any) -> bool:
        return False


def guarded_serializers() -> dict[str, Any]:
    """litdata's serializers with every format outside :data:`ALLOWED_FORMATS` replaced by a refusing one."""
    from litdata.streaming.serializers import _SERIALIZERS

    keep = set(ALLOWED_FORMATS) | {"no_header_numpy"}
    return {name: _RefusingSerializer(name) for name in _SERIALIZERS if name not in keep}


# ----------------------------------------------------------------------------- checksums / verify
def file_digest(path: str, size_hint: int | None = None) -> tuple[int, str]:
    """(bytes, sha256) of a local file or an fsspec URL, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    total = 0
    if is_url(path):
        import fsspec

        opener = fsspec.open(path, "rb")
    else:
        opener = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    with opener as handle:
        while True:
            block = handle.read(8 << 20)
            if not block:
                break
            total += len(block)
            digest.update(block)
    return total, digest.hexdigest()


@dataclass
class StreamCheck:
    """Outcome of :func:`verify_stream`."""

    root: str
    files: int = 0
    bytes: int = 0
    checksums: str = "verified"  # or 'absent' (a stream written before cromss recorded them)
    missing: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)  # chunks of an index.json without a recorded checksum

    @property
    def ok(self) -> bool:
        return not (self.missing or self.truncated or self.mismatched or self.unlisted)

    def problem(self) -> str:
        parts = []
        for name, files in (("missing", self.missing), ("of another size than recorded", self.truncated),
                            ("differ from their checksums", self.mismatched),
                            ("have no recorded checksum", self.unlisted)):
            if files:
                parts.append(f"{len(files)} file(s) {name} ({', '.join(files[:3])}{' ...' if len(files) > 3 else ''})")
        return "; ".join(parts)


def is_stream(path: str | Path) -> bool:
    """True when ``path`` holds a ``cromss_stream.json`` (local folder) or is a URL."""
    return is_url(path) or (Path(path) / META_FILE).is_file()


def verify_stream(root: str | Path, meta: dict[str, Any],
                  progress: Callable[[int, int], None] | None = None) -> StreamCheck:
    """Check every file of the stream at ``root`` against the sizes and SHA-256 in its ``cromss_stream.json``
    (``meta``), and every split's ``index.json`` (:func:`check_index`)."""
    root = str(root)
    check = StreamCheck(root)
    recorded: dict[str, dict[str, Any]] = meta.get("files") or {}
    if not recorded:
        check.checksums = "absent"
    listed: set[str] = set()
    for split in meta.get("splits", {}):
        index, path = read_index(root, split)
        for chunk in check_index(index, path):
            listed.add(f"{split}/{chunk['filename']}")
        listed.add(f"{split}/{INDEX_FILE}")
    if recorded:
        check.unlisted = sorted(name for name in listed if name not in recorded)
    names = sorted(recorded) if recorded else sorted(listed)
    for number, name in enumerate(names, start=1):
        path = _join(root, name)
        expected = recorded.get(name, {})
        try:
            size, digest = file_digest(path)
        except FileNotFoundError:
            check.missing.append(name)
            continue
        except OSError as err:
            raise DataError(f"stream {root}: cannot read {path}: {' '.join(str(err).split())}") from None
        check.files += 1
        check.bytes += size
        if expected:
            if size != expected.get("bytes"):
                check.truncated.append(name)
            elif digest != expected.get("sha256"):
                check.mismatched.append(name)
        if progress is not None:
            progress(number, len(names))
    return check
