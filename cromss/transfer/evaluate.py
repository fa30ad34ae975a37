"""Evaluate a finished fine-tuning run (or its checkpoint) on a dataset split."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any

from cromss.checkpoints import safe_torch_load
from cromss.config import from_dict, to_dict
from cromss.errors import CheckpointError, ConfigError
from cromss.metrics import SCALAR_METRICS, support_note
from cromss.schema import CLASS_TABLES
from cromss.transfer.config import METRIC_TITLES, FinetuneConfig
from cromss.transfer.module import evaluate_model, finetune_module_class


def load_run(run_or_ckpt: str | Path) -> tuple[Any, FinetuneConfig, Path]:
    """FinetuneModule, config and checkpoint path of a run folder (best.ckpt) or a checkpoint file."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError(f"{run_or_ckpt} holds no checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = safe_torch_load(path, what="fine-tuning checkpoint")
    config = (state.get("hyper_parameters") or {}).get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a cromss fine-tuning checkpoint (no hyper_parameters.config)")
    cfg = from_dict(FinetuneConfig, dict(config))
    module = finetune_module_class()(to_dict(cfg))
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model of its config: {err}") from None
    return module, cfg, path


def evaluate_run(
    run_or_ckpt: str | Path, data_root: str | Path | None = None, kind: str | None = None,
    split: str = "test", batch_size: int | None = None, num_workers: int | None = None,
) -> dict[str, Any]:
    """Metrics of a fine-tuned run on ``split`` of a dataset (default: the run's own data root)."""
    from torch.utils.data import DataLoader

    from cromss.data import build_dataset
    from cromss.data.resolution import class_table_of, resolve_data_config
    from cromss.data.run_stats import run_folder_of, with_run_stats

    module, cfg, ckpt = load_run(run_or_ckpt)
    data_cfg = copy.deepcopy(cfg.data)
    data_cfg.modalities = [cfg.modality]
    if data_root is not None:
        data_cfg.root = str(data_root)
    if kind is not None and kind != cfg.data.kind:
        if kind == "generic" or cfg.data.kind == "generic":
            raise ConfigError(
                f"--kind {kind!r}: the model of {ckpt} was trained on data.kind '{cfg.data.kind}'; evaluate it "
                "on data of the same kind (a generic model on any generic dataset with the same classes and bands)"
            )
        if CLASS_TABLES.get(kind, None) is None or CLASS_TABLES[kind].num_classes != cfg.classes:
            raise ConfigError(
                f"--kind {kind!r} does not match the {cfg.classes}-class model of {ckpt} (trained on '{cfg.data.kind}')"
            )
        data_cfg.kind = kind
        data_cfg.classes = data_cfg.class_colors = None  # the other built-in table of the same size
    if data_root is not None or kind is not None or data_cfg.classes is None:
        # the model's bands (by name) and classes are checked against the data it is evaluated on
        colors = data_cfg.class_colors
        # the dataset read brings its own nodata rules and label conventions (its dataset.yaml)
        data_cfg = resolve_data_config(dataclasses.replace(data_cfg, class_colors=None, nodata=None,
                                                           label_values=None, label_nodata=None))
        data_cfg.class_colors = colors or data_cfg.class_colors
    # normalised with the statistics the model was trained with: the run's own copy, from any folder
    data_cfg = with_run_stats(data_cfg, run_folder_of(ckpt))
    if batch_size is not None:
        data_cfg.batch_size = batch_size
    if num_workers is not None:
        data_cfg.num_workers = num_workers
    if hasattr(data_cfg, "validate"):
        data_cfg.validate()
    # compact samples cross the worker boundary; evaluate_model normalises them on the model's device
    dataset = build_dataset(data_cfg, split, train=False, compact=True)
    loader = DataLoader(dataset, batch_size=data_cfg.batch_size, shuffle=False, num_workers=data_cfg.num_workers)
    result = evaluate_model(module, loader, cfg.classes, cfg.modality, preprocess=dataset.preprocessor())
    names = list(class_table_of(data_cfg).names)
    note = support_note(result["support"], names)
    return {
        "checkpoint": str(ckpt), "data_root": str(data_cfg.root), "kind": data_cfg.kind, "split": split,
        "modality": cfg.modality, "encoder_label": cfg.label, "mode": cfg.mode,
        "class_names": names, "class_colors": list(class_table_of(data_cfg).colors), **result,
        **({"note": note} if note else {}),
    }


def format_metrics(result: dict[str, Any]) -> str:
    """A plain-text table: the four scalar metrics, then per-class IoU / F1 / recall / support."""
    lines = ["  ".join(f"{METRIC_TITLES[m]} {100 * result[m]:6.2f}" for m in SCALAR_METRICS)]
    note = result.get("note") or support_note(result.get("support") or [], result.get("class_names"))
    if note:
        lines[0] += f"  ({note})"
    names = result.get("class_names") or [str(i) for i in range(len(result["iou"]))]
    lines.append(f"{'class':<32}{'IoU %':>8}{'F1 %':>8}{'recall %':>10}{'pixels':>12}")
    for index, name in enumerate(names):
        cells = []
        for key in ("iou", "f1", "recall"):
            value = result[key][index]
            cells.append("–" if value is None or math.isnan(value) else f"{100 * value:.2f}")
        lines.append(f"{name:<32}{cells[0]:>8}{cells[1]:>8}{cells[2]:>10}{result['support'][index]:>12}")
    return "\n".join(lines)
