"""Band identity: the ONE place that knows band names, their spellings and their physical facts.

Every band comparison in cromss goes through this module (dataset descriptions and band descriptions of
files, ``cromss data index --bands``, statistics lookups, weight loading and first-conv band selection,
``init_missing``, the baselines, analysis colours, ``cromss predict``, export metadata). A band is never
compared as a raw string.

**Spellings** (docs/data.md, "Which names cromss treats as the same band"). A name is brought to its
canonical spelling by :func:`canonical`:

* Sentinel-2-style numbered bands, in any sensor: case, leading zeros and a resolution suffix do not
  matter — ``B1`` = ``B01`` = ``b01`` = ``B01_60m``; ``B8A`` = ``B08A`` = ``b8a`` = ``B8A_20m``; but ``B8``
  is not ``B8A``;
* polarisations: ``VV`` = ``vv`` = ``VV_10m`` (also VH, HH, HV);
* sensor-specific aliases, only inside that sensor's table: Landsat Collection-2 ``SR_B4`` = ``B4``,
  ``ST_B10`` = ``B10``; HLS names case-insensitively with ``-`` or a space for ``_`` (``nir-narrow`` =
  ``NIR_NARROW``);
* any other name (your own sensors and indices: ``red``, ``nir``, ``ndvi``) is compared case-insensitively
  after trimming surrounding white space, and NEVER matches anything else (``nir`` is not ``B8``).

**Sensor context.** The same spelling means different bands on different sensors (Landsat ``B8`` is the
panchromatic band, Sentinel-2 ``B8`` the 842 nm NIR band), so band names are compared only within one
modality, and a modality's names are read with its sensor's table. The sensor of a modality is told by
its name (:func:`sensor_of`): ``s2`` / ``sentinel2`` / ``s2l1c`` / ``s2l2a`` / ``s2c`` -> Sentinel-2 MSI,
``s1`` / ``sentinel1`` / ``s1grd`` -> Sentinel-1 C-SAR, ``landsat`` / ``landsat8`` / ``landsat9`` /
``l8`` / ``l9`` / ``oli`` -> Landsat 8/9 OLI/TIRS, ``hls`` -> HLS v2 (harmonised names as TerraTorch's
``HLSBands``). A modality of another name is a sensor cromss does not know: its names are compared by the
spelling rules above and it has no wavelengths.

**Facts** per sensor band (:class:`Band`): centre wavelength (µm), native ground sampling distance (m),
STAC ``eo:common_name``. Published band tables (:data:`S2_L1C_BANDS` 13, :data:`S2_L2A_BANDS` 12, the
9-band CromSS / Satlas subset :data:`S2_9BANDS`, :data:`S1_BANDS`, :data:`LANDSAT_OLI_BANDS`,
:data:`HLS_BANDS`) and the true-colour triple of each sensor. The tables follow torchgeo's and TerraTorch's
conventions (band tuples per product, RGB triples; TerraTorch's HLS names).

Sentinel-2 centre wavelengths are the nominal MSI values, which are also DOFA's published wave list
(DOFA-pytorch ``src/dataset_config.py``; the zhu-xlab/DOFA README feeds ``[0.665, 0.56, 0.49, 0.705, 0.74,
0.783, 0.842, 1.61, 2.19]`` for B4, B3, B2, B5, B6, B7, B8, B11, B12): :func:`dofa_wavelengths` reads this
one table. For SAR DOFA's README feeds ``5.405`` (the C-band centre frequency in GHz, not a wavelength);
that convention is :data:`DOFA_SAR_VALUE`, the physical C-band wavelength stays in the table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ----------------------------------------------------------------------------- sensors and bands


@dataclass(frozen=True)
class Band:
    """One band of a sensor: canonical name, centre wavelength (µm), native GSD (m), STAC common name."""

    name: str
    wavelength_um: float | None
    gsd_m: float | None
    common_name: str | None = None


@dataclass(frozen=True)
class Sensor:
    """A sensor's bands (the canonical names cromss compares), its true-colour triple and its aliases."""

    key: str
    title: str
    bands: tuple[Band, ...]
    #: canonical names of red, green, blue (None: no true colour)
    rgb: tuple[str, str, str] | None = None
    #: modality names (lower case, alphanumerics only) read with this sensor's table
    modality_names: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band | None:
        """The band of canonical name ``name``, else None."""
        for band in self.bands:
            if band.name == name:
                return band
        return None


