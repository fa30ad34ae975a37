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
