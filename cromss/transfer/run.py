"""One fine-tuning run (fit one seed, test the best-validation checkpoint) and repeats over seeds.

Seed folders are never emptied before a new run has finished (issue 17): a re-run into a folder that
holds results is refused unless ``overwrite``; with ``overwrite`` the new run is written to
``<seed>/.overwrite/`` and moved into place only after it finished (the old files go last). Every seed
folder is locked (``cromss.lock``: PID and host) while a process works on it, and every input (data
splits, encoder weights, batch size) is checked before any folder is created.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from cromss.checkpoints import fit_interruptible, safe_torch_load
from cromss.config import to_dict
from cromss.data.resolution import class_table_of
from cromss.data.run_stats import record_run_stats
from cromss.errors import CromssError, DataError, OutputError, warn
from cromss.locks import FolderLock
from cromss.metrics import support_note
from cromss.outputs import atomic_write_text, os_error_in, output_error, prepare_output_dir
from cromss.trainer_options import check_trainer_runtime
from cromss.transfer.config import FinetuneConfig, resolve_finetune_config
from cromss.transfer.module import build_module, evaluate_model
from cromss.transfer.results import write_aggregate, write_json

#: Lock file of a seed folder (pid and host of the process fine-tuning it).
LOCK_FILE = "cromss.lock"
#: Inside a seed folder: the new run of ``overwrite`` until it finished, and the old files being replaced.
STAGING = ".overwrite"
REPLACED = ".replaced"


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def existing_results(run_dir: Path) -> list[str]:
    """Result files of an earlier run in a seed folder (``metrics.json``, checkpoints), as relative names."""
    found = ["metrics.json"] if (run_dir / "metrics.json").is_file() else []
    found += sorted(f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").glob("*.ckpt"))
    return found


def _refuse_existing(run_dir: Path, overwrite: bool) -> None:
    results = existing_results(run_dir)
    if results and not overwrite:
        raise OutputError(
            f"fine-tuning run folder {run_dir} already holds results ({', '.join(results[:3])}): pass --overwrite "
            "to replace them (the old files are kept until the new run finished), or choose another "
            "output_dir, name or --label"
        )


def _run_config(cfg: FinetuneConfig, seed: int) -> FinetuneConfig:
    run_cfg = resolve_finetune_config(cfg)  # a copy: input bands, classes and statistics of the data
    run_cfg.seed = seed
    run_cfg.seeds = [seed]
    return run_cfg


def check_inputs(cfg: FinetuneConfig) -> None:
    """Read every input of ``cfg`` once, writing nothing: the data splits, the BatchNorm batch, the encoder.

    Raises the DataError / CheckpointError the run would raise later, before any folder is touched.
    """
    from cromss.data import CromSSDataModule

    run_cfg = _run_config(cfg, cfg.seed_list[0])
    datamodule = CromSSDataModule(run_cfg.data)
    sizes = {split: len(datamodule.dataset(split)) for split in ("train", "val", "test")}
    for split, size in sizes.items():
        if size == 0:
            raise DataError(f"the {split} split of {run_cfg.data.root} is empty")
    datamodule.setup("fit")  # an all-ignored training split, a crop larger than the tiles: before any folder
    if sizes["train"] < 2:
        raise DataError(
            f"the train split of {run_cfg.data.root} holds {sizes['train']} sample (after data.val_fraction): "
            "BatchNorm needs at least 2 samples per training batch"
        )
    build_module(run_cfg)  # loads the encoder weights: a wrong source fails here


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def finetune_once(cfg: FinetuneConfig, seed: int, overwrite: bool = False) -> dict[str, Any] | None:
    """Fit one seed, then test the best-validation checkpoint; returns the metrics.json content.

    A seed folder holding results is refused unless ``overwrite`` (then replaced once the new run
    finished). With several devices only global rank 0 tests and returns the result (others return None).
    """
    run_dir = cfg.run_dir(seed)
    check_trainer_runtime(cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision)
    if _rank() != 0:  # DDP ranks > 0 write nothing; rank 0 holds the lock and chose the folder
        return _fit_and_test(cfg, seed, run_dir / STAGING if existing_results(run_dir) else run_dir, run_dir)
    _refuse_existing(run_dir, overwrite)
    created = not run_dir.exists()
    prepare_output_dir(run_dir, "fine-tuning run folder")
    lock = FolderLock(run_dir / LOCK_FILE, run_dir, "fine-tuning run folder")
    try:
        lock.acquire()
    except BaseException:
        if created:
            _remove_if_empty(run_dir)
        raise
    try:
        return _run_locked(cfg, seed, run_dir, overwrite)
    finally:
        lock.release()


def _run_locked(cfg: FinetuneConfig, seed: int, run_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    """Rank 0, lock held: run into the seed folder, or (earlier files present) beside them, then swap."""
    _refuse_existing(run_dir, overwrite)  # again: another process may have finished it meanwhile
    earlier = [p for p in run_dir.iterdir() if p.name not in (LOCK_FILE, STAGING, REPLACED)]
    if not earlier:
        return _fit_and_test(cfg, seed, run_dir, run_dir)
    staging = run_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # the unfinished new run of an interrupted --overwrite
    try:
        result = _fit_and_test(cfg, seed, staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # only the new, unfinished files
        raise
    if result is not None:
        _replace(run_dir, staging)
    return result


def _replace(run_dir: Path, staging: Path) -> None:
    """Move the finished new run from ``staging`` into ``run_dir``; the earlier files go only then."""
    from cromss.outputs import os_error_cause

    replaced = run_dir / REPLACED
    shutil.rmtree(replaced, ignore_errors=True)
    try:
        replaced.mkdir()
        for entry in run_dir.iterdir():
            if entry.name not in (LOCK_FILE, STAGING, REPLACED):
                os.replace(entry, replaced / entry.name)
        for entry in staging.iterdir():
            os.replace(entry, run_dir / entry.name)
        staging.rmdir()
    except OSError as err:  # renames inside one folder: practically never; then nothing is deleted
        raise OutputError(
            f"cannot move the new results into {run_dir} ({os_error_cause(err)}); the new files are in "
            f"{staging}, the earlier ones in {replaced}"
        ) from None
    shutil.rmtree(replaced, ignore_errors=True)


def _fit_and_test(cfg: FinetuneConfig, seed: int, work_dir: Path, run_dir: Path) -> dict[str, Any] | None:
    """Train seed ``seed`` into ``work_dir`` and test its best checkpoint (``run_dir`` names errors)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from cromss.checkpoints import AtomicCheckpointIO, last_checkpoint_callback
    from cromss.data import CromSSDataModule
    from cromss.training.console import EpochConsole, finetune_columns

    run_cfg = _run_config(cfg, seed)
    if _rank() == 0:
        prepare_output_dir(work_dir, "fine-tuning run folder")
        atomic_write_text(work_dir / "config.yaml", _yaml(to_dict(run_cfg)), "fine-tuning config")
        record_run_stats(run_cfg.data, work_dir)  # the statistics it normalises with, for predict

    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = CromSSDataModule(run_cfg.data)
    module = build_module(run_cfg)

    # best.ckpt holds the weights, config, epoch and metrics (what evaluate / predict read), no optimizer
    # state; last.ckpt (its own writer) keeps everything
    checkpoint = ModelCheckpoint(
        dirpath=work_dir / "checkpoints", filename="best", monitor="val_miou", mode="max",
        auto_insert_metric_name=False, save_weights_only=True,
    )
    last_writer = last_checkpoint_callback(work_dir / "checkpoints", "last")
    options = run_cfg.trainer
    # a progress bar only on a terminal; otherwise one line per epoch
    progress_bar = options.enable_progress_bar and sys.stdout.isatty()
    console = [] if progress_bar else [EpochConsole(
        finetune_columns(), ("train_loss", "val_loss"), monitor="val_miou", mode="max", checkpoint=checkpoint,
        prefix=f"{cfg.label} {cfg.mode} seed {seed}: ")]
    trainer = pl.Trainer(
        max_epochs=run_cfg.epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        precision=options.precision,
        limit_train_batches=options.limit_train_batches,
        limit_val_batches=options.limit_val_batches,
        log_every_n_steps=options.log_every_n_steps,
        deterministic=options.deterministic,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoint, last_writer, *console],
        # checkpoints via <file>.tmp + rename: a crash mid-save never leaves a truncated best.ckpt
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(save_dir=work_dir, name="logs", version=""),
        default_root_dir=work_dir,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # a frozen encoder's BatchNorm layers are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        try:
            fit_interruptible(trainer, module, datamodule=datamodule)
        except CromssError:
            raise
        except Exception as err:
            cause = os_error_in(err)
            if cause is None:
                raise
            # a checkpoint or log write failed: one line; the folder's earlier results are untouched
            raise output_error(cause, run_dir, "fine-tuning run folder") from None
    fit_seconds = time.perf_counter() - started

    if not trainer.is_global_zero:  # multi-device: rank 0 alone tests and writes the results
        return None
    best_path = checkpoint.best_model_path or last_writer.last_model_path or last_writer.best_model_path
    state = safe_torch_load(Path(best_path), what="fine-tuning checkpoint")
    module.load_state_dict(state["state_dict"])
    datamodule.setup("test")
    test = evaluate_model(
        module, datamodule.test_dataloader(), run_cfg.classes, run_cfg.modality, options.limit_test_batches
    )
    result = {
        "task": cfg.name,
        "encoder_label": cfg.label,
        "encoder_title": cfg.title,
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
    note = support_note(test["support"], result["class_names"])
    if note:  # never a bare 100 %: said next to the metrics, in metrics.json and on the console
        result["note"] = note
        warn(f"{run_dir} test split: {note}", once=False)
    write_json(result, work_dir / "metrics.json")
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


def _yaml(data: Any) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def finetune(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run every seed of ``cfg`` (each in its own folder) and write the aggregate; returns it.

    Before any folder is touched: seed folders holding results are refused unless ``overwrite``, every
    seed folder is locked (a second process stops at once), and every input is read once
    (:func:`check_inputs`). The locks are held until every seed ran.
    """
    cfg = resolve_finetune_config(cfg)  # checks the data once, before the first run folder
    t = cfg.trainer
    check_trainer_runtime(t.accelerator, t.devices, t.precision)  # gpu without one, ...: before any folder
    dirs = [cfg.run_dir(seed) for seed in cfg.seed_list]
    if _rank() != 0:
        for seed in cfg.seed_list:
            finetune_once(cfg, seed, overwrite)
        return {"seeds": cfg.seed_list, "metrics": {}}
    for run_dir in dirs:
        _refuse_existing(run_dir, overwrite)
    group = cfg.group_dir()
    # folders this call creates, deepest last: removed again (if still empty) when a check fails
    created = [p for p in [*reversed(group.parents), group, *dirs] if not p.exists()]
    prepare_output_dir(group, "fine-tuning output folder")
    locks: list[FolderLock] = []
    try:
        for run_dir in dirs:
            run_dir.mkdir(parents=True, exist_ok=True)
            locks.append(FolderLock(run_dir / LOCK_FILE, run_dir, "fine-tuning run folder").acquire())
        check_inputs(cfg)
    except BaseException:
        for lock in locks:
            lock.release()
        for folder in reversed(created):
            _remove_if_empty(folder)
        raise
    try:
        results = [_run_locked(cfg, seed, run_dir, overwrite) for seed, run_dir in zip(cfg.seed_list, dirs)]
    finally:
        for lock in locks:
            lock.release()
    if any(result is None for result in results):  # not rank 0
        return {"seeds": cfg.seed_list, "metrics": {}}
    return write_aggregate(cfg.group_dir(), results)