#: C-band (5.405 GHz) wavelength in micrometres: c / f.
_C_BAND_UM = 299_792_458.0 / 5.405e9 * 1e6

SENTINEL2 = Sensor(
    "s2", "Sentinel-2 MSI",
    (
        Band("B1", 0.443, 60, "coastal"), Band("B2", 0.490, 10, "blue"), Band("B3", 0.560, 10, "green"),
        Band("B4", 0.665, 10, "red"), Band("B5", 0.705, 20, "rededge"), Band("B6", 0.740, 20, "rededge"),
        Band("B7", 0.783, 20, "rededge"), Band("B8", 0.842, 10, "nir"), Band("B8A", 0.865, 20, "nir08"),
        Band("B9", 0.945, 60, "nir09"), Band("B10", 1.375, 60, "cirrus"), Band("B11", 1.610, 20, "swir16"),
        Band("B12", 2.190, 20, "swir22"),
    ),
    rgb=("B4", "B3", "B2"),
    modality_names=("s2", "s2c", "s2l1c", "s2l2a", "sentinel2", "sentinel2l1c", "sentinel2l2a"),
)
SENTINEL1 = Sensor(
    "s1", "Sentinel-1 C-SAR",
    (Band("VV", _C_BAND_UM, 10), Band("VH", _C_BAND_UM, 10), Band("HH", _C_BAND_UM, 10),
     Band("HV", _C_BAND_UM, 10)),
    modality_names=("s1", "s1grd", "sentinel1", "sentinel1grd"),
)
LANDSAT = Sensor(
    "landsat", "Landsat 8/9 OLI/TIRS",
    (
        Band("B1", 0.443, 30, "coastal"), Band("B2", 0.482, 30, "blue"), Band("B3", 0.561, 30, "green"),
        Band("B4", 0.655, 30, "red"), Band("B5", 0.865, 30, "nir08"), Band("B6", 1.609, 30, "swir16"),
        Band("B7", 2.201, 30, "swir22"), Band("B8", 0.590, 15, "pan"), Band("B9", 1.373, 30, "cirrus"),
        Band("B10", 10.895, 100, "lwir11"), Band("B11", 12.005, 100, "lwir12"),
    ),
    rgb=("B4", "B3", "B2"),
    modality_names=("landsat", "landsat8", "landsat9", "l8", "l9", "oli", "lc08", "lc09"),
)
#: HLS v2 (S30 + L30, bandpass-adjusted to Sentinel-2 MSI) with TerraTorch's ``HLSBands`` names; the
#: optical wavelengths are MSI's (HLS harmonises Landsat to them), the thermal ones Landsat TIRS's.
HLS = Sensor(
    "hls", "HLS v2 (harmonised Landsat Sentinel-2)",
    (
        Band("COASTAL_AEROSOL", 0.443, 30, "coastal"), Band("BLUE", 0.490, 30, "blue"),
        Band("GREEN", 0.560, 30, "green"), Band("RED", 0.665, 30, "red"),
        Band("RED_EDGE_1", 0.705, 30, "rededge"), Band("RED_EDGE_2", 0.740, 30, "rededge"),
        Band("RED_EDGE_3", 0.783, 30, "rededge"), Band("NIR_BROAD", 0.842, 30, "nir"),
        Band("NIR_NARROW", 0.865, 30, "nir08"), Band("WATER_VAPOR", 0.945, 30, "nir09"),
        Band("CIRRUS", 1.375, 30, "cirrus"), Band("SWIR_1", 1.610, 30, "swir16"), Band("SWIR_2", 2.190, 30, "swir22"),
        Band("THERMAL_INFRARED_1", 10.895, 30, "lwir11"), Band("THERMAL_INFRARED_2", 12.005, 30, "lwir12"),
    ),
    rgb=("RED", "GREEN", "BLUE"),
    modality_names=("hls", "hlss30", "hlsl30"),
)
SENSORS: tuple[Sensor, ...] = (SENTINEL2, SENTINEL1, LANDSAT, HLS)

