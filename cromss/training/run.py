"""``pretrain()``: one pretraining run in its own folder, with logging, checkpoints and resume.

Run folder ``<output_dir>/<name>/``::

    config.yaml          resolved config (after overrides and 'auto' resolution)
    metrics.csv          CSVLogger: every logged value, per step / epoch
    tensorboard/         TensorBoard events (``tensorboard --logdir <run>/tensorboard``)
    checkpoints/last.ckpt  every trainer.last_checkpoint_every_n_epochs epochs and after the last (resume)
    checkpoints/best.ckpt  lowest validation loss so far (written only when it improves)
    checkpoints/epoch=N.ckpt  every k epochs with trainer.checkpoint_every_n_epochs = k (N 0-based)
    summary.json         final metrics, incl. the noise-detection ROC-AUC per modality
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from cromss.config import dump_config, read_yaml, to_dict
from cromss.errors import ConfigError, CromssError
from cromss.training.config import PretrainConfig

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"


def run_dir_of(cfg: PretrainConfig) -> Path:
    """The run folder ``<output_dir>/<name>``."""
    return Path(cfg.output_dir) / cfg.name


def _gpu_requested(accelerator: str) -> bool:
    import torch

    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_config(cfg: PretrainConfig) -> PretrainConfig:
    """Fill in the data facts (modalities, bands, classes) and replace 'auto' trainer settings by
    concrete values (recorded in config.yaml).

    precision 'auto' -> 'bf16-mixed' on a GPU with bf16 ('16-mixed' without), '32-true' otherwise;
    channels_last None -> True on GPU (applied through ``model.channels_last``).
    """
    import torch

    from cromss.training.config import resolve_pretrain_config

    cfg = resolve_pretrain_config(cfg)
    trainer = cfg.trainer
    gpu = _gpu_requested(trainer.accelerator)
    precision = trainer.precision
    if precision == "auto":
        if gpu:
            precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    channels_last = gpu if trainer.channels_last is None else trainer.channels_last
    model = replace(cfg.model, channels_last=cfg.model.channels_last or channels_last)
    return replace(cfg, model=model, trainer=replace(trainer, precision=precision, channels_last=channels_last))


def _process_rank() -> int:
    """Global rank from the launcher's environment (0 in the launching process)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _merge_metrics(previous: list[dict[str, str]], path: Path, start_epoch: int) -> None:
    """Prepend the rows of the interrupted run (epochs < start_epoch) to the resumed run's metrics.csv.

    Lightning's CSVLogger starts a fresh file on every launch; this keeps one table per run.
    """
    kept = [row for row in previous if row.get("epoch", "") != "" and int(float(row["epoch"])) < start_epoch]
    current = _read_csv(path) if path.is_file() else []
    keys: list[str] = []
    for row in kept + current:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=sorted(keys))
        writer.writeheader()
        writer.writerows(kept + current)


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[key] = number if math.isfinite(number) else None
    return out


