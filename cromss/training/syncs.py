"""Counting host synchronisations of training steps (issue 23): tensor -> Python conversions and the
operations that make the host wait for the device.

On a GPU every one of these stalls the pipeline: the host waits until the device has finished all
queued work before it can continue. On CPU nothing waits, but the same calls are made, so counting
them in a CPU run finds exactly the calls that would block on a GPU. What is counted
(:data:`CONVERSIONS`, :data:`IMPLICIT_SYNCS`, :data:`UPLOADS`):

* conversions: ``Tensor.item / tolist / numpy / cpu / __bool__ / __float__ / __int__ / __index__ /
  __format__ / __repr__``, ``.to('cpu')``;
* operations whose output size depends on the data, which PyTorch computes by reading a value back
  (``nonzero``, ``argwhere``, ``masked_select``, boolean-mask indexing ``x[mask]`` / ``x[mask] = v``,
  ``unique``, ``bincount``, ``histc``, ``repeat_interleave`` without ``output_size``, one-argument
  ``torch.where``, ``equal``, ``allclose``);
* uploads of Python values with a ``device=`` argument (``torch.tensor(0.5, device=d)``, e.g. what
  ``LightningModule.log`` does with a Python float): a blocking host-to-device copy, which on CUDA
  synchronises the stream.

Each call is counted once (the mode is off while a torch function runs, so ``f"{t:g}"`` counts as one
``__format__``, not also as the ``item`` inside it). Not seen: synchronisations made inside the C++
code of other operations. On CUDA, ``HostSyncCounter(cuda_debug=True)`` (inside the training steps) and
:func:`count_cuda_syncs` (any block) add PyTorch's own detector (``torch.cuda.set_sync_debug_mode``),
which sees every synchronising CUDA call; benchmarks/gpu_check.py reports both.

Use::

    counter = HostSyncCounter()
    with counter:                      # a TorchFunctionMode: sees every torch call of this thread
        cromss.training.pretrain(cfg, callbacks=[counter.window()])   # or Trainer(callbacks=[...])
    counter.per_step("cromss")         # counted calls per training step made by cromss code

:meth:`HostSyncCounter.window` is a Lightning callback marking the phases of each training step
(batch transfer + ``on_after_batch_transfer``, ``on_train_batch_start`` .. ``on_train_batch_end``:
forward, losses, selection, backward, optimizer). Each event records where it came from: the innermost
cromss or Lightning frame ('cromss' / 'lightning', e.g. Lightning's progress bar and loggers), 'loader'
for DataLoader work (CPU tensors of the dataset, not a device sync), else 'other'.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CONVERSIONS", "IMPLICIT_SYNCS", "UPLOADS", "HostSyncCounter", "SyncEvent", "count_cuda_syncs"]

#: Tensor methods that hand a value to Python.
CONVERSIONS: frozenset[str] = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "__format__",
    "__repr__", "__str__", "__array__", "__complex__",
})
#: Operations whose output shape depends on tensor values (PyTorch reads a value back to size it).
IMPLICIT_SYNCS: frozenset[str] = frozenset({
    "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "bincount", "histc",
    "equal", "allclose",
})
#: Factories that copy Python data to ``device=`` (blocking on CUDA).
UPLOADS: frozenset[str] = frozenset({"tensor", "as_tensor", "scalar_tensor"})

_PACKAGE = str(Path(__file__).resolve().parents[1])  # .../cromss
_THIS = str(Path(__file__).resolve())
_TORCH = str(Path(torch.__file__).resolve().parent)


@dataclass(frozen=True)
class SyncEvent:
    """One counted call: what (``kind`` / ``name``), in which phase, from where."""

    kind: str  # 'conversion' | 'implicit' | 'upload'
    name: str
    phase: str  # 'transfer' | 'step' | 'outside'
    origin: str  # 'cromss' | 'lightning' | 'other'
    where: str  # file:line function of the innermost cromss frame (or the innermost non-torch frame)


def _is_bool_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


def _classify(func: Any, args: tuple, kwargs: dict) -> tuple[str, str] | None:
    name = getattr(func, "__name__", "")
    if name in CONVERSIONS:
        return "conversion", name
    if name == "to":
        target = kwargs.get("device", args[1] if len(args) > 1 else None)
        if isinstance(target, str | torch.device) and torch.device(target).type == "cpu" and isinstance(
                args[0], torch.Tensor) and args[0].device.type != "cpu":
            return "conversion", "to(cpu)"
        return None
    if name in IMPLICIT_SYNCS:
        return "implicit", name
    if name == "repeat_interleave" and kwargs.get("output_size") is None and len(args) < 4:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if isinstance(repeats, torch.Tensor) and repeats.numel() > 1:
            return "implicit", "repeat_interleave"
        return None
    if name == "where" and len(args) + len(kwargs) == 1:
        return "implicit", "where(cond)"
    if name in ("__getitem__", "__setitem__", "index_put_", "index_put") and len(args) > 1:
        index = args[1]
        if name.startswith("index_put"):
            index = tuple(index) if isinstance(index, list | tuple) else (index,)
        if _is_bool_index(index):
            return "implicit", f"{name}[bool mask]"
        return None
    if name in UPLOADS and kwargs.get("device") is not None:
        data = args[0] if args else kwargs.get("data")
        if not isinstance(data, torch.Tensor):
            return "upload", f"{name}(device=)"
    return None


def _origin() -> tuple[str, str]:
    """('loader' | 'cromss' | 'lightning' | 'other', where) of the current Python stack.

    'loader': inside a DataLoader fetch (dataset code on CPU tensors, in the main process only with
    ``num_workers: 0``) - not a device sync.
    """
    frames = traceback.extract_stack()
    if any("torch/utils/data/" in f.filename or "/litdata/" in f.filename for f in frames):
        return "loader", ""
    innermost_outside_torch = ""
    for frame in reversed(frames):  # innermost first: the first cromss or Lightning frame decides
        path = frame.filename
        if path == _THIS or path.startswith(_TORCH):
            continue
        if path.startswith(_PACKAGE):
            return "cromss", f"{Path(path).relative_to(Path(_PACKAGE).parent)}:{frame.lineno} {frame.name}"
        if "/lightning/" in path:
            return "lightning", f"{path.split('/lightning/', 1)[1]}:{frame.lineno} {frame.name}"
        if not innermost_outside_torch:
            innermost_outside_torch = f"{path}:{frame.lineno} {frame.name}"
    return "other", innermost_outside_torch


class HostSyncCounter(TorchFunctionMode):
    """A TorchFunctionMode recording every counted call (see the module docstring) as a SyncEvent.

    ``phase`` is set by :meth:`window`: 'transfer' (a training batch moved to the device and
    preprocessed), 'step' (``on_train_batch_start`` .. ``on_train_batch_end``: forward, losses,
    selection, backward, optimizer), 'between' (after a step until the next one: Lightning's
    logging of the step, step checkpoints, fetching the next batch), 'outside' (the rest:
    validation, epoch ends, set-up).
    """

    def __init__(self, cuda_debug: bool = False) -> None:
        super().__init__()
        self.events: list[SyncEvent] = []
        self.phase = "outside"
        self.steps = 0
        #: every torch call seen, per phase (shows that a phase was observed at all)
        self.calls: Counter[str] = Counter()
        #: also count what PyTorch's CUDA sync detector reports inside the training steps (CUDA only)
        self.cuda_debug = bool(cuda_debug) and torch.cuda.is_available()
        self._warnings: Any = None
        self._caught: list[Any] = []

    def __enter__(self) -> HostSyncCounter:
        if self.cuda_debug:
            self._warnings = warnings.catch_warnings(record=True)
            self._caught = self._warnings.__enter__()
            warnings.simplefilter("always")
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        result = super().__exit__(*exc)
        if self._warnings is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(*exc)
            self._warnings = None
        return result

    def set_phase(self, phase: str) -> None:
        """Enter ``phase``; with ``cuda_debug`` the CUDA sync detector is on in 'transfer' and 'step' only."""
        self.phase = phase
        if self.cuda_debug:
            torch.cuda.set_sync_debug_mode("warn" if phase in ("transfer", "step") else "default")

    @property
    def cuda_syncs(self) -> int | None:
        """Synchronising CUDA calls inside training steps (PyTorch's detector), None without ``cuda_debug``."""
        if not self.cuda_debug:
            return None
        return sum("synchroniz" in str(w.message) for w in self._caught)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        self.calls[self.phase] += 1
        found = _classify(func, args, kwargs)
        if found is not None:
            origin, where = _origin()
            self.events.append(SyncEvent(found[0], found[1], self.phase, origin, where))
        return func(*args, **kwargs)

    def window(self) -> Any:
        """A Lightning callback setting :attr:`phase` (put it last in the callback list)."""
        return _StepWindow(self)

    def step_events(self, origin: str | None = None) -> list[SyncEvent]:
        """Events attributable to training steps: phases 'transfer' and 'step' (loader work excluded)."""
        return [e for e in self.events if e.phase in ("transfer", "step") and e.origin != "loader"
                and (origin is None or e.origin == origin)]

    def per_step(self, origin: str | None = None) -> float:
        """Counted calls per training step (all origins, or one of 'cromss', 'lightning', 'other')."""
        return len(self.step_events(origin)) / max(self.steps, 1)

    def between_per_step(self) -> float:
        """Calls per step after the step itself (Lightning's step logging, step checkpoints), loader excluded."""
        return len([e for e in self.events if e.phase == "between" and e.origin != "loader"]) / max(self.steps, 1)

    def summary(self) -> dict[str, Any]:
        """Counts per origin and per call site of the events attributable to training steps."""
        return {
            "steps": self.steps,
            "per_step": self.per_step(),
            "per_step_by_origin": {o: self.per_step(o) for o in ("cromss", "lightning", "other")},
            "between_steps_per_step": self.between_per_step(),
            "cuda_syncs_per_step": None if self.cuda_syncs is None else self.cuda_syncs / max(self.steps, 1),
            "calls": dict(Counter(f"{e.origin} {e.kind} {e.name} @ {e.where}" for e in self.step_events())),
        }


def _step_window_base() -> type:
    from lightning.pytorch.callbacks import Callback

    return Callback


class _StepWindow(_step_window_base()):  # type: ignore[misc]
    """Sets ``counter.phase`` around every training step (see :class:`HostSyncCounter`)."""

    def __init__(self, counter: HostSyncCounter) -> None:
        self.counter = counter
        self._patched: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # the batch is moved and preprocessed (on_after_batch_transfer) before on_train_batch_start
        original = pl_module._apply_batch_transfer_handler
        counter = self.counter

        def transfer(batch: Any, device: Any = None, dataloader_idx: int = 0) -> Any:
            if not trainer.training or trainer.sanity_checking:
                return original(batch, device, dataloader_idx)
            counter.set_phase("transfer")
            try:
                return original(batch, device, dataloader_idx)
            finally:
                counter.set_phase("between")

        pl_module._apply_batch_transfer_handler = transfer
        self._patched = (pl_module, original)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.counter.set_phase("outside")
        if self._patched is not None:
            module, original = self._patched
            module._apply_batch_transfer_handler = original
            self._patched = None

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.counter.set_phase("between")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.counter.set_phase("step")

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.counter.set_phase("between")
        self.counter.steps += 1

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.counter.set_phase("outside")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.counter.set_phase("outside")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.counter.set_phase("outside")


@contextmanager
def count_cuda_syncs() -> Iterator[list[str]]:
    """Collect PyTorch's warnings for synchronising CUDA calls (``torch.cuda.set_sync_debug_mode('warn')``).

    Yields a list that fills with one message per synchronising call made inside the block (empty on
    machines without CUDA).
    """
    found: list[str] = []
    if not torch.cuda.is_available():
        yield found
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))
