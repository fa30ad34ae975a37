"""Band handling of the baselines: which input bands a baseline takes, by name, and their wavelengths."""

from __future__ import annotations

from collections.abc import Sequence

from cromss.errors import ConfigError
from cromss.schema import S1_BANDS, S2_BANDS

#: Centre wavelengths in micrometres that DOFA conditions its patch embedding on, per band name
#: (DOFA's published wave list: Sentinel-2 MSI centre wavelengths, 3.75 for both SAR polarisations).
WAVELENGTHS_UM: dict[str, float] = {
    "B1": 0.44, "B2": 0.49, "B3": 0.56, "B4": 0.665, "B5": 0.705, "B6": 0.74, "B7": 0.783,
    "B8": 0.832, "B8A": 0.864, "B9": 0.945, "B10": 1.373, "B11": 1.61, "B12": 2.20,
    "VV": 3.75, "VH": 3.75,
}
assert set(S2_BANDS) | set(S1_BANDS) <= set(WAVELENGTHS_UM)


def band_indices(available: Sequence[str], wanted: Sequence[str], who: str) -> list[int]:
    """Positions in ``available`` (the input's band names) of the ``wanted`` bands, in wanted order."""
    missing = [band for band in wanted if band not in available]
    if missing:
        raise ConfigError(
            f"{who} takes bands {list(wanted)} but the input has {list(available)} (missing {missing}); "
            "choose the modality / s2_bands that hold them"
        )
    return [list(available).index(band) for band in wanted]


def wavelengths(bands: Sequence[str]) -> list[float]:
    """DOFA wavelengths (micrometres) of ``bands``."""
    unknown = [band for band in bands if band not in WAVELENGTHS_UM]
    if unknown:
        raise ConfigError(f"no wavelength known for band(s) {unknown}; known: {sorted(WAVELENGTHS_UM)}")
    return [WAVELENGTHS_UM[band] for band in bands]
