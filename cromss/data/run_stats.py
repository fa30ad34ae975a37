"""Which band statistics a run normalises with, and their copy in the run folder.

The dataset core (:meth:`cromss.data.core.SegmentationDataset._build_normalizers`) normalises a modality
with the statistics of its config: built-in kinds ``data.s1_stats`` / ``data.s2_stats`` (None = the
packaged SSL4EO-S12 statistics), generic datasets ``data.stats.<modality>``, else the dataset's own file
(``stats`` of dataset.yaml, else ``<root>/stats/<modality>_stats.json``). :func:`stats_file` answers the
same question from a (resolved) config dict, so ``cromss predict`` normalises as the run did.

Files move and get recomputed after a run, so a run copies the statistics files it uses into
``<run>/band_stats/<modality>_stats.json`` when it starts (:func:`record_run_stats`); prediction reads
that copy first.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cromss.errors import DataError

#: Folder of a run where the statistics files the run normalised with are copied.
RUN_STATS_DIR = "band_stats"


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
    from cromss.data.description import STATS_DIR, load_description

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


def stats_file(data: Mapping[str, Any], modality: str) -> tuple[Path | None, str]:
    """The statistics JSON of ``modality`` for the data section ``data`` of a config, and the key it
    comes from. None = the packaged statistics (built-in kinds). A generic dataset whose statistics file
    cannot be found is a DataError naming where it was looked for."""
    from cromss.data.description import STATS_DIR, load_description

    if data.get("kind") != "generic":
        path = data.get(f"{modality}_stats")
        return (None if path is None else Path(path)), f"data.{modality}_stats"
    explicit = (data.get("stats") or {}).get(modality)
    if explicit is not None:
        return Path(explicit), f"data.stats.{modality}"
    root = data.get("root")
    try:
        found = load_description(root).stats_path(modality)
    except DataError:
        found = None
    if found is None:
        raise DataError(f"no band statistics of {modality} found: neither data.stats.{modality} nor "
                        f"{Path(str(root)) / STATS_DIR / f'{modality}_stats.json'} (the dataset's own)")
    return found, f"the statistics of dataset {root}"


def recorded_stats(run_dir: str | Path, modality: str) -> Path | None:
    """The copy of ``modality``'s statistics a run made when it started, or None."""
    path = Path(run_dir) / RUN_STATS_DIR / f"{modality}_stats.json"
    return path if path.is_file() else None


def record_run_stats(data_cfg: Any, run_dir: str | Path) -> list[Path]:
    """Copy the statistics files ``data_cfg`` (a resolved DataConfig) normalises with into the run folder.

    Modalities normalised with the packaged statistics, or whose file is missing (the dataset reports
    that itself), get no copy. Returns the copies written.
    """
    from cromss.config import to_dict

    data = to_dict(data_cfg)
    modalities = data.get("modalities") or ["s1", "s2"]
    written = []
    for modality in modalities:
        try:
            path, _ = stats_file(data, modality)
        except DataError:
            continue
        if path is None or not path.is_file():
            continue
        target = Path(run_dir) / RUN_STATS_DIR / f"{modality}_stats.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder of a run folder or of ``<run>/checkpoints/<file>.ckpt`` (None for a lone file)."""
    path = Path(path)
    run = path if path.is_dir() else path.parent.parent if path.parent.name == "checkpoints" else None
    return run if run is not None and (run / "config.yaml").is_file() else None


def with_run_stats(data_cfg: Any, run_dir: str | Path | None) -> Any:
    """A copy of the DataConfig of a run whose statistics files are the run's own copies
    (``<run>/band_stats/``, :func:`record_run_stats`) where it has them: the exact statistics the model
    was trained with, wherever the command runs and whatever happened to the dataset's files since."""
    from dataclasses import replace

    if run_dir is None:
        return data_cfg
    modalities = list(data_cfg.modalities or ["s1", "s2"])
    copies = {m: recorded_stats(run_dir, m) for m in modalities}
    copies = {m: str(p.resolve()) for m, p in copies.items() if p is not None}
    if not copies:
        return data_cfg
    if data_cfg.kind != "generic":
        return replace(data_cfg, **{f"{m}_stats": copies[m] for m in ("s1", "s2") if m in copies})
    return replace(data_cfg, stats={**(data_cfg.stats or {}), **copies})
