"""Config resolution: a run's ``data:`` section filled in and checked against its dataset description.

``resolve_data_config`` fills ``modalities``, ``bands``, ``classes`` / ``class_colors`` and records the band
statistics files used (``resolve_stats``); ``class_table_of`` gives the class table of a data section.
The description itself (dataset.yaml, sample table, built-in tables) is :mod:`cromss.data.description`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cromss import schema
from cromss.data.description import (
    _PALETTE,
    STATS_DIR,
    DatasetDescription,
    builtin_description,
    load_description,
)
from cromss.errors import DataError


def describe(cfg: Any) -> DatasetDescription:
    """The description of the dataset a :class:`~cromss.data.config.DataConfig` points to."""
    if getattr(cfg, "format", None) == "stream":
        from cromss.data.stream import stream_description  # the stream's own copy of the description

        return stream_description(cfg.root)
    if cfg.kind == "generic":
        return load_description(cfg.root)
    return builtin_description(cfg.kind, cfg.s2_bands, cfg.root)


def is_resolved(cfg: Any) -> bool:
    """True when modalities, bands and classes are all filled in (no need to read the dataset again)."""
    return (cfg.modalities is not None and cfg.classes is not None and cfg.class_colors is not None
            and cfg.bands is not None and all(m in cfg.bands for m in cfg.modalities))


def resolve_data_config(cfg: Any) -> Any:
    """A copy of ``cfg`` (DataConfig) with modalities, bands and classes filled in from the dataset.

    Values the user set are checked against the dataset: an unknown modality, a band the dataset lacks
    or a different class list is a ConfigError naming the key. A resolved config is not read again,
    so a checkpoint's config never needs the dataset folder again. The statistics files used are
    recorded (:func:`resolve_stats`).
    """
    from dataclasses import replace

    from cromss.errors import ConfigError

    if is_resolved(cfg):
        return resolve_stats(cfg)
    try:
        description = describe(cfg)
    except DataError as err:
        raise DataError(f"data.root: {err}") from None
    modalities = list(cfg.modalities) if cfg.modalities is not None else list(description.modalities)
    unknown = [m for m in modalities if m not in description.modalities]
    if unknown:
        raise ConfigError(
            f"config key 'data.modalities': {unknown[0]!r} is not a modality of dataset {description.name} "
            f"(it has {list(description.modalities)})"
        )
    bands: dict[str, list[str]] = {}
    for modality in modalities:
        available = description.bands(modality)
        chosen = list((cfg.bands or {}).get(modality) or available)
        missing = [b for b in chosen if b not in available]
        if missing:
            raise ConfigError(
                f"config key 'data.bands.{modality}': band {missing[0]!r} is not a band of {modality} in dataset "
                f"{description.name} (it has {list(available)})"
            )
        bands[modality] = chosen
    names = list(description.classes.names)
    if cfg.classes is not None and list(cfg.classes) != names:
        raise ConfigError(
            f"config key 'data.classes': {list(cfg.classes)} differs from the classes of dataset "
            f"{description.name}: {names}"
        )
    return resolve_stats(replace(cfg, modalities=modalities, bands=bands, classes=names,
                                 class_colors=list(cfg.class_colors or description.classes.colors)))


#: ``data.s1_stats`` / ``data.s2_stats`` value recorded when a built-in kind uses the packaged statistics.
PACKAGED_STATS = "packaged"


def _builtin_root(cfg: Any) -> Path | None:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        return None
    sub = root / cfg.kind
    if sub.is_dir() and not any(root.glob("*.lmdb")) and not (root / "train").is_dir():
        return sub  # the demo folder holding nol/ and dw/ (as layouts.resolve_root)
    return root


def stats_files(cfg: Any) -> dict[str, str | None]:
    """The band statistics file each modality of a DataConfig is normalised with.

    Built-in kinds ('s1', 's2'): ``data.s1_stats`` / ``data.s2_stats`` when set (``'packaged'`` = the
    SSL4EO-S12 statistics shipped with cromss), else ``<root>/stats/<m>_stats.json`` when it exists
    (written by ``cromss data stats``), else the packaged statistics (None). Generic data:
    ``data.stats.<m>``, else the file ``dataset.yaml`` names or ``<root>/stats/<m>_stats.json``
    (None = none found).
    """
    if cfg.kind != "generic":
        root = _builtin_root(cfg)
        out: dict[str, str | None] = {}
        for modality in ("s1", "s2"):
            explicit = getattr(cfg, f"{modality}_stats")
            if explicit is not None:
                out[modality] = None if explicit == PACKAGED_STATS else str(explicit)
                continue
            found = root / STATS_DIR / f"{modality}_stats.json" if root is not None else None
            out[modality] = str(found) if found is not None and found.is_file() else None
        return out
    given = dict(cfg.stats or {})
    missing = [m for m in (cfg.modalities or []) if m not in given]
    if missing or cfg.modalities is None:
        try:
            description = load_description(cfg.root)
        except DataError:
            return {m: str(p) for m, p in given.items()}
        for modality in cfg.modalities or description.modalities:
            if modality not in given and modality in description.modalities:
                path = description.stats_path(modality)
                given[modality] = str(path) if path is not None else None
    return {m: (str(p) if p is not None else None) for m, p in given.items()}


def resolve_stats(cfg: Any) -> Any:
    """A copy of ``cfg`` recording the statistics files it uses (:func:`stats_files`), so a run folder
    and its checkpoints say which statistics were used and later commands use the same ones.

    Built-in kinds: ``data.s1_stats`` / ``data.s2_stats`` become the file found or ``'packaged'``.
    Generic: ``data.stats`` gains the file of each modality found. Values already set are kept.
    """
    from dataclasses import replace

    files = stats_files(cfg)
    if cfg.kind != "generic":
        return replace(cfg, **{f"{m}_stats": getattr(cfg, f"{m}_stats") or files[m] or PACKAGED_STATS
                               for m in ("s1", "s2")})
    found = {m: p for m, p in files.items() if p is not None}
    return replace(cfg, stats=found or cfg.stats)


def class_table_of(cfg: Any) -> schema.ClassTable:
    """The class table of a DataConfig: its resolved ``classes`` / ``class_colors``, else the built-in table."""
    if cfg.classes is not None:
        colors = list(cfg.class_colors or [])
        colors += [_PALETTE[i % len(_PALETTE)] for i in range(len(colors), len(cfg.classes))]
        builtin = schema.CLASS_TABLES.get(cfg.kind)
        name = builtin.name if builtin is not None and list(builtin.names) == list(cfg.classes) else cfg.kind
        return schema.ClassTable(name, tuple(cfg.classes), tuple(colors[: len(cfg.classes)]))
    if cfg.kind in schema.CLASS_TABLES:
        return schema.CLASS_TABLES[cfg.kind]
    return describe(cfg).classes