def pretrain(cfg: PretrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train one CromSS model as configured; return the summary (also written to summary.json).

    ``resume=True`` continues from ``<run>/checkpoints/last.ckpt`` (same seed and data order:
    the result equals an uninterrupted run on CPU). Without ``resume`` an existing run with a
    checkpoint is refused (pick another ``name`` or pass ``--resume``).
    """
    cfg = resolve_config(cfg)
    run_dir = run_dir_of(cfg)
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    rank = _process_rank()
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint {last} (run folder {run_dir} of config name '{cfg.name}')")
    if not resume and last.is_file():
        raise ConfigError(
            f"run folder {run_dir} already holds {last}: pass --resume to continue it, or choose another "
            f"name (name=...) or output_dir"
        )
    previous_rows: list[dict[str, str]] = []
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / "config.yaml"
        if resume and saved.is_file():
            changes = _config_changes(read_yaml(saved), to_dict(cfg))
            if changes:
                print(f"cromss pretrain --resume: config differs from {saved}: " + "; ".join(changes))
        dump_config(cfg, saved)
        if resume and (run_dir / "metrics.csv").is_file():
            previous_rows = _read_csv(run_dir / "metrics.csv")
    return _fit(cfg, resume, run_dir, last, previous_rows)


#: Messages of torch.distributed / gloo / NCCL when a peer process died in a collective.
_PEER_FAILURE_HINTS = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer",
                       "NCCL communicator was aborted", "Broken pipe")


def _peer_failed(err: BaseException) -> bool:
    """True if ``err`` says that another rank died (not that this rank failed by itself)."""
    import torch.distributed as dist

    text = str(err)
    if isinstance(err, getattr(dist, "DistBackendError", ())):
        return True
    return any(hint in text for hint in _PEER_FAILURE_HINTS)


def _fit(cfg: PretrainConfig, resume: bool, run_dir: Path, last: Path,
         previous_rows: list[dict[str, str]]) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from cromss.checkpoints import AtomicCheckpointIO, last_checkpoint_callback, safe_torch_load
    from cromss.data import CromSSDataModule
    from cromss.training.module import CromSSModule

    class EpochCheckpoint(ModelCheckpoint):
        """Keeps epoch=N.ckpt every k epochs (own class: its callback state key differs from last.ckpt's)."""

    checkpoint_dir = last.parent

    # identical initial weights on every rank; per-rank, per-epoch streams are seeded in the module
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CromSSModule(cfg)
    datamodule = CromSSDataModule(cfg.data)
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename=Path(BEST_CHECKPOINT).stem, monitor="val/loss", mode="min",
        save_top_k=1, save_on_train_epoch_end=True, auto_insert_metric_name=False, enable_version_counter=False,
    )
    # Lightning's save_last only writes when a best checkpoint was written too: a second callback
    # without a monitor writes last.ckpt (trainer.last_checkpoint_every_n_epochs / _n_steps, and the final epoch)
    every_epoch = last_checkpoint_callback(checkpoint_dir, Path(LAST_CHECKPOINT).stem,
                                           cfg.trainer.last_checkpoint_every_n_epochs,
                                           cfg.trainer.last_checkpoint_every_n_steps)
    callbacks: list[Any] = [checkpoint, every_epoch]
    if cfg.trainer.checkpoint_every_n_epochs:
        callbacks.append(EpochCheckpoint(
            dirpath=checkpoint_dir, filename="epoch={epoch}", monitor=None, save_top_k=-1,
            every_n_epochs=cfg.trainer.checkpoint_every_n_epochs, save_on_train_epoch_end=True,
            auto_insert_metric_name=False, enable_version_counter=False,
        ))
    if cfg.trainer.progress_bar:
        callbacks.append(RichProgressBar())
    loggers = [
        CSVLogger(save_dir=str(run_dir), name="", version=""),
        TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False),
    ]
    t = cfg.trainer
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch, num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic, gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.progress_bar, callbacks=callbacks, logger=loggers,
        # <file>.tmp + fsync + rename: a kill -9 mid-save leaves the previous last.ckpt intact;
        # reads are weights-only (a checkpoint that pickles code is refused, never executed)
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    started = time.perf_counter()
    start_epoch = 0
    if resume:
        start_epoch = int(safe_torch_load(last, what="checkpoint to resume").get("epoch", -1)) + 1
    module.first_epoch = start_epoch
    with warnings.catch_warnings():
        # the run folder already holds config.yaml (and, on resume, our checkpoints): expected here
        warnings.filterwarnings("ignore", message=r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None,
                        weights_only=True)
        except RuntimeError as err:
            if trainer.world_size > 1 and _peer_failed(err):
                # the failing rank printed its own error; this one only lost its peer: say so in one line
                raise CromssError(
                    f"rank {trainer.global_rank}: another DDP process failed (its error is printed above), "
                    f"so this rank stopped too ({str(err).splitlines()[0][:200]})"
                ) from None
            raise
    summary = {
        "run_dir": str(run_dir),
        "name": cfg.name,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "sync_selection": module.sync_selection(),
        "skipped_steps": module.skipped_steps,  # optimizer steps skipped for a NaN/Inf loss (this rank)
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_checkpoint": checkpoint.best_model_path or None,
        "best_val_loss": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "last_checkpoint": str(last) if last.is_file() else None,
        "noise_auc": {},
        "metrics": _scalar_metrics(trainer.callback_metrics),
    }
    for modality in cfg.model.modalities:
        value = summary["metrics"].get(f"val/noise_auc_{modality}")
        if value is not None:
            summary["noise_auc"][modality] = value
    if trainer.is_global_zero:
        if resume and previous_rows:
            _merge_metrics(previous_rows, run_dir / "metrics.csv", start_epoch)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if summary["noise_auc"]:
            aucs = ", ".join(f"{m} {v:.3f}" for m, v in summary["noise_auc"].items())
            print(f"noise-detection ROC-AUC of 1 - W_l (validation): {aucs}")
        print(f"run folder: {run_dir}")
    return summary