# ----------------------------------------------------------------------------- published band tables
#: Sentinel-2 L1C, 13 bands in product order (SSL4EO-S12, Sen1Floods11, the CromSS release).
S2_L1C_BANDS: tuple[str, ...] = SENTINEL2.names
#: Sentinel-2 L2A, 12 bands (no B10 cirrus; BigEarthNet, SSL4EO-S12 L2A).
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_L1C_BANDS if b != "B10")
#: Indices into :data:`S2_L1C_BANDS` of the 9 high-resolution bands (drops B1, B8A, B9, B10; as Satlas).
S2_9BAND_INDICES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 11, 12)
#: The 9-band CromSS input (B2..B8, B11, B12).
S2_9BANDS: tuple[str, ...] = tuple(S2_L1C_BANDS[i] for i in S2_9BAND_INDICES)
#: Sentinel-1 GRD dual polarisation as SSL4EO-S12 and CromSS read it.
S1_BANDS: tuple[str, ...] = ("VV", "VH")
#: Landsat 8/9 Collection-2 Level-1, 11 bands (Satlas' Landsat input).
LANDSAT_OLI_BANDS: tuple[str, ...] = LANDSAT.names
#: The 6 HLS bands of Prithvi / TerraTorch.
HLS_BANDS: tuple[str, ...] = ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
#: Backwards-compatible name of the 13-band table.
S2_BANDS: tuple[str, ...] = S2_L1C_BANDS

#: Published band tables of a sensor by band count: a file or weights that record no band names but
#: have this many bands are read in this order.
KNOWN_TABLES: dict[tuple[str, int], tuple[str, ...]] = {
    ("s2", 13): S2_L1C_BANDS, ("s2", 12): S2_L2A_BANDS, ("s2", 9): S2_9BANDS, ("s1", 2): S1_BANDS,
    ("landsat", 11): LANDSAT_OLI_BANDS, ("hls", 6): HLS_BANDS,
}

#: The value DOFA's published code feeds for a SAR band (zhu-xlab/DOFA README, Sentinel-1: 5.405, the
#: C-band centre frequency in GHz); the CromSS authors' fine-tuning code fed 3.75 (docs/transfer.md).
DOFA_SAR_VALUE: float = 5.405


def s2_band_names(num_bands: int) -> tuple[str, ...]:
    """Band names of the 13-band or 9-band Sentinel-2 input of the built-in datasets."""
    if num_bands == 13:
        return S2_L1C_BANDS
    if num_bands == 9:
        return S2_9BANDS
    raise ValueError(f"Sentinel-2 input must have 13 or 9 bands, got {num_bands}")


def modality_bands(modality: str, s2_bands: int = 13) -> tuple[str, ...]:
    """Band names, in input order, of the built-in modality ``'s1'`` or ``'s2'``."""
    if modality == "s1":
        return S1_BANDS
    if modality == "s2":
        return s2_band_names(s2_bands)
    raise ValueError(f"unknown modality {modality!r}; expected 's1' or 's2'")


# ----------------------------------------------------------------------------- spelling
_NUMBERED = re.compile(r"^B0*(\d{1,2})(A?)(?:[_\-.]\d{1,3}M)?$")
_POLARISATION = re.compile(r"^(VV|VH|HH|HV)(?:[_\-.]\d{1,3}M)?$")
_LANDSAT_C2 = re.compile(r"^(?:SR|ST)_B0*(\d{1,2})$")


def sensor_of(modality: str | None) -> Sensor | None:
    """The sensor a modality name stands for (module doc), or None for a sensor cromss does not know."""
    if not modality:
        return None
    key = re.sub(r"[^a-z0-9]", "", str(modality).lower())
    for sensor in SENSORS:
        if key in sensor.modality_names:
            return sensor
    return None


