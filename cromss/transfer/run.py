"""One fine-tuning run (fit one seed, test the best-validation checkpoint) and repeats over seeds."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from cromss.checkpoints import safe_torch_load
from cromss.config import dump_config
from cromss.data.description import class_table_of
from cromss.transfer.config import FinetuneConfig, resolve_finetune_config
from cromss.transfer.module import build_module, evaluate_model
from cromss.transfer.results import write_aggregate, write_json


def finetune_once(cfg: FinetuneConfig, seed: int) -> dict[str, Any] | None:
    """Fit one seed, then test the best-validation checkpoint; returns the metrics.json content.

    With several devices only global rank 0 tests and returns the result (others return None).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from cromss.checkpoints import AtomicCheckpointIO
    from cromss.data import CromSSDataModule

    run_cfg = resolve_finetune_config(cfg)  # before any folder exists: bad input creates nothing
    run_cfg.seed = seed
    run_cfg.seeds = [seed]
    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = CromSSDataModule(run_cfg.data)
    module = build_module(run_cfg)  # encoder weights that do not fit fail here, before the run folder exists
    run_dir = cfg.run_dir(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    # a re-run replaces the run: stale best.ckpt would make Lightning write best-v1.ckpt instead
    for stale in (run_dir / "checkpoints").glob("*.ckpt"):
        stale.unlink()
    dump_config(run_cfg, run_dir / "config.yaml")

    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val_miou", mode="max",
        save_last=True, auto_insert_metric_name=False,
    )
    options = run_cfg.trainer
    trainer = pl.Trainer(
        max_epochs=run_cfg.epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        precision=options.precision,
        limit_train_batches=options.limit_train_batches,
        limit_val_batches=options.limit_val_batches,
        log_every_n_steps=options.log_every_n_steps,
        deterministic=options.deterministic,
        enable_progress_bar=options.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoint],
        # checkpoints via <file>.tmp + rename: a crash mid-save never leaves a truncated best.ckpt
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(save_dir=run_dir, name="logs", version=""),
        default_root_dir=run_dir,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # a frozen encoder's BatchNorm layers are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started

    if not trainer.is_global_zero:  # multi-device: rank 0 alone tests and writes the results
        return None
    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    state = safe_torch_load(Path(best_path), what="fine-tuning checkpoint")
    module.load_state_dict(state["state_dict"])
    datamodule.setup("test")
    test = evaluate_model(
        module, datamodule.test_dataloader(), run_cfg.classes, run_cfg.modality, options.limit_test_batches
    )
    result = {
        "task": cfg.name,
        "encoder_label": cfg.label,
        "encoder_source": cfg.weights,
        "frozen": cfg.frozen,
        "mode": cfg.mode,
        "seed": seed,
        "split": "test",
        "checkpoint": str(Path(best_path).name),
        "best_epoch": int(state.get("epoch", -1)),
        "best_val_miou": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "fit_seconds": round(fit_seconds, 2),
        "class_names": list(class_table_of(run_cfg.data).names),
        "weights_info": _plain(getattr(module, "weights_info", {})),
        **test,
    }
    write_json(result, run_dir / "metrics.json")
    return result


def _plain(value: Any) -> Any:
    """Best-effort JSON-able copy of an info dict (tensors and paths become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run every seed of ``cfg`` (each in its own folder) and write the aggregate; returns it."""
    cfg = resolve_finetune_config(cfg)  # checks the data once, before the first run folder
    results = [finetune_once(cfg, seed) for seed in cfg.seed_list]
    if any(result is None for result in results):  # not rank 0
        return {"seeds": cfg.seed_list, "metrics": {}}
    return write_aggregate(cfg.group_dir(), results)
