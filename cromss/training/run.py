"""``pretrain()``: one pretraining run in its own folder, with logging, checkpoints and resume.

Run folder ``<output_dir>/<name>/``::

    config.yaml          resolved config of the first launch (after overrides and 'auto' resolution)
    config.resume-N.yaml config of resume N, with config.resume-N.diff against the previous launch
    metrics.csv          every logged value, per step / epoch, appended by every launch (column 'launch')
    cromss.lock          while a process trains the run: its pid and host
    tensorboard/         TensorBoard events (``tensorboard --logdir <run>/tensorboard``)
    checkpoints/last.ckpt  every trainer.last_checkpoint_every_n_epochs epochs and after the last (resume)
    checkpoints/best.ckpt  lowest validation loss so far (written only when it improves; weights, config,
                           epoch and metrics, no optimizer state)
    checkpoints/epoch=N.ckpt  every k epochs with trainer.checkpoint_every_n_epochs = k (N 0-based)
    summary.json         final metrics, incl. the noise-detection ROC-AUC per modality
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from cromss.config import read_yaml, to_dict
from cromss.data.run_stats import record_run_stats
from cromss.errors import ConfigError, CromssError
from cromss.training.config import PretrainConfig

CHECKPOINT_DIR = "checkpoints"
#: Lock file of a run folder (pid and host of the process training it).
LOCK_FILE = "cromss.lock"
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


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[key] = number if math.isfinite(number) else None
    return out


#: Settings that change the network's parameters: a resume may not change them.
ARCHITECTURE_KEYS: tuple[str, ...] = ("encoder", "fusion", "modalities", "s2_bands", "num_classes",
                                      "decoder_channels", "head_kernel")


def _check_same_architecture(state: dict[str, Any], cfg: PretrainConfig, run_dir: Path, last: Path) -> None:
    """Refuse (ConfigError, one line) a resume whose model differs from the checkpoint's."""
    from cromss.training.history import latest_config_file

    saved = ((state.get("hyper_parameters") or {}).get("config") or {}).get("model")
    source = last
    if not isinstance(saved, dict):
        path = latest_config_file(run_dir)
        saved = (read_yaml(path).get("model") if path.is_file() else None) or {}
        source = path
    wanted = to_dict(cfg.model)
    changed = [f"model.{key} ({saved[key]!r} -> {wanted[key]!r})" for key in ARCHITECTURE_KEYS
               if key in saved and saved[key] != wanted[key]]
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir}: the model differs from {source} in {', '.join(changed)}; resume with "
            "the original model settings, or start a new run (name=...)"
        )


def pretrain(cfg: PretrainConfig, resume: bool = False, callbacks: Sequence[Any] | None = None) -> dict[str, Any]:
    """Train one CromSS model as configured; return the summary (also written to summary.json).

    ``resume=True`` continues from ``<run>/checkpoints/last.ckpt`` (same seed and data order:
    the result equals an uninterrupted run on CPU). Without ``resume`` an existing run with a
    checkpoint is refused (pick another ``name`` or pass ``--resume``).

    ``callbacks``: extra Lightning callbacks for the Trainer, after cromss's own (e.g. a profiler, an
    early-stopping rule, or a test's fault injection); with DDP each rank must pass the same ones.

    The run folder is locked (``cromss.lock``: a second process stops at once) and append-only
    (:mod:`cromss.training.history`): a resume keeps ``config.yaml`` and the earlier rows of
    ``metrics.csv`` and is refused before anything is written when the model architecture differs.
    """
    from cromss.data import CromSSDataModule
    from cromss.locks import FolderLock
    from cromss.outputs import prepare_output_dir

    cfg = resolve_config(cfg)
    _check_trainer(cfg)
    run_dir = run_dir_of(cfg)
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    datamodule = CromSSDataModule(cfg.data)
    if _process_rank() != 0:  # DDP ranks > 0 write nothing; rank 0 holds the lock
        start_epoch = _start_epoch(cfg, resume, run_dir, last)
        _check_data(cfg, datamodule)
        return _fit(cfg, resume, run_dir, last, start_epoch, None, datamodule, callbacks)
    # folders this launch creates (output_dir too): removed again, if still empty, when a check fails
    created = [p for p in [*reversed(run_dir.parents), run_dir] if not p.exists()]
    prepare_output_dir(run_dir, "run folder")
    lock = FolderLock(run_dir / LOCK_FILE, run_dir, "run folder")
    try:
        lock.acquire()
        start_epoch = _start_epoch(cfg, resume, run_dir, last)
        # the data is read and checked before anything is written: bad input leaves no run folder behind
        _check_data(cfg, datamodule)
    except BaseException:
        lock.release()
        for folder in reversed(created):  # a refused first launch leaves no empty folder behind
            _remove_if_empty(folder)
        raise
    try:
        return _launch(cfg, resume, run_dir, last, start_epoch, datamodule, callbacks)
    finally:
        lock.release()


def _check_trainer(cfg: PretrainConfig) -> None:
    """Lightning's own refusal of the trainer settings on this machine (gpu without one, ...), before any folder."""
    from cromss.trainer_options import check_trainer_runtime

    t = cfg.trainer
    check_trainer_runtime(t.accelerator, t.devices, t.precision, t.strategy, t.num_nodes)


