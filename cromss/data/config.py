"""``data:`` section of a cromss config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cromss.bands import duplicate_text
from cromss.errors import ConfigError

KINDS: tuple[str, ...] = ("nol", "dw", "osm", "dfc2020", "generic")
#: The built-in layouts (their modalities are always 's1' and 's2').
BUILTIN_KINDS: tuple[str, ...] = ("nol", "dw", "osm", "dfc2020")
FORMATS: tuple[str, ...] = ("auto", "lmdb", "geotiff", "stream")


@dataclass
class DataConfig:
    """Which dataset to read and how to feed it (YAML section ``data:``).

    ``kind``: 'nol' (pretraining SSL4EO-S12@NoL), 'dw' / 'osm' (SSL4EO-S12@DW / @OSM tiles),
    'dfc2020', or 'generic' (any data: a folder with ``dataset.yaml`` + ``samples.csv``). ``root``: the
    dataset folder (a folder holding ``nol/`` or ``dw/``, as written by ``cromss data make-demo``,
    works too). ``format``: 'lmdb' or 'geotiff' layout of 'nol'; 'auto' detects it; 'stream' = a litdata
    stream written by ``cromss data convert SRC OUT --to stream`` (any kind; ``root`` a folder or an
    object-store URL such as ``s3://bucket/nol``). See docs/data.md.

    ``modalities`` None = every modality of the dataset ('s1', 's2' for the built-in kinds).
    ``bands`` (optional, per modality): the band names fed to the model, a subset or reordering BY NAME
    of the dataset's bands; None = all of them. ``classes`` / ``class_colors``: filled in from the
    dataset when a run resolves its config (so checkpoints carry them); set by hand they must agree.
    ``stats`` (generic): band statistics file per modality; None = the dataset's ``stats/`` folder.
    ``nodata`` (per modality ``{value, rule}``), ``label_values`` and ``label_nodata`` (generic data) are the
    dataset's nodata rules and label conventions: filled in when a run resolves its config, so commands
    that read no dataset (``cromss predict``) apply the run's own rules; set by hand they must agree.
    """

    kind: str = "nol"
    root: str = "data"
    format: str = "auto"
    modalities: list[str] | None = None
    bands: dict[str, list[str]] | None = None
    classes: list[str] | None = None
    class_colors: list[str] | None = None
    stats: dict[str, str] | None = None
    s2_bands: int = 13
    #: side of the random training crop (paper: 256); None = no crop. Val/test use the full tile.
    crop_size: int | None = 256
    #: optional centre crop for val/test (None = full tile, the default)
    eval_crop: int | None = None
    batch_size: int = 16
    num_workers: int = 0
    val_fraction: float = 0.01
    pin_memory: bool = False
    persistent_workers: bool = False
    augment: bool = True
    rotate_p: float = 0.2
    flip_p: float = 0.5
    #: training: draw the season per sample; False = always ``season``
    random_season: bool = True
    #: season fed when ``random_season`` is False (training) and when ``eval_seasons`` is 'first'
    season: int = 0
    #: val/test of 'nol': 'all' = every location once per season (deterministic), 'first' = ``season`` only
    eval_seasons: str = "all"
    seed: int = 0
    #: keep only the first N samples of each split (quick runs); None = all
    max_samples: int | None = None
    #: band statistics JSON files for raw GeoTIFF inputs of the built-in kinds; None = ``<root>/stats/<m>_stats.json``
    #: when ``cromss data stats`` wrote it, else the packaged SSL4EO-S12 statistics; 'packaged' = those.
    #: A run records the file it used here (docs/data.md, "Band statistics").
    s1_stats: str | None = None
    s2_stats: str | None = None
    #: nodata per modality, ``{value: number or null (= the file's), rule: any | all}``; recorded by runs
    nodata: dict[str, dict[str, Any]] | None = None
    #: raw label value -> class id of a generic dataset (its ``label_values``); recorded by runs
    label_values: dict[int, int] | None = None
    #: ``label_nodata`` of a generic dataset: 'ignore' | 'keep' | null; recorded by runs
    label_nodata: str | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the key of an impossible value."""
        if self.kind not in KINDS:
            raise ConfigError(f"data.kind: {self.kind!r} is not one of {list(KINDS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"data.format: {self.format!r} is not one of {list(FORMATS)}")
        if self.modalities is not None:
            if not self.modalities:
                raise ConfigError("data.modalities: an empty list; omit the key to use every modality of the dataset")
            if self.kind in BUILTIN_KINDS and any(m not in ("s1", "s2") for m in self.modalities):
                raise ConfigError(
                    f"data.modalities: {self.modalities!r} must be a non-empty subset of ['s1', 's2'] for "
                    f"data.kind '{self.kind}' (use data.kind 'generic' for other sensors)"
                )
            if len(set(self.modalities)) != len(self.modalities):
                raise ConfigError(f"data.modalities: {self.modalities!r} lists a modality twice")
        for modality, bands in (self.bands or {}).items():
            twice = duplicate_text(bands, modality) if bands else None
            if not bands or twice:
                raise ConfigError(f"data.bands.{modality}: {bands!r} must list distinct band names"
                                  + (f" ({twice})" if twice else ""))
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError(f"data.classes: {self.classes!r} must list at least 2 classes")
        if self.s2_bands not in (13, 9):
            raise ConfigError(f"data.s2_bands: {self.s2_bands} must be 13 or 9")
        for key in ("crop_size", "eval_crop", "max_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key}: {value} must be >= 1 or null")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size: {self.batch_size} must be >= 1")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers: {self.num_workers} must be >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction: {self.val_fraction} must be in (0, 1)")
        for key in ("rotate_p", "flip_p"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.{key}: {value} must be a probability in [0, 1]")
        if self.season < 0 or (self.kind in BUILTIN_KINDS and self.season > 3):
            raise ConfigError(f"data.season: {self.season} must be 0..3 (the timestamp index; >= 0 for generic data)")
        if self.eval_seasons not in ("all", "first"):
            raise ConfigError(f"data.eval_seasons: {self.eval_seasons!r} must be 'all' or 'first'")
        if self.persistent_workers and self.num_workers == 0:
            raise ConfigError("data.persistent_workers: true needs data.num_workers >= 1")
        for modality, rule in (self.nodata or {}).items():
            if (not isinstance(rule, dict) or set(rule) - {"value", "rule"} or rule.get("rule", "all") not in ("any", "all")
                    or not (rule.get("value") is None or isinstance(rule.get("value"), int | float))):
                raise ConfigError(f"data.nodata.{modality}: {rule!r} must be {{value: number or null, rule: any | all}}")
        if self.label_nodata not in (None, "ignore", "keep"):
            raise ConfigError(f"data.label_nodata: {self.label_nodata!r} must be 'ignore', 'keep' or null")

    def modality_list(self) -> list[str]:
        """The configured modalities; the built-in default ['s1', 's2'] when unresolved."""
        return list(self.modalities) if self.modalities is not None else ["s1", "s2"]
