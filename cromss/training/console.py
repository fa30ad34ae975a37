"""What a run prints when there is no progress bar (not a terminal, or ``trainer.progress_bar: false``).

One line per epoch, from values Lightning has already computed for the epoch (read back together, one
host synchronisation per epoch), then a summary at the end with the next commands to run::

    epoch 3/40  loss 1.214 (val 1.305 *)  mIoU noisy s1 21.4 s2 30.2  true s1 23.0 s2 33.9  noise AUC s1 0.702 s2 0.781  12.1 s  ETA 7 min 25 s

``*`` marks an epoch whose validation loss is the best so far (``best.ckpt`` was written). Fine-tuning
prints the same kind of line (``loss``, ``val`` loss, the validation mIoU / OA / mF1 it selects the
best checkpoint by). Only global rank 0 prints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["Column", "EpochConsole", "best_epoch_of", "finetune_columns", "format_duration", "pretrain_columns",
           "pretrain_console"]


@dataclass(frozen=True)
class Column:
    """One group of an epoch line: ``title`` then ``label value`` for each metric present."""

    title: str
    metrics: tuple[tuple[str, str], ...]  # (label, metric key)
    scale: float = 1.0
    digits: int = 3


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``7 min 25 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def pretrain_columns(modalities: Sequence[str]) -> list[Column]:
    """The groups of a pretraining line (the metric names of :class:`cromss.training.CromSSModule`)."""
    return [
        Column("mIoU noisy", tuple((m, f"val/miou_noisy_{m}") for m in modalities), scale=100.0, digits=1),
        Column("true", tuple((m, f"val/miou_true_{m}") for m in modalities), scale=100.0, digits=1),
        Column("noise AUC", tuple((m, f"val/noise_auc_{m}") for m in modalities)),
    ]


def finetune_columns() -> list[Column]:
    """The groups of a fine-tuning line (the metric names of the fine-tuning module)."""
    return [Column("val", (("mIoU", "val_miou"), ("OA", "val_oa"), ("mF1", "val_mf1")), scale=100.0, digits=1)]


class EpochConsole(L.Callback):
    """Prints one line per training epoch and a summary at the end (see the module docstring).

    Args:
        columns: the metric groups of the line after the losses.
        loss_keys: (epoch train loss, validation loss) metric names.
        mode: 'min' or 'max': which direction of ``monitor`` is better (the ``*`` mark, best epoch).
        monitor: the metric the best checkpoint follows.
        summary: called at the end with (trainer, best epoch or None, best value or None); returns the lines
            to print after the epochs (run folder, next commands), or None.
        printer: where lines go (default ``print(..., flush=True)``).
        checkpoint: the ModelCheckpoint of the best checkpoint: a resumed run starts from its best score.
        prefix: put before every epoch line (e.g. the seed of a fine-tuning run).
    """

    def __init__(self, columns: Sequence[Column], loss_keys: tuple[str, str], monitor: str, mode: str = "min",
                 summary: Callable[[Any, int | None, float | None], list[str] | None] | None = None,
                 printer: Callable[[str], None] | None = None, checkpoint: Any = None, prefix: str = "") -> None:
        self.checkpoint = checkpoint
        self.prefix = prefix
        self.columns = list(columns)
        self.loss_keys = loss_keys
        self.monitor, self.mode = monitor, mode
        self.summary = summary
        self.printer = printer or (lambda line: print(line, flush=True))
        self.best: tuple[int, float] | None = None
        self._started = 0.0
        self._epoch_seconds: list[float] = []
        self._validated: int | None = None

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._started = time.perf_counter()
        score = getattr(self.checkpoint, "best_model_score", None)
        if self.best is None and score is not None and trainer.is_global_zero:  # resumed: the earlier best
            self.best = (best_epoch_of(self.checkpoint.best_model_path), float(score))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._validated = trainer.current_epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        seconds = time.perf_counter() - self._started
        self._epoch_seconds.append(seconds)
        # every value at once: one host read per epoch
        metrics = _read(trainer.callback_metrics, self._keys())
        skipped = getattr(pl_module, "skipped_steps", None)  # the device counter (logged after this hook)
        if skipped is not None:
            metrics["train/skipped_steps"] = float(skipped)
        if not trainer.is_global_zero:
            return
        self.printer(self.line(trainer, metrics, seconds))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero or self.summary is None or trainer.interrupted:
            return
        best = self.best if self.best is not None else (None, None)
        lines = self.summary(trainer, *best)  # type: ignore[arg-type]
        for line in lines or ():
            self.printer(line)

    # ------------------------------------------------------------------ the line
    def _keys(self) -> list[str]:
        keys = [f"{self.loss_keys[0]}_epoch", self.loss_keys[0], self.loss_keys[1]]
        return keys + [key for column in self.columns for _, key in column.metrics]

    def line(self, trainer: Any, metrics: dict[str, float], seconds: float) -> str:
        """The epoch line for ``metrics`` (name -> float; absent metrics are left out)."""
        epoch = trainer.current_epoch
        total = trainer.max_epochs
        parts = [f"{self.prefix}epoch {epoch + 1}/{total}" if total and total > 0 else f"{self.prefix}epoch {epoch + 1}"]
        train = metrics.get(f"{self.loss_keys[0]}_epoch", metrics.get(self.loss_keys[0]))
        validated = self._validated == epoch
        val = metrics.get(self.loss_keys[1]) if validated else None
        loss = f"loss {_number(train)}" if train is not None else ""
        if val is not None:
            mark = " *" if self._improves(epoch, metrics.get(self.monitor)) else ""
            loss += f" (val {_number(val)}{mark})"
        if loss:
            parts.append(loss.strip())
        if validated:
            for column in self.columns:
                shown = [f"{label} {_number(metrics[key] * column.scale, column.digits)}"
                         for label, key in column.metrics if key in metrics]
                if shown:
                    parts.append(f"{column.title} {' '.join(shown)}")
        skipped = metrics.get("train/skipped_steps")
        if skipped:
            parts.append(f"skipped steps {int(skipped)}")
        parts.append(format_duration(seconds))
        remaining = (total - epoch - 1) if total and total > 0 else 0
        if remaining > 0:
            recent = self._epoch_seconds[-5:]  # the first epoch includes start-up: follow the recent ones
            parts.append(f"ETA {format_duration(remaining * sum(recent) / len(recent))}")
        return "  ".join(parts)

    def _improves(self, epoch: int, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best[1] if self.mode == "min" else value > self.best[1])
        if better:
            self.best = (epoch, value)
        return better


def _number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def _read(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """``keys`` of ``metrics`` as floats, the tensors read back in one transfer."""
    wanted = [k for k in dict.fromkeys(keys) if k in metrics]
    tensors = [(k, metrics[k]) for k in wanted if torch.is_tensor(metrics[k]) and metrics[k].numel() == 1]
    out: dict[str, float] = {}
    if tensors:
        values = torch.stack([t.detach().reshape(()).double() for _, t in tensors]).cpu().tolist()
        out.update({k: v for (k, _), v in zip(tensors, values)})
    for key in wanted:
        if key not in out:
            try:
                out[key] = float(metrics[key])
            except (TypeError, ValueError):
                pass
    return out


def best_epoch_of(path: str | Path) -> int | None:
    """The epoch stored in a checkpoint (memory-mapped: the weights are not read), or None."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a summary line is not worth an error
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