def canonical(name: str, modality: str | None = None) -> str:
    """The canonical spelling of band ``name`` in ``modality``'s sensor context (module doc).

    Numbered bands become ``B<n>[A]`` (``b01_60m`` -> ``B1``, ``B08A`` -> ``B8A``), polarisations upper
    case; inside a sensor its aliases map to its names (Landsat ``SR_B4`` -> ``B4``; HLS ``nir-narrow`` ->
    ``NIR_NARROW``). Any other name comes back trimmed (it is compared case-insensitively, see
    :func:`band_key`).
    """
    text = str(name).strip()
    upper = text.upper()
    sensor = sensor_of(modality)
    if sensor is LANDSAT and (match := _LANDSAT_C2.match(upper)):
        upper = f"B{match.group(1)}"
    if sensor is HLS:
        hls = re.sub(r"[\s\-]+", "_", upper)
        if hls in HLS.names:
            return hls
    if match := _NUMBERED.match(upper):
        return f"B{int(match.group(1))}{match.group(2)}"
    if match := _POLARISATION.match(upper):
        return match.group(1)
    return text


def band_key(name: str, modality: str | None = None) -> str:
    """The key two names of one modality are compared by (upper case canonical): equal keys = one band."""
    return canonical(name, modality).upper()


def same_band(a: str, b: str, modality: str | None = None) -> bool:
    """True when ``a`` and ``b`` name the same band of ``modality``."""
    return band_key(a, modality) == band_key(b, modality)


def canonical_bands(names: Iterable[str], modality: str | None = None) -> list[str]:
    """:func:`canonical` of every name."""
    return [canonical(n, modality) for n in names]


def same_bands(a: Sequence[str], b: Sequence[str], modality: str | None = None) -> bool:
    """True when the lists name the same bands in the same order."""
    return len(a) == len(b) and all(same_band(x, y, modality) for x, y in zip(a, b, strict=True))


def duplicates(names: Sequence[str], modality: str | None = None) -> list[tuple[str, str]]:
    """Pairs ``(first, again)`` of names of ``names`` that are one band (``B1`` and ``B01``, ``B1`` twice)."""
    seen: dict[str, str] = {}
    out = []
    for name in names:
        key = band_key(name, modality)
        if key in seen:
            out.append((seen[key], str(name)))
        else:
            seen[key] = str(name)
    return out


def duplicate_text(names: Sequence[str], modality: str | None = None) -> str | None:
    """One phrase naming the first duplicated band of ``names`` (None when all are distinct)."""
    found = duplicates(names, modality)
    if not found:
        return None
    first, again = found[0]
    if first == again:
        return f"band {first!r} is listed twice"
    return f"{first!r} and {again!r} are one band ({canonical(first, modality)})"


def positions(available: Sequence[str], wanted: Sequence[str], modality: str | None = None) -> list[int | None]:
    """Position in ``available`` of each band of ``wanted`` (None where ``available`` lacks it)."""
    index: dict[str, int] = {}
    for i, name in enumerate(available):
        index.setdefault(band_key(name, modality), i)
    return [index.get(band_key(name, modality)) for name in wanted]


def missing_bands(available: Sequence[str], wanted: Sequence[str], modality: str | None = None) -> list[str]:
    """The bands of ``wanted`` that ``available`` lacks, as ``wanted`` spells them."""
    return [w for w, p in zip(wanted, positions(available, wanted, modality), strict=True) if p is None]


def contains(available: Sequence[str], name: str, modality: str | None = None) -> bool:
    """True when ``available`` holds band ``name``."""
    return positions(available, [name], modality)[0] is not None


def pick(available: Sequence[str], wanted: Sequence[str], modality: str | None = None) -> list[int]:
    """Positions in ``available`` of the ``wanted`` bands, in wanted order; ValueError naming the bands
    ``available`` lacks (callers turn it into their own one-line error)."""
    found = positions(available, wanted, modality)
    lacking = [w for w, p in zip(wanted, found, strict=True) if p is None]
    if lacking:
        raise ValueError(f"lacks band(s) {lacking}")
    return [int(p) for p in found if p is not None]


def spelled_as(available: Sequence[str], wanted: Sequence[str], modality: str | None = None) -> list[str]:
    """``wanted`` spelled as ``available`` spells the same bands (unknown ones as given)."""
    return [available[p] if p is not None else w
            for w, p in zip(wanted, positions(available, wanted, modality), strict=True)]


