"""Band handling of the baselines: which input bands a baseline takes, by name, and their wavelengths.

No band facts live here: names are compared and wavelengths looked up through :mod:`cromss.bands`.
"""

from __future__ import annotations

from collections.abc import Sequence

from cromss import bands as band_ids
from cromss.errors import ConfigError

#: The values DOFA conditions its patch embedding on, per band name of the built-in modalities
#: (:func:`cromss.bands.dofa_wavelengths`: Sentinel-2 nominal centre wavelengths in µm = DOFA's
#: published wave list; SAR bands DOFA's published 5.405).
WAVELENGTHS_UM: dict[str, float] = {
    **dict(zip(band_ids.S2_L1C_BANDS, band_ids.dofa_wavelengths(band_ids.S2_L1C_BANDS, "s2"), strict=True)),
    **dict(zip(band_ids.S1_BANDS, band_ids.dofa_wavelengths(band_ids.S1_BANDS, "s1"), strict=True)),
}


def _modality_of(bands: Sequence[str]) -> str:
    """'s1' for polarisation names, else 's2' (callers that know the modality pass it)."""
    return "s1" if bands and all(band_ids.canonical(b) in band_ids.SENTINEL1.names for b in bands) else "s2"


def band_indices(available: Sequence[str], wanted: Sequence[str], who: str, modality: str | None = None) -> list[int]:
    """Positions in ``available`` (the input's band names) of the ``wanted`` bands, in wanted order, BY
    NAME (``B02`` is ``B2``); ConfigError naming the bands the input lacks."""
    modality = modality or _modality_of(wanted)
    missing = band_ids.missing_bands(available, wanted, modality)
    if missing:
        raise ConfigError(
            f"{who} takes bands {list(wanted)} but the input has {list(available)} (missing {missing}); "
            "choose the modality / s2_bands that hold them"
        )
    return band_ids.pick(available, wanted, modality)


def wavelengths(bands: Sequence[str], modality: str | None = None) -> list[float]:
    """DOFA's values of ``bands`` (:func:`cromss.bands.dofa_wavelengths`)."""
    try:
        return band_ids.dofa_wavelengths(bands, modality or _modality_of(bands))
    except ValueError as err:
        raise ConfigError(f"{err}; known: {sorted(WAVELENGTHS_UM)}") from None
