"""Low-level readers: LMDB values (restricted unpickling), GeoTIFF bands, label id conventions.

Everything here returns numpy arrays and raises :class:`~cromss.errors.DataError` naming the file,
key, band or value when an input is unusable.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cromss import schema
from cromss.errors import DataError
from cromss.textfiles import read_text

# ----------------------------------------------------------------------------- LMDB
#: The only globals an LMDB value may reference: numpy scalars/dtypes, which appear when a shape
#: tuple was built from numpy integers. Everything else (functions, classes) is refused.
_ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy scalar/dtype reconstruction, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in an LMDB value")


def restricted_loads(data: bytes) -> Any:
    """Unpickle LMDB value ``data`` allowing only builtin containers and numpy scalars."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def decode_lmdb_value(data: bytes | None, *, file: str | Path, key: str) -> tuple[np.ndarray, str]:
    """Decode a value ``(array_bytes, shape, sample_id)`` of the SSL4EO-S12 / NoL LMDBs.

    Returns the uint8 array of ``shape`` and the sample id as a string.
    """
    if data is None:
        raise DataError(f"LMDB {file}: key '{key}' is absent")
    try:
        value = restricted_loads(bytes(data))
    except Exception as err:  # any unpickling failure is a corrupt/unsafe value for the user
        raise DataError(f"LMDB {file}: value of key '{key}' cannot be decoded safely ({err})") from None
    if not (isinstance(value, tuple) and len(value) == 3):
        raise DataError(f"LMDB {file}: value of key '{key}' is not a tuple (bytes, shape, sample_id)")
    raw, shape, sample_id = value
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise DataError(f"LMDB {file}: key '{key}' holds an invalid shape {shape!r}") from None
    if not isinstance(raw, bytes | bytearray):
        raise DataError(f"LMDB {file}: key '{key}' holds {type(raw).__name__}, expected bytes")
    if len(raw) != int(np.prod(shape)):
        raise DataError(
            f"LMDB {file}: key '{key}' holds {len(raw)} bytes, shape {shape} needs {int(np.prod(shape))}"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape), str(sample_id)


#: One read-only environment per LMDB path and process (py-lmdb refuses to open a path twice);
#: lock=False makes the inherited handle usable in forked DataLoader workers.
_ENVS: dict[str, Any] = {}


def lmdb_data_file(path: Path) -> Path:
    """The file holding an LMDB's pages: ``<path>/data.mdb`` (folder layout) or ``path`` itself."""
    return path / "data.mdb" if path.is_dir() else path


def _check_lmdb_size(env: Any, path: Path) -> None:
    """Refuse an LMDB whose data file is shorter than its own metadata says (an interrupted copy).

    LMDB memory-maps the file: reading a page past its end kills the process with SIGBUS instead of
    raising, so the size is compared with the last page number and page size of the meta page first.
    """
    data_file = lmdb_data_file(path)
    page_size = int(env.stat()["psize"])
    needed = (int(env.info()["last_pgno"]) + 1) * page_size
    actual = data_file.stat().st_size
    if actual < needed:
        raise DataError(
            f"LMDB {path}: {data_file.name} is truncated ({actual} bytes, its metadata needs {needed}: pages up "
            f"to {needed // page_size - 1} of {page_size} bytes); the copy is incomplete, copy it again"
        )


def _open_env(path: Path) -> Any:
    import lmdb

    key = str(path.resolve())
    if key not in _ENVS:
        try:
            env = lmdb.open(
                key, readonly=True, lock=False, readahead=False, meminit=False,
                subdir=path.is_dir(), max_readers=64,
            )
        except lmdb.Error as err:
            size = lmdb_data_file(path).stat().st_size if lmdb_data_file(path).is_file() else None
            # shorter than LMDB's two meta pages: the usual cause is an interrupted copy
            hint = f" (its {lmdb_data_file(path).name} has only {size} bytes: truncated?)" \
                if size is not None and size < 8192 else ""
            raise DataError(f"LMDB {path} cannot be opened: {err}{hint}") from None
        try:
            _check_lmdb_size(env, path)
        except BaseException:
            env.close()
            raise
        _ENVS[key] = env
    return _ENVS[key]


