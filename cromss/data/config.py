"""``data:`` section of a cromss config."""

from __future__ import annotations

from dataclasses import dataclass, field

from cromss.errors import ConfigError

KINDS: tuple[str, ...] = ("nol", "dw", "osm", "dfc2020")
FORMATS: tuple[str, ...] = ("auto", "lmdb", "geotiff")


@dataclass
class DataConfig:
    """Which dataset to read and how to feed it (YAML section ``data:``).

    ``kind``: 'nol' (pretraining SSL4EO-S12@NoL), 'dw' / 'osm' (SSL4EO-S12@DW / @OSM tiles) or
    'dfc2020'. ``root``: the dataset folder (a folder holding ``nol/`` or ``dw/``, as written by
    ``cromss data make-demo``, works too). ``format``: 'lmdb' or 'geotiff' layout of 'nol';
    'auto' detects it. See docs/data.md for the exact layouts.
    """

    kind: str = "nol"
    root: str = "data"
    format: str = "auto"
    modalities: list[str] = field(default_factory=lambda: ["s1", "s2"])
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
    #: band statistics JSON files for raw GeoTIFF inputs; None = packaged SSL4EO-S12 statistics
    s1_stats: str | None = None
    s2_stats: str | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the key of an impossible value."""
        if self.kind not in KINDS:
            raise ConfigError(f"data.kind: {self.kind!r} is not one of {list(KINDS)}")
        if self.format not in FORMATS:
            raise ConfigError(f"data.format: {self.format!r} is not one of {list(FORMATS)}")
        if not self.modalities or any(m not in ("s1", "s2") for m in self.modalities):
            raise ConfigError(f"data.modalities: {self.modalities!r} must be a non-empty subset of ['s1', 's2']")
        if len(set(self.modalities)) != len(self.modalities):
            raise ConfigError(f"data.modalities: {self.modalities!r} lists a modality twice")
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
        if not 0 <= self.season < 4:
            raise ConfigError(f"data.season: {self.season} must be 0..3")
        if self.eval_seasons not in ("all", "first"):
            raise ConfigError(f"data.eval_seasons: {self.eval_seasons!r} must be 'all' or 'first'")
        if self.persistent_workers and self.num_workers == 0:
            raise ConfigError("data.persistent_workers: true needs data.num_workers >= 1")
