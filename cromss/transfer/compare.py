"""A comparison of encoder sources: every source frozen and fine-tuned over seeds, then one table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cromss.errors import ConfigError
from cromss.transfer.config import MODES, FinetuneConfig, load_finetune_config
from cromss.transfer.run import finetune
from cromss.transfer.tables import write_table


def run_comparison(
    config_path_or_cfg: str | Path | FinetuneConfig,
    encoders: dict[str, str],
    modality: str = "s2",
    seeds: int | list[int] = 1,
    out_dir: str | Path = "runs/compare",
    modes: tuple[str, ...] = MODES,
    overwrite: bool = False,
) -> str:
    """Fine-tune every encoder source frozen and fine-tuned for each seed; returns the Markdown table.

    ``encoders`` maps a row label (e.g. ``'random'``, ``'CromSS'``) to a source. Runs land in
    ``<out_dir>/<name>/<label>/<mode>/seed<k>/`` and the table in ``<out_dir>/<name>/table.{md,csv}``.
    Seed folders holding results are refused unless ``overwrite`` (see :func:`cromss.transfer.finetune`).
    """
    base = load_finetune_config(config_path_or_cfg)
    base.output_dir = str(out_dir)
    base.modality = modality  # type: ignore[assignment]
    base.seeds = seeds
    base.validate()
    for label, source in encoders.items():
        for mode in modes:
            if mode not in MODES:
                raise ConfigError(f"mode {mode!r} is not one of {list(MODES)}")
            cfg = dataclasses.replace(base, weights=source, weights_label=label, frozen=(mode == "frozen"))
            cfg.validate()
            finetune(cfg, overwrite=overwrite)
    task_dir = Path(out_dir) / base.name
    labels = [str(task_dir / label) for label in encoders]
    return write_table(labels, task_dir / "table")