class LmdbReader:
    """Read-only access to one LMDB of the SSL4EO-S12 / NoL release (opened lazily per process).

    Keys are ``str(index).encode()`` for index 0..N-1. The environment is opened on first use so
    that a DataLoader worker opens its own handle after fork.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"LMDB not found: {self.path}")
        self._env: Any = None
        self._length: int | None = None

    def _open(self) -> Any:
        if self._env is None:
            self._env = _open_env(self.path)
        return self._env

    def __len__(self) -> int:
        if self._length is None:
            with self._open().begin(write=False) as txn:
                self._length = int(txn.stat()["entries"])
        return self._length

    def get(self, index: int) -> tuple[np.ndarray, str]:
        """Array and sample id stored at integer ``index``."""
        key = str(index)
        with self._open().begin(write=False) as txn:
            data = txn.get(key.encode())
            return decode_lmdb_value(data, file=self.path, key=key)

    def __getstate__(self) -> dict[str, Any]:
        # lmdb environments cannot be pickled into DataLoader workers: reopen there.
        state = self.__dict__.copy()
        state["_env"] = None
        return state


#: Per-value checksums beside an LMDB's pages (``<name>.lmdb/checksums.sha256``): lines
#: ``<sha256 of the stored value>  <key>`` like ``sha256sum``; checked by ``cromss data verify``.
LMDB_CHECKSUM_FILE = "checksums.sha256"


def lmdb_checksum_file(path: Path) -> Path:
    """Where the per-value checksums of LMDB ``path`` live (inside its folder, or ``<file>.sha256``)."""
    return path / LMDB_CHECKSUM_FILE if path.is_dir() else path.with_name(path.name + ".sha256")


def value_checksum(data: bytes) -> str:
    """Hex SHA-256 of one stored LMDB value (the pickled bytes exactly as stored)."""
    import hashlib

    return hashlib.sha256(data).hexdigest()


def format_checksums(checksums: Iterable[tuple[str, str]]) -> str:
    """``[(key, sha256), ...]`` -> the text of a checksum file."""
    return "".join(f"{digest}  {key}\n" for key, digest in checksums)


def read_checksums(path: Path) -> dict[str, str]:
    """A checksum file -> ``{key: sha256}``; a malformed line raises DataError naming it."""
    out: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "checksum file").splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, key = line.partition("  ")
        if len(digest) != 64 or not key:
            raise DataError(f"checksum file {path}, line {number}: expected '<sha256>  <key>', got {line[:80]!r}")
        out[key] = digest
    return out


def write_lmdb(path: str | Path, items: Iterable[tuple[np.ndarray, str]], map_size: int = 1 << 34) -> int:
    """Write ``(uint8 array, sample_id)`` items as ``str(index) -> pickle((bytes, shape, id))``.

    The SHA-256 of every stored value goes to ``checksums.sha256`` in the LMDB folder, so that a copy
    on another machine can be checked with ``cromss data verify``.
    """
    import lmdb

    from cromss.outputs import atomic_write_text

    path = Path(path)
    env = lmdb.open(str(path), map_size=map_size)
    checksums: list[tuple[str, str]] = []
    with env.begin(write=True) as txn:
        for index, (array, sample_id) in enumerate(items):
            array = np.ascontiguousarray(array, dtype=np.uint8)
            value = pickle.dumps((array.tobytes(), tuple(int(s) for s in array.shape), str(sample_id)), protocol=4)
            txn.put(str(index).encode(), value)
            checksums.append((str(index), value_checksum(value)))
    env.close()
    atomic_write_text(lmdb_checksum_file(path), format_checksums(checksums), "LMDB checksums")
    return len(checksums)


# ----------------------------------------------------------------------------- GeoTIFF
@dataclass
class Raster:
    """Bands of one GeoTIFF as ``[C, H, W]`` with its georeference and per-pixel nodata flag."""

    data: np.ndarray
    crs: Any
    transform: Any
    nodata: float | None
    path: Path
    descriptions: tuple[str | None, ...] = field(default_factory=tuple)


def read_geotiff(
    path: str | Path,
    *,
    bands: Sequence[int] | None = None,
    expected_count: int | Sequence[int] | None = None,
    allowed_kinds: str = "uifb",
    out_shape: tuple[int, int] | None = None,
    what: str = "image",
) -> Raster:
    """Read a GeoTIFF with rasterio into a :class:`Raster`.

    Args:
        bands: 1-based band indices to read (default all).
        expected_count: band count(s) the file must have.
        allowed_kinds: numpy dtype kinds accepted ('u' unsigned, 'i' signed, 'f' float, 'b' bool).
        out_shape: (H, W) to resample to (bilinear), for lower-resolution bands of the SSL4EO-S12 tree.
        what: what the file is, for messages ("Sentinel-2 image", "label", ...).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    try:
        with rasterio.open(path) as src:
            count = src.count
            if expected_count is not None:
                allowed = (expected_count,) if isinstance(expected_count, int) else tuple(expected_count)
                if count not in allowed:
                    raise DataError(
                        f"{what} {path} has {count} band(s), expected {' or '.join(map(str, allowed))}"
                    )
            dtype = np.dtype(src.dtypes[0])
            if dtype.kind not in allowed_kinds:
                raise DataError(f"{what} {path} has dtype {dtype}, which is not accepted here")
            indexes = list(bands) if bands is not None else list(range(1, count + 1))
            if out_shape is not None and tuple(out_shape) != (src.height, src.width):
                # a coarser (or finer) band of the same extent has a whole-number size ratio (SSL4EO-S12: the
                # 20 m and 60 m bands are 1/2 and 1/6 of the 10 m grid); any other size is another extent
                height, width = out_shape
                whole = max(height, src.height) % min(height, src.height) == 0 and \
                    max(width, src.width) % min(width, src.width) == 0
                if not whole or height * src.width != width * src.height:
                    raise DataError(
                        f"{what} {path} is {src.height}x{src.width} px, not a whole-number resolution of the "
                        f"{height}x{width} label grid it is resampled to (another extent or a cut file)"
                    )
                data = src.read(indexes, out_shape=(len(indexes), *out_shape), resampling=Resampling.bilinear)
            else:
                data = src.read(indexes)
            return Raster(data, src.crs, src.transform, src.nodata, path, tuple(src.descriptions))
    except DataError:
        raise
    except (RasterioError, OSError, ValueError) as err:
        raise DataError(f"{what} {path} cannot be read as GeoTIFF: {err}") from None


