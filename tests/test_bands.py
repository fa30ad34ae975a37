"""cromss.bands, the one owner of band identity: spellings, sensor context, tables, wavelengths.

References are independent of the code: the spellings are written out by hand, the wavelengths are the
published values (DOFA's README / DOFA-pytorch ``dataset_config.py``; ESA's nominal MSI centres; USGS's
Landsat 8/9 OLI/TIRS table), and docs/data.md's table is parsed and checked row by row.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cromss import bands
from cromss.bands import canonical, same_band

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"


@pytest.mark.parametrize("spelling, expected", [
    ("B1", "B1"), ("B01", "B1"), ("b01", "B1"), ("B01_60m", "B1"), (" B1 ", "B1"), ("B001", "B1"),
    ("B8A", "B8A"), ("B08A", "B8A"), ("b8a", "B8A"), ("B8A_20m", "B8A"), ("B08", "B8"), ("B12_20m", "B12"),
    ("B10", "B10"), ("vv", "VV"), ("VH_10m", "VH"), ("hh", "HH"),
    ("red", "red"), ("NDVI", "NDVI"), ("band 1", "band 1"), ("B10m", "B10m"), ("B100", "B100"),
])
def test_canonical_spellings(spelling, expected):
    assert canonical(spelling) == expected
    assert canonical(spelling, "s2") == expected


def test_near_names_are_different_bands():
    for a, b in [("B8", "B8A"), ("B1", "B10"), ("B1", "B11"), ("B2", "B12"), ("VV", "VH"), ("nir", "B8"),
                 ("red", "B4"), ("band1", "band01"), ("ndvi", "ndwi")]:
        assert not same_band(a, b, "s2"), (a, b)
    assert same_band("NDVI", "ndvi") and same_band(" Ndvi", "ndvi", "optical")


def test_sensor_context_comes_from_the_modality_name():
    assert bands.sensor_of("s2") is bands.SENTINEL2 and bands.sensor_of("Sentinel-2") is bands.SENTINEL2
    assert bands.sensor_of("s2_l2a") is bands.SENTINEL2 and bands.sensor_of("S1") is bands.SENTINEL1
    assert bands.sensor_of("landsat9") is bands.LANDSAT and bands.sensor_of("hls") is bands.HLS
    assert bands.sensor_of("optical") is None and bands.sensor_of(None) is None
    # sensor aliases only inside their sensor
    assert canonical("SR_B4", "landsat") == "B4" and canonical("SR_B4", "s2") == "SR_B4"
    assert canonical("nir-narrow", "hls") == "NIR_NARROW" and canonical("nir-narrow", "s2") == "nir-narrow"
    # the same spelling, two sensors, two bands: Landsat B8 is panchromatic, Sentinel-2 B8 is NIR
    assert bands.wavelength_um("B8", "landsat") == 0.590 and bands.wavelength_um("B8", "s2") == 0.842
    assert bands.gsd_m("B08", "landsat") == 15 and bands.gsd_m("B08", "s2") == 10
    assert bands.wavelength_um("B8", "optical") is None  # a sensor cromss does not know has no facts


def test_positions_pick_and_duplicates():
    available = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    assert bands.positions(available, ["B8", "B4", "B3", "B2", "B10"], "s2") == [7, 3, 2, 1, None]
    assert bands.missing_bands(available, ["B8", "B10", "B8A"], "s2") == ["B10"]
    assert bands.pick(available, ["B4", "B3", "B2"], "s2") == [3, 2, 1]
    with pytest.raises(ValueError, match=r"\['B10'\]"):
        bands.pick(available, ["B10"], "s2")
    assert bands.spelled_as(available, ["B8", "B1", "x"], "s2") == ["B08", "B01", "x"]
    assert bands.duplicates(["B1", "B2", "B01"], "s2") == [("B1", "B01")]
    assert bands.duplicate_text(["B1", "B2", "B01"], "s2") == "'B1' and 'B01' are one band (B1)"
    assert bands.duplicate_text(["B1", "B1"], "s2") == "band 'B1' is listed twice"
    assert bands.duplicate_text(["B8", "B8A"], "s2") is None


def test_description_conflict():
    declared = ["B1", "B2", "B3"]
    assert bands.description_conflict(["B01", "B02", "B03"], declared, "s2") is None
    assert bands.description_conflict([None, None, None], declared, "s2") is None
    assert bands.description_conflict(["Band 1", "Band 2", "Band 3"], declared, "s2") is None
    assert "by name" in bands.description_conflict(["B02", "B01", "B03"], declared, "s2")
    assert bands.description_conflict(["B1", "B2", "B8A"], ["B1", "B2", "B8"], "s2") is not None


def test_published_tables():
    assert bands.S2_L1C_BANDS == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
    assert bands.S2_L2A_BANDS == ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12")
    assert bands.S2_9BANDS == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")
    assert bands.S1_BANDS == ("VV", "VH") and len(bands.LANDSAT_OLI_BANDS) == 11
    assert bands.HLS_BANDS == ("BLUE", "GREEN", "RED", "NIR_NARROW", "SWIR_1", "SWIR_2")
    assert bands.known_table("s2", 12) == bands.S2_L2A_BANDS and bands.known_table("optical", 13) is None
    from cromss import schema

    assert schema.S2_BANDS is bands.S2_L1C_BANDS and schema.modality_bands("s2", 9) == bands.S2_9BANDS


def test_true_colour_by_name_in_any_spelling_and_order():
    assert bands.true_color(["B01", "B02", "B03", "B04"], "s2") == (3, 2, 1)
    assert bands.true_color(["B8", "B4", "B3", "B2"], "s2") == (1, 2, 3)
    assert bands.true_color(["SR_B2", "SR_B3", "SR_B4"], "landsat") == (2, 1, 0)
    assert bands.true_color(["blue", "green", "red", "nir"], "optical") == (2, 1, 0)
    assert bands.true_color(["VV", "VH"], "s1") is None
    # B4/B3/B2 of an unknown sensor are not taken for red/green/blue
    assert bands.true_color(["B2", "B3", "B4"], "optical") is None


def test_dofa_wavelengths_are_dofas_published_list():
    # zhu-xlab/DOFA README, "Load Sentinel-2 data with 9 channels" (B4, B3, B2, B5, B6, B7, B8, B11, B12)
    readme_s2 = [0.665, 0.56, 0.49, 0.705, 0.74, 0.783, 0.842, 1.61, 2.19]
    assert bands.dofa_wavelengths(["B4", "B3", "B2", "B5", "B6", "B7", "B8", "B11", "B12"], "s2") == readme_s2
    # DOFA-pytorch src/dataset_config.py band_wavelengths, all 13 Sentinel-2 bands
    published = [0.443, 0.490, 0.560, 0.665, 0.705, 0.740, 0.783, 0.842, 0.865, 0.945, 1.375, 1.610, 2.190]
    assert bands.dofa_wavelengths(bands.S2_L1C_BANDS, "s2") == published
    assert bands.dofa_wavelengths(["B08", "B12_20m"], "s2") == [0.842, 2.19]  # spellings do not matter
    # README "Load Sentinel-1 data": wavelengths = [5.405, 5.405]
    assert bands.dofa_wavelengths(["VV", "VH"], "s1") == [5.405, 5.405]
    # the physical C-band wavelength stays in the table (c / 5.405 GHz = 5.5466 cm)
    assert bands.wavelength_um("VV", "s1") == pytest.approx(55465.8, abs=0.1)
    with pytest.raises(ValueError, match="ndvi"):
        bands.dofa_wavelengths(["ndvi"], "s2")
    from cromss.baselines.bands import WAVELENGTHS_UM

    assert WAVELENGTHS_UM["B8"] == 0.842 and WAVELENGTHS_UM["B12"] == 2.19 and WAVELENGTHS_UM["VV"] == 5.405


def test_landsat_wavelengths_are_usgs_centres():
    usgs = {"B1": 0.443, "B2": 0.482, "B3": 0.561, "B4": 0.655, "B5": 0.865, "B6": 1.609, "B7": 2.201,
            "B8": 0.590, "B9": 1.373, "B10": 10.895, "B11": 12.005}
    assert {b: bands.wavelength_um(b, "landsat") for b in usgs} == usgs


def _docs_table() -> list[tuple[str, str, list[str], list[str]]]:
    """Rows of docs/data.md's table "Which names cromss treats as the same band"."""
    text = DOCS.read_text()
    section = text[text.index("### Which names cromss treats as the same band"):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("modality", "---") or set(cells[0]) <= {"-"}:
            continue
        names = lambda cell: [n.strip("` ") for n in re.findall(r"`[^`]+`", cell)]  # noqa: E731
        rows.append((cells[0].strip("`"), cells[1].strip("`"), names(cells[2]), names(cells[3])))
    return rows


def test_docs_table_of_same_bands_is_what_the_code_does():
    rows = _docs_table()
    assert len(rows) >= 6
    for modality, expected, same, different in rows:
        for name in same:
            assert canonical(name, modality) == expected or same_band(name, expected, modality), (modality, name)
        for name in different:
            assert not same_band(name, expected, modality), (modality, name)
