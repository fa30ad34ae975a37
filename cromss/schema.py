"""Class tables, label conventions and dataset statistics: the one place these facts live.

Every other module imports from here; nothing else hard-codes a class id or a normalisation statistic.
Band names and band facts are :mod:`cromss.bands` (its tables are re-exported here for compatibility).
"""

from __future__ import annotations

from dataclasses import dataclass

# band names and band facts live in cromss.bands; these names stay importable from here
from cromss.bands import (  # noqa: F401
    S1_BANDS,
    S2_9BAND_INDICES,
    S2_9BANDS,
    S2_BANDS,
    modality_bands,
    s2_band_names,
)

#: Label value of unlabeled / masked pixels in every tensor cromss produces (as the authors' code).
IGNORE_INDEX: int = 255

#: Number of seasonal acquisitions per SSL4EO-S12 location.
NUM_SEASONS: int = 4

#: SSL4EO-S12 band statistics (50k-sample subset, per band of cromss.bands.S2_L1C_BANDS / S1_BANDS),
#: used for mean +/- 2 std clipping.
S1_MEAN: tuple[float, ...] = (-12.54847273, -20.19237134)
S1_STD: tuple[float, ...] = (5.25697717, 5.91150917)
S2_MEAN: tuple[float, ...] = (
    1605.57504906, 1390.78157673, 1314.8729939, 1363.52445545, 1549.44374991, 2091.74883118,
    2371.7172463, 2299.90463006, 2560.29504086, 830.06605044, 22.10351321, 2177.07172323,
    1524.06546312,
)
S2_STD: tuple[float, ...] = (
    786.78685367, 850.34818441, 875.06484736, 1138.84957046, 1122.17775652, 1161.59187054,
    1274.39184232, 1248.42891965, 1345.52684884, 577.31607053, 51.15431158, 1336.09932639,
    1136.53823676,
)


# ----------------------------------------------------------------------------- classes
@dataclass(frozen=True)
class ClassTable:
    """Names and display colours (hex) of a label schema; class ids are 0..len-1."""

    name: str
    names: tuple[str, ...]
    colors: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)


#: Dynamic World v1, 9 classes (ids 0..8), with the official DW palette.
DW_CLASSES = ClassTable(
    "dynamic_world",
    ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare",
     "snow_and_ice"),
    ("#419BDF", "#397D49", "#88B053", "#7A87C6", "#E49635", "#DFC35A", "#C4281B", "#A59B8F",
     "#B39FE1"),
)

#: OSMLanduse 13-class schema of SSL4EO-S12@OSM (CORINE level-2-like, Schultz et al. 2017).
#: Published tile values 1..13 map to ids 0..12. The ids and Table I relations are authoritative;
#: the names are our reading of the OSMLanduse legend.
OSM_CLASSES = ClassTable(
    "osm_landuse",
    ("urban_fabric", "industrial_commercial_transport", "arable_land", "urban_green",
     "forest", "open_spaces_bare", "water_bodies", "open_spaces_little_vegetation", "pastures",
     "shrub_and_herbaceous", "permanent_crops", "inland_wetlands", "coastal_wetlands"),
    ("#E6004D", "#CC4DF2", "#FFFFA8", "#FFA6FF", "#4DFF00", "#CCCCCC", "#80F2E6",
     "#E6E6E6", "#E6E64D", "#A6F200", "#F2A64D", "#A6A6FF", "#4D4DFF"),
)

#: DFC2020 remapped to the first 8 Dynamic World classes (savanna and snow/ice are ignored).
DFC2020_CLASSES = ClassTable("dfc2020_dw8", DW_CLASSES.names[:8], DW_CLASSES.colors[:8])

#: DFC2020 original ids (1..10) -> DW ids; ids not listed become IGNORE_INDEX.
#: forest->trees, shrubland->shrub, grassland->grass, wetlands->flooded veg., croplands->crops,
#: urban->built, barren->bare, water->water (as the authors' release).
DFC2020_TO_DW: dict[int, int] = {1: 1, 2: 5, 4: 2, 5: 3, 6: 4, 7: 6, 9: 7, 10: 0}

#: Table I of the paper: OSM label id (1..13, as published) -> admissible DW class ids.
OSM_TO_DW: dict[int, tuple[int, ...]] = {
    1: (6,), 2: (6,), 3: (4,), 4: (1, 2), 5: (1,), 6: (7,), 7: (0,), 8: (7, 8), 9: (2,),
    10: (2, 5), 11: (1, 4), 12: (3,), 13: (0, 3),
}

CLASS_TABLES: dict[str, ClassTable] = {
    "dw": DW_CLASSES, "nol": DW_CLASSES, "osm": OSM_CLASSES, "dfc2020": DFC2020_CLASSES,
}