def raster_shape(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(H, W) of a GeoTIFF without reading pixels."""
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            return src.height, src.width
    except (RasterioError, OSError) as err:
        raise DataError(f"{what} {path} cannot be read as GeoTIFF: {err}") from None


def invalid_pixels(data: np.ndarray, nodata: float | None, *, any_band: bool) -> np.ndarray:
    """Bool [H, W]: a non-finite value in any band, or nodata (in any / all bands).

    S1 uses ``any_band=True`` (a missing polarisation spoils the pixel); S2 ``any_band=False``
    because a single band (e.g. B10 cirrus) can legitimately read 0 = the usual nodata value.
    """
    bad = ~np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else np.zeros(data.shape[1:], bool)
    if nodata is not None and np.isfinite(nodata):
        hit = data == nodata
        bad |= hit.any(axis=0) if any_band else hit.all(axis=0)
    elif nodata is not None and np.isnan(nodata):
        pass  # NaN nodata is already caught by the finiteness test
    return bad


# ----------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelMap:
    """How raw label values of a published layout map to class ids 0..C-1 and the ignore value.

    Values in ``mapping`` become their class id, values in ``ignore`` become
    :data:`schema.IGNORE_INDEX`; any other value raises DataError naming file and values.
    """

    name: str
    mapping: dict[int, int]
    ignore: tuple[int, ...] = ()
    #: True (generic datasets): every value outside ``mapping`` is ignored instead of an error
    ignore_unknown: bool = False

    def apply(self, raw: np.ndarray, source: str | Path) -> np.ndarray:
        """Map an integer label array; returns int64 with ignore = IGNORE_INDEX."""
        if raw.dtype.kind not in "ui":
            raise DataError(f"label {source} has dtype {raw.dtype}; labels must be integers")
        if raw.size == 0:
            return raw.astype(np.int64)
        if self.ignore_unknown:
            out = np.full(raw.shape, schema.IGNORE_INDEX, dtype=np.int64)
            for value, class_id in self.mapping.items():
                out[raw == value] = class_id
            return out
        low, high = int(raw.min()), int(raw.max())
        known = [*self.mapping, *self.ignore]
        if high - low > 1 << 16:  # known values span < 2**16, so min or max is unknown
            outside = [v for v in (low, high) if v not in known]
            raise DataError(f"label {source} holds value(s) {outside} outside the {self.name} convention")
        # a lookup table over the value range: one gather instead of a pass per class
        lut = np.full(high - low + 1, -1, dtype=np.int64)
        for value in range(low, high + 1):
            if value in self.mapping:
                lut[value - low] = self.mapping[value]
            elif value in self.ignore:
                lut[value - low] = schema.IGNORE_INDEX
        out = lut[raw.astype(np.int64) - low] if low else lut[raw]
        if lut.min() < 0:
            bad = out < 0
            if bad.any():
                unknown = np.unique(raw[bad]).tolist()
                raise DataError(
                    f"label {source} holds value(s) {unknown[:10]} outside the {self.name} convention "
                    f"(allowed: {sorted(self.mapping)} and ignore {sorted(self.ignore)})"
                )
        return out


#: NoL masks (LMDB and GeoTIFF): DW class ids 0..8 as stored, 255 = unlabeled.
NOL_LABELS = LabelMap("NoL Dynamic World (0..8)", {i: i for i in range(9)}, (schema.IGNORE_INDEX,))
#: SSL4EO-S12@DW tiles: 0 = unlabeled, 1..9 -> 0..8, 10 = cloud -> unlabeled.
DW_TILE_LABELS = LabelMap("SSL4EO-S12@DW tile (0 unlabeled, 1..9 classes, 10 cloud)",
                          {i + 1: i for i in range(9)}, (0, 10, schema.IGNORE_INDEX))
#: SSL4EO-S12@OSM tiles: 0 = unlabeled, 1..13 -> 0..12.
OSM_TILE_LABELS = LabelMap("SSL4EO-S12@OSM tile (0 unlabeled, 1..13 classes)",
                           {i + 1: i for i in range(13)}, (0, schema.IGNORE_INDEX))
#: DFC2020 (values 1..10): remapped to the first 8 DW classes; savanna (3), snow/ice (8) and
#: 0/255 are ignored.
DFC2020_LABELS = LabelMap("DFC2020 (1..10)", dict(schema.DFC2020_TO_DW), (0, 3, 8, schema.IGNORE_INDEX))

LABEL_MAPS: dict[str, LabelMap] = {
    "nol": NOL_LABELS, "dw": DW_TILE_LABELS, "osm": OSM_TILE_LABELS, "dfc2020": DFC2020_LABELS,
}


def read_label_geotiff(path: str | Path, label_map: LabelMap, *, expected_count: int | None = 1) -> Raster:
    """Read an integer label GeoTIFF and map it with ``label_map`` (data -> int64 [B, H, W])."""
    raster = read_geotiff(path, expected_count=expected_count, allowed_kinds="ui", what="label")
    raster.data = label_map.apply(raster.data, path)
    return raster


# ----------------------------------------------------------------------------- SSL4EO-S12 tree
_DATE = re.compile(r"(\d{8})T\d{6}")


def season_sort_key(folder_name: str) -> tuple[str, str]:
    """Sort key of an SSL4EO-S12 season folder / file: its first ``YYYYMMDDTHHMMSS`` date."""
    match = _DATE.search(folder_name)
    return (match.group(0) if match else "~", folder_name)


#: Sen1Floods11 hand labels (-1 no data, 0 not water, 1 water), for the real-scene checks.
SEN1FLOODS11_LABELS = LabelMap("Sen1Floods11 (-1 no data, 0 not water, 1 water)", {0: 0, 1: 1}, (-1,))