def _check_data(cfg: PretrainConfig, datamodule: Any) -> None:
    """Build and check the training / validation data before the run writes anything.

    Not for litdata streams: a StreamingDataset fixes its view of the ranks when it is built, so it must
    be built by Lightning after the process group exists (its files were checked by ``data convert``).
    """
    if cfg.data.format != "stream":
        datamodule.setup("fit")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def _start_epoch(cfg: PretrainConfig, resume: bool, run_dir: Path, last: Path) -> int:
    """Every check of a (re)launch that reads only: the epoch to start from, or a one-line error."""
    from cromss.checkpoints import safe_torch_load

    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint {last} (run folder {run_dir} of config name '{cfg.name}')")
    if not resume and last.is_file():
        raise ConfigError(
            f"run folder {run_dir} already holds {last}: pass --resume to continue it, or choose another "
            f"name (name=...) or output_dir"
        )
    if not resume:
        return 0
    state = safe_torch_load(last, what="checkpoint to resume")
    if not isinstance(state, dict):
        raise ConfigError(f"--resume: {last} is not a Lightning checkpoint")
    _check_same_architecture(state, cfg, run_dir, last)
    return int(state.get("epoch", -1)) + 1


def _launch(cfg: PretrainConfig, resume: bool, run_dir: Path, last: Path, start_epoch: int,
            datamodule: Any = None, extra_callbacks: Sequence[Any] | None = None) -> dict[str, Any]:
    """Rank 0, lock held, checks passed: record this launch's config, then train."""
    from cromss.outputs import atomic_write_bytes
    from cromss.training.history import next_launch, record_launch_config

    launch = next_launch(run_dir, resume)
    if launch and (run_dir / "summary.json").is_file():
        # the summary of the finished launch being extended stays readable beside the new one
        atomic_write_bytes(run_dir / f"summary.before-resume-{launch}.json",
                           (run_dir / "summary.json").read_bytes(), "summary")
    path, changes = record_launch_config(run_dir, to_dict(cfg), launch)
    record_run_stats(cfg.data, run_dir)  # the statistics it normalises with, for predict
    if changes:
        print(f"cromss pretrain --resume: config differs from the previous launch ({path} has the diff "
              f"{path.with_suffix('.diff').name}): " + "; ".join(changes))
    return _fit(cfg, resume, run_dir, last, start_epoch, launch, datamodule, extra_callbacks)


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


def _fit(cfg: PretrainConfig, resume: bool, run_dir: Path, last: Path, start_epoch: int,
         launch: int | None, datamodule: Any = None, extra_callbacks: Sequence[Any] | None = None) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from cromss.checkpoints import AtomicCheckpointIO, fit_interruptible, last_checkpoint_callback
    from cromss.data import CromSSDataModule
    from cromss.outputs import atomic_write_text, os_error_in, output_error
    from cromss.training.console import best_epoch_of, pretrain_console
    from cromss.training.history import append_csv_logger
    from cromss.training.module import CromSSModule

    class EpochCheckpoint(ModelCheckpoint):
        """Keeps epoch=N.ckpt every k epochs (own class: its callback state key differs from last.ckpt's)."""

    checkpoint_dir = last.parent

    # identical initial weights on every rank; per-rank, per-epoch streams are seeded in the module
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CromSSModule(cfg)
    datamodule = datamodule if datamodule is not None else CromSSDataModule(cfg.data)
    # best.ckpt: weights, config, epoch and metrics only (what export / evaluate / analyze / predict read);
    # last.ckpt keeps the optimizer, scheduler, loop and callback state for an exact resume
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir, filename=Path(BEST_CHECKPOINT).stem, monitor="val/loss", mode="min",
        save_top_k=1, save_on_train_epoch_end=True, auto_insert_metric_name=False, enable_version_counter=False,
        save_weights_only=True,
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
    # a progress bar only on a terminal; otherwise (logs, batch jobs) one line per epoch and a summary
    progress_bar = cfg.trainer.progress_bar and sys.stdout.isatty()
    callbacks.append(RichProgressBar() if progress_bar else pretrain_console(cfg, run_dir, checkpoint))
    callbacks.extend(extra_callbacks or ())
    loggers = [
        # continues metrics.csv across resumes (launch column), never deletes it
        append_csv_logger(run_dir, launch or 0),
        TensorBoardLogger(save_dir=str(run_dir), name="", version="tensorboard", default_hp_metric=False),
    ]
    t = cfg.trainer
    trainer = L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch, num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic, gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=progress_bar, callbacks=callbacks, logger=loggers,
        # <file>.tmp + fsync + rename: a kill -9 mid-save leaves the previous last.ckpt intact;
        # reads are weights-only (a checkpoint that pickles code is refused, never executed)
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
    started = time.perf_counter()
    module.first_epoch = start_epoch
    with warnings.catch_warnings():
        # the run folder already holds config.yaml (and, on resume, our checkpoints): expected here
        warnings.filterwarnings("ignore", message=r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
        try:
            fit_interruptible(trainer, module, datamodule=datamodule, ckpt_path=str(last) if resume else None,
                              weights_only=True)
        except CromssError:
            raise
        except Exception as err:
            if isinstance(err, RuntimeError) and trainer.world_size > 1 and _peer_failed(err):
                # the failing rank printed its own error; this one only lost its peer: say so in one line
                raise CromssError(
                    f"rank {trainer.global_rank}: another DDP process failed (its error is printed above), "
                    f"so this rank stopped too ({str(err).splitlines()[0][:200]})"
                ) from None
            cause = os_error_in(err)
            if cause is None:
                raise
            # a checkpoint, metrics or TensorBoard write failed: one line, earlier files kept
            raise output_error(cause, run_dir, "run folder") from None
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
        "best_epoch": best_epoch_of(checkpoint.best_model_path) if checkpoint.best_model_path else None,
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
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2), "run summary")
        if not progress_bar:
            return summary  # the console callback printed the AUC, the run folder and the next commands
        if summary["noise_auc"]:
            aucs = ", ".join(f"{m} {v:.3f}" for m, v in summary["noise_auc"].items())
            print(f"noise-detection ROC-AUC of 1 - W_l (validation): {aucs}")
        print(f"run folder: {run_dir}")
    return summary
