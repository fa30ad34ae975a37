"""Checkpoint files written atomically and read without executing code.

* :func:`atomic_torch_save` writes ``<path>.tmp`` (flushed and fsync'ed) and renames it over ``path``
  with :func:`os.replace`: a crash or ``kill -9`` mid-write leaves the previous file intact and at most
  a stale ``.tmp`` behind, never a truncated checkpoint under the real name. A write that fails
  (read-only, no space, file too large) raises :class:`~cromss.errors.OutputError` naming the file.
* :func:`safe_torch_load` is ``torch.load(weights_only=True)`` (tensors, plain containers and an
  explicit allow-list only); a file that pickles anything else, or that is truncated / not a
  checkpoint, raises :class:`~cromss.errors.CheckpointError` naming the file.
* :class:`AtomicCheckpointIO` plugs both into Lightning (``Trainer(plugins=[AtomicCheckpointIO()])``),
  so ``last.ckpt`` / ``best.ckpt`` are written atomically and resumed safely.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cromss.errors import CheckpointError

__all__ = ["AtomicCheckpointIO", "METRICS_KEY", "TEMP_SUFFIX", "atomic_torch_save", "checkpoint_metrics",
           "safe_torch_load", "trusted_globals"]

#: Suffix of the temporary file a checkpoint is written to before the rename.
TEMP_SUFFIX = ".tmp"
#: Key of a cromss checkpoint holding the metrics of its epoch (``{"val/loss": 0.41, ...}``): the
#: weights-only ``best.ckpt`` says which epoch and scores it holds without the callback state.
METRICS_KEY = "cromss_metrics"


def checkpoint_metrics(metrics: Any) -> dict[str, float]:
    """Scalar metrics (e.g. ``trainer.callback_metrics``) as plain floats, NaN/Inf dropped."""
    import math

    out = {}
    for key, value in dict(metrics).items():
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def trusted_globals() -> list[Any]:
    """Classes besides tensors and containers that cromss accepts inside a checkpoint.

    ``argparse.Namespace`` (the official CromSS checkpoints pickle one as hyper-parameters) and
    Lightning's ``AttributeDict`` (``save_hyperparameters``) are plain attribute bags: no code runs.
    """
    import argparse

    allowed: list[Any] = [argparse.Namespace]
    try:
        from lightning.fabric.utilities.data import AttributeDict

        allowed.append(AttributeDict)
    except ImportError:  # pragma: no cover - lightning is a dependency
        pass
    return allowed


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` through ``<path>.tmp`` + fsync + :func:`os.replace`; returns ``path``."""
    import torch

    from cromss.outputs import os_error_in, output_error

    path = Path(path)
    temp = path.with_name(path.name + TEMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:  # open(): permissions 0666 & ~umask, readable by the team
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as err:
        # a failed write (disk full, interrupt) must not leave a half file that looks usable
        try:
            temp.unlink(missing_ok=True)
        except OSError:
            pass
        cause = os_error_in(err)  # not a folder, read-only, no space, file too large: one line
        if cause is not None:
            raise output_error(cause, path, "checkpoint") from None
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (directory entry on disk); not possible on every OS / file system."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def safe_torch_load(
    path: str | Path,
    *,
    extra_globals: Iterable[Any] = (),
    map_location: Any = "cpu",
    what: str = "checkpoint",
) -> Any:
    """Read a torch file with ``weights_only=True``; refuse (CheckpointError) what is unsafe or corrupt.

    Args:
        path: ``.ckpt`` / ``.pt`` / ``.pth`` file.
        extra_globals: classes to allow on top of :func:`trusted_globals`.
        map_location: as ``torch.load`` (default: everything on the CPU).
        what: what the file is, for messages.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals([*trusted_globals(), *extra_globals]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        match = re.search(r"GLOBAL (\S+)", str(err))
        if match is None:
            raise CheckpointError(
                f"cannot read {what} {path}: corrupt or not a PyTorch checkpoint ({err})"
            ) from None
        raise CheckpointError(
            f"refused to load {what} {path}: it pickles the Python object {match.group(1)}, which is outside the "
            "safe allow-list (tensors, plain containers, argparse.Namespace, AttributeDict). cromss never "
            "un-pickles code from a checkpoint; if you trust the file, re-save only its state_dict."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, AttributeError, ImportError, KeyError) as err:
        raise CheckpointError(
            f"cannot read {what} {path}: truncated, corrupt or not a PyTorch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from None


def _checkpoint_io_base() -> type:
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    return TorchCheckpointIO


class AtomicCheckpointIO(_checkpoint_io_base()):  # type: ignore[misc]
    """Lightning CheckpointIO: atomic local writes, weights-only reads with CheckpointError messages."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see :func:`atomic_torch_save`)."""
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint does not take storage_options")
        if "://" in str(path):  # remote file systems: Lightning's own transactional write
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Read ``path`` weights-only, whatever ``weights_only`` the caller passes (never executes code)."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        state = safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")
        if not isinstance(state, dict):
            raise CheckpointError(
                f"checkpoint {path} holds {type(state).__name__}, not a Lightning checkpoint dict"
            )
        return state


def last_checkpoint_callback(dirpath: Any, filename: str, every_n_epochs: int = 1,
                             every_n_steps: int | None = None) -> Any:
    """The ``last.ckpt`` writer: every ``every_n_epochs`` epochs (0 = never at epoch ends), every
    ``every_n_steps`` optimizer steps if set (mid-epoch resume of streamed data), and always at the
    end of the final epoch, so a finished run always holds its final state.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    class LastCheckpoint(ModelCheckpoint):
        """Overwrites one checkpoint file (no monitor) on an epoch and / or step interval."""

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            epoch = trainer.current_epoch + 1
            final = bool(trainer.should_stop) or (trainer.max_epochs is not None and epoch >= trainer.max_epochs)
            due = final or (every_n_epochs >= 1 and epoch % every_n_epochs == 0)
            if due and not self._should_skip_saving_checkpoint(trainer):
                self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    return LastCheckpoint(
        dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, save_on_train_epoch_end=True,
        every_n_train_steps=every_n_steps or None, every_n_epochs=None if every_n_steps else 1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )


def fit_interruptible(trainer: Any, *args: Any, **kwargs: Any) -> None:
    """``trainer.fit(...)``; Ctrl-C, which Lightning turns into exit status 1, is re-raised as
    KeyboardInterrupt so the CLI prints its one line and exits 130."""
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