def pretrain_console(cfg: Any, run_dir: Path, checkpoint: Any = None,
                     printer: Callable[[str], None] | None = None) -> EpochConsole:
    """The console of ``cromss pretrain``: epoch lines, then the final noise AUC, the run folder, the best
    epoch and the next commands (export the encoder, fine-tune with it) with this run's paths."""
    modalities = list(cfg.model.modalities)

    def summary(trainer: Any, best_epoch: int | None, best_value: float | None) -> list[str]:
        metrics = _read(trainer.callback_metrics, [f"val/noise_auc_{m}" for m in modalities])
        lines = []
        aucs = [f"{m} {metrics[f'val/noise_auc_{m}']:.3f}" for m in modalities if f"val/noise_auc_{m}" in metrics]
        if aucs:
            lines.append(f"noise-detection ROC-AUC of 1 - W_l (validation): {', '.join(aucs)}")
        best = (f"best epoch {best_epoch + 1} (val loss {best_value:.4f}, checkpoints/best.ckpt)"
                if best_epoch is not None and best_value is not None else "no validation loss: no best epoch")
        lines.append(f"run folder: {run_dir}  ({best}; {trainer.current_epoch} epochs done)")
        modality = "s2" if "s2" in modalities else modalities[0]
        if cfg.data.kind == "generic":
            task = "configs/own-data/finetune-deeplabv3plus.yaml data.root=YOUR_LABELLED_DATA"
        else:
            task = "configs/finetune/dw-deeplabv3plus.yaml"
        lines += [
            "next:",
            f"  cromss export-encoder {run_dir} --modality {modality} {run_dir / f'{modality}-encoder.safetensors'}",
            f"  cromss finetune --config {task} --encoder {run_dir} --modality {modality}",
        ]
        return lines

    return EpochConsole(pretrain_columns(modalities), ("train/loss", "val/loss"), monitor="val/loss", mode="min",
                        summary=summary, printer=printer, checkpoint=checkpoint)
