"""Config resolution: a run's ``data:`` section filled in and checked against its dataset description.

``resolve_data_config`` fills ``modalities``, ``bands``, ``classes`` / ``class_colors`` and records the band
statistics files used (``resolve_stats``); ``class_table_of`` gives the class table of a data section.
The description itself (dataset.yaml, sample table, built-in tables) is :mod:`cromss.data.description`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cromss import bands as band_ids
from cromss import schema
from cromss.data.description import (
    _PALETTE,
    DatasetDescription,
    builtin_description,
    load_description,
)
from cromss.data.run_stats import PACKAGED_STATS, stats_files  # noqa: F401  (importable from here too)
from cromss.errors import DataError


def absolute_root(root: str) -> str:
    """``root`` as an absolute path (object-store URLs of streams as they are): a run's config names its
    data wherever a later command runs."""
    if "://" in str(root):
        return str(root)
    return str(Path(str(root)).expanduser().absolute())


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
    cfg = replace(cfg, root=absolute_root(cfg.root))
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
        twice = band_ids.duplicate_text(chosen, modality)
        if twice:
            raise ConfigError(f"config key 'data.bands.{modality}': {twice}")
        missing = band_ids.missing_bands(available, chosen, modality)
        if missing:
            raise ConfigError(
                f"config key 'data.bands.{modality}': band(s) {missing} are not bands of {modality} in dataset "
                f"{description.name} (it has {list(available)})"
            )
        # recorded as the dataset spells them: later lookups in its files and statistics match exactly
        bands[modality] = band_ids.spelled_as(available, chosen, modality)
    names = list(description.classes.names)
    if cfg.classes is not None and list(cfg.classes) != names:
        raise ConfigError(
            f"config key 'data.classes': {list(cfg.classes)} differs from the classes of dataset "
            f"{description.name}: {names}"
        )
    conventions = label_conventions(description, modalities, cfg.kind)
    for key, value in conventions.items():
        given = getattr(cfg, key)
        if given is not None and given != value:
            raise ConfigError(
                f"config key 'data.{key}': {given!r} differs from dataset {description.name} ({value!r}); "
                "the dataset's description decides (edit its dataset.yaml), leave the key out"
            )
    return resolve_stats(replace(cfg, modalities=modalities, bands=bands, classes=names,
                                 class_colors=list(cfg.class_colors or description.classes.colors), **conventions))


def label_conventions(description: DatasetDescription, modalities: list[str], kind: str) -> dict[str, Any]:
    """The nodata rules and label conventions a run records (``data.nodata``, and for generic data
    ``data.label_values`` / ``data.label_nodata``): later commands that read no dataset apply them."""
    nodata = {}
    for modality in modalities:
        rule = description.nodata_rule(modality)
        nodata[modality] = {"value": rule.value, "rule": rule.rule}
    out: dict[str, Any] = {"nodata": nodata}
    if kind == "generic":
        out["label_values"] = {int(k): int(v) for k, v in description.label_values.items()}
        out["label_nodata"] = description.label_nodata
    return out


def resolve_stats(cfg: Any) -> Any:
    """A copy of ``cfg`` recording the statistics files it uses (:func:`stats_files`), so a run folder
    and its checkpoints say which statistics were used and later commands use the same ones.

    Built-in kinds: ``data.s1_stats`` / ``data.s2_stats`` become the file found or ``'packaged'``.
    Generic: ``data.stats`` gains the file of each modality found. Values already set are kept. Paths are
    recorded absolute (a later command may run in another folder).
    """
    from dataclasses import replace

    def absolute(path: str | None) -> str | None:
        return path if path in (None, PACKAGED_STATS) else absolute_root(str(path))

    files = stats_files(cfg)
    if cfg.kind != "generic":
        return replace(cfg, **{f"{m}_stats": absolute(getattr(cfg, f"{m}_stats") or files[m]) or PACKAGED_STATS
                               for m in ("s1", "s2")})
    found = {m: absolute(p) for m, p in files.items() if p is not None}
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