def description_conflict(descriptions: Sequence[str | None], declared: Sequence[str],
                         modality: str | None = None) -> str | None:
    """Why a file's band descriptions contradict the declared band list, else None.

    Descriptions that name the declared bands in ANOTHER order, or a declared band at another position,
    contradict it (``B02, B01`` for declared ``B1, B2``: the bands would be silently swapped). Files without
    descriptions, with another band count, or whose descriptions name none of the declared bands
    (``Band 1``, ...) do not: they are taken in the declared order.
    """
    found = [str(d).strip() if d else "" for d in descriptions]
    if len(found) != len(declared) or not any(found):
        return None
    if not any(f and contains(declared, f, modality) for f in found):
        return None
    if same_bands(found, declared, modality):
        return None
    return (f"its band descriptions are {found}, but the bands are declared as {list(declared)} (by name "
            f"{canonical_bands(found, modality)} vs {canonical_bands(declared, modality)})")


def known_table(modality: str | None, count: int | None) -> tuple[str, ...] | None:
    """The published band table of ``modality``'s sensor with ``count`` bands (:data:`KNOWN_TABLES`)."""
    sensor = sensor_of(modality)
    if sensor is None or count is None:
        return None
    return KNOWN_TABLES.get((sensor.key, int(count)))


# ----------------------------------------------------------------------------- facts
def band_info(name: str, modality: str | None) -> Band | None:
    """The :class:`Band` of ``name`` in ``modality``'s sensor, else None (unknown sensor or name)."""
    sensor = sensor_of(modality)
    return sensor.band(canonical(name, modality)) if sensor is not None else None


def gsd_m(name: str, modality: str | None) -> float | None:
    """Native ground sampling distance (m) of a band, else None."""
    info = band_info(name, modality)
    return info.gsd_m if info is not None else None


def wavelength_um(name: str, modality: str | None) -> float | None:
    """Centre wavelength (µm) of a band, else None."""
    info = band_info(name, modality)
    return info.wavelength_um if info is not None else None


def dofa_wavelengths(bands: Sequence[str], modality: str | None) -> list[float]:
    """The values DOFA's wavelength-conditioned patch embedding is fed for ``bands`` (module doc);
    ValueError naming the bands without one."""
    sensor = sensor_of(modality)
    out, unknown = [], []
    for name in bands:
        if sensor is SENTINEL1 and band_info(name, modality) is not None:
            out.append(DOFA_SAR_VALUE)
            continue
        value = wavelength_um(name, modality)
        if value is None:
            unknown.append(name)
        else:
            out.append(value)
    if unknown:
        raise ValueError(f"no wavelength known for band(s) {unknown} of modality {modality!r}")
    return out


def true_color(bands: Sequence[str], modality: str | None) -> tuple[int, int, int] | None:
    """Positions in ``bands`` of red, green, blue: the sensor's true-colour triple (S2 / Landsat B4, B3, B2;
    HLS RED, GREEN, BLUE), else bands named ``red``, ``green``, ``blue`` (or ``r``, ``g``, ``b``); None
    when the input holds no such three."""
    sensor = sensor_of(modality)
    candidates = [sensor.rgb] if sensor is not None and sensor.rgb else []
    candidates += [("red", "green", "blue"), ("r", "g", "b")]
    for triple in candidates:
        found = positions(bands, list(triple), modality)
        if all(p is not None for p in found):
            return (int(found[0]), int(found[1]), int(found[2]))  # type: ignore[arg-type]
    return None


# ----------------------------------------------------------------------------- the docs table
#: Rows of the table "which names cromss treats as the same band" (docs/data.md); a test checks every
#: row against :func:`canonical`: (modality, canonical, spellings that are the same band, names that are NOT).
SAME_BAND_EXAMPLES: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("s2", "B1", ("B1", "B01", "b01", "B01_60m", " B1 "), ("B10", "B11")),
    ("s2", "B8", ("B8", "B08", "b08", "B08_10m"), ("B8A",)),
    ("s2", "B8A", ("B8A", "B08A", "b8a", "B8A_20m"), ("B8",)),
    ("s2", "B12", ("B12", "b12", "B12_20m"), ("B1", "B2")),
    ("s1", "VV", ("VV", "vv", "VV_10m"), ("VH",)),
    ("landsat", "B4", ("B4", "B04", "SR_B4"), ()),
    ("hls", "NIR_NARROW", ("NIR_NARROW", "nir_narrow", "nir-narrow"), ("NIR_BROAD",)),
    ("optical", "ndvi", ("ndvi", "NDVI", " Ndvi"), ("nir", "B8")),
)
