"""The GPU check of issue 23: one command, <= 8 min on one GPU, ONE Markdown table on stdout.

What it measures (progress goes to stderr):

* **CromSS step** - the real ``CromSSModule.training_step`` inside a Lightning fit (device preprocessing of a
  compact uint8 batch, spatial-temporal smoothing, cross-modal selection, losses, the non-finite-step
  guard, backward, fused Adam): ResNet-50 U-Nets, mid and late fusion, 256 px, fp32 (``32-true``) and
  ``bf16-mixed``, channels_last off / on. The batch is the largest that fits, searched per (fusion,
  precision) by doubling then bisecting (multiples of 8) with one full training step per try, with
  channels_last on; the same batch is then used with it off. Step time = wall time of the timed steps
  (CUDA synchronised at both ends only) / steps; samples/s = batch / step time; peak GPU memory =
  ``torch.cuda.max_memory_allocated`` over the timed steps. The batch lives on the GPU (no loader in the
  way: the loader is measured on its own below).
* **host syncs / step** - per (fusion, precision), a short fit counted with
  ``cromss.training.syncs.HostSyncCounter`` (tensor -> Python conversions and value-dependent ops made
  inside training steps, split into cromss's and Lightning's) and with PyTorch's CUDA sync detector
  (``torch.cuda.set_sync_debug_mode``), which sees every synchronising CUDA call.
* **loader** - samples/s of the pretraining loader reading a litdata stream made with
  ``cromss data convert --to stream`` from generated NoL-layout data (264 px chips, 256 px crops, drawn
  flips / rotations, compact samples as the DataModule serves them) with 4, 8 and 16 workers.

    bash benchmarks/gpu_check.sh                    # the GPU check (same as: python benchmarks/gpu_check.py)
    python benchmarks/gpu_check.py --toy            # the same code at toy size on CPU (tests/test_gpu_check.py)
    python benchmarks/gpu_check.py --out runs/gpu_check.json   # also keep the numbers as JSON

The loader is measured first; a (fusion, precision) pair is not started after ``--budget-s`` (default
420 s; one pair takes about a minute) and is listed as skipped, so that the check ends within 8 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass
class Settings:
    encoder: str = "resnet50"
    size: int = 256
    decoder: tuple[int, ...] = (256, 128, 64, 32, 16)
    fusions: tuple[str, ...] = ("mid", "late")
    precisions: tuple[str, ...] = ("32-true", "bf16-mixed")
    channels_last: tuple[bool, ...] = (False, True)
    first_batch: int = 16
    max_batch: int = 1024
    warmup: int = 3
    steps: int = 10
    count_batch: int = 8
    count_steps: int = 4
    workers: tuple[int, ...] = (4, 8, 16)
    locations: int = 64
    chip: int = 264
    crop: int = 256
    loader_batch: int = 32
    loader_batches: int = 20
    chunk_bytes: str = "4MB"
    budget_s: float = 420.0
    extra: dict[str, Any] = field(default_factory=dict)


TOY = dict(encoder="resnet18", size=32, decoder=(8, 8, 8, 8, 8), first_batch=4, max_batch=4, warmup=1, steps=2,
           count_batch=2, count_steps=2, workers=(0, 1), locations=6, chip=40, crop=32, loader_batch=2,
           loader_batches=2, chunk_bytes="256KB")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the CromSS step
def _module(s: Settings, fusion: str, channels_last: bool) -> Any:
    from cromss.data.preprocess import BatchPreprocess
    from cromss.training import PretrainConfig
    from cromss.training.module import CromSSModule

    cfg = PretrainConfig()
    cfg.data.root = "unused"  # the batches are made here, on the device
    cfg.model.encoder, cfg.model.fusion = s.encoder, fusion
    cfg.model.decoder_channels = list(s.decoder)
    cfg.model.channels_last = channels_last
    cfg.optim.scheduler = "none"
    module = CromSSModule(cfg)
    # uint8 NoL values: x / 255 on the device, then the drawn flips / rotations (as in training)
    module.batch_preprocess = BatchPreprocess(["s1", "s2"], {"s1": None, "s2": None})
    return module


def _batch(batch: int, size: int, device: Any) -> dict[str, Any]:
    """A compact training batch on ``device`` (what the loader delivers after the host-to-device copy)."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(0)
    seasons = torch.randint(0, 9, (batch, 4, size, size), generator=g, dtype=torch.uint8)
    season = torch.randint(0, 4, (batch,), generator=g)
    out = {
        "s1": torch.randint(0, 256, (batch, 2, size, size), generator=g, dtype=torch.uint8),
        "s2": torch.randint(0, 256, (batch, 13, size, size), generator=g, dtype=torch.uint8),
        "labels_all_seasons": seasons,
        "label": seasons[torch.arange(batch), season],
        "season": season,
        "valid": torch.ones(batch, size, size, dtype=torch.bool),
        "aug": torch.stack([torch.randint(0, 2, (batch,), generator=g), torch.randint(0, 2, (batch,), generator=g),
                            torch.randint(0, 4, (batch,), generator=g)], 1),
    }
    return {**{k: v.to(device) for k, v in out.items()}, "id": [f"s{i}" for i in range(batch)]}


class _Repeat:
    """The same device batch ``n`` times (an iterable Lightning accepts as a train loader)."""

    def __init__(self, batch: dict[str, Any], n: int) -> None:
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self) -> int:
        return self.n


def _trainer(precision: str, cuda: bool, callbacks: list, steps: int) -> Any:
    import lightning as L

    return L.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision=precision, max_epochs=1,
                     limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     callbacks=callbacks)


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fits(s: Settings, fusion: str, precision: str, batch: int, device: Any) -> bool:
    """One full training step (forward, selection, losses, backward, Adam) at ``batch``: True if it fits."""
    import torch

    module = optimizer = data = None
    fitted = False
    try:
        module = _module(s, fusion, channels_last=True).to(device)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, fused=True)
        data = module.batch_preprocess(_batch(batch, s.size, device))
        bf16 = precision.startswith("bf16")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = module._forward(data)
        probs = {m: out.float().softmax(1) for m, out in logits.items()}
        weights = module.weights(probs, data["label"], 0.5, 1.0, True, validate=False)
        loss, _ = module.objective(logits, probs, module.targets(data, validate=False), weights)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        fitted = True
    except torch.cuda.OutOfMemoryError:
        pass  # the traceback (holding the activations) is released when this handler ends
    module = optimizer = data = logits = probs = weights = loss = None
    _free()
    return fitted


def largest_batch(s: Settings, fusion: str, precision: str, device: Any) -> int:
    """Doubling from ``first_batch`` until a step does not fit (or ``max_batch``), then bisection to 1/8."""
    low, high = 0, None
    batch = s.first_batch
    while batch <= s.max_batch:
        if not fits(s, fusion, precision, batch, device):
            high = batch
            break
        low, batch = batch, batch * 2
    if low == 0:
        return 0
    if high is not None:  # bisect to 1/8 of the batch (multiples of 8): a few tries, not a dozen
        while high - low > max(8, low // 8):
            middle = (low + high) // 2 // 8 * 8 or low
            if middle in (low, high):
                break
            low, high = (middle, high) if fits(s, fusion, precision, middle, device) else (low, middle)
    return low


class _Timer:
    """Lightning callback: wall time of the steps after ``warmup`` (synchronised only at both ends)."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.started: float | None = None
        self.ended: float | None = None
        self.timed = 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def hooks(self) -> Any:
        import lightning as L

        timer = self

        class Hooks(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx + 1 == timer.warmup:
                    timer._sync()
                    if timer.cuda:
                        import torch

                        torch.cuda.reset_peak_memory_stats()
                    timer.started = time.perf_counter()
                elif batch_idx + 1 > timer.warmup:
                    timer.timed += 1

            def on_train_end(self, trainer, pl_module):
                timer._sync()
                timer.ended = time.perf_counter()

        return Hooks()


def time_cell(s: Settings, fusion: str, precision: str, channels_last: bool, batch: int, device: Any) -> dict:
    import torch

    cuda = device.type == "cuda"
    timer = _Timer(s.warmup, cuda)
    module = _module(s, fusion, channels_last)
    trainer = _trainer(precision, cuda, [timer.hooks()], s.warmup + s.steps)
    trainer.fit(module, train_dataloaders=_Repeat(_batch(batch, s.size, device), s.warmup + s.steps))
    step_s = (timer.ended - timer.started) / max(timer.timed, 1)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    del module, trainer
    _free()
    return {"step_ms": 1000 * step_s, "samples_s": batch / step_s, "peak_mb": peak, "skipped": 0}


def count_syncs(s: Settings, fusion: str, precision: str, device: Any) -> dict:
    """Counted conversions per step (cromss / all) and CUDA syncs per step in a short real fit."""
    from cromss.training.syncs import HostSyncCounter

    cuda = device.type == "cuda"
    counter = HostSyncCounter(cuda_debug=cuda)
    module = _module(s, fusion, channels_last=True)
    trainer = _trainer(precision, cuda, [counter.window()], s.count_steps)
    with counter:
        trainer.fit(module, train_dataloaders=_Repeat(_batch(s.count_batch, s.size, device), s.count_steps))
    del module, trainer
    _free()
    summary = counter.summary()
    return {"cromss": summary["per_step_by_origin"]["cromss"], "all": summary["per_step"],
            "cuda": summary["cuda_syncs_per_step"], "calls": summary["calls"]}


# ----------------------------------------------------------------------------- the loader
def loader_rates(s: Settings, work: Path) -> list[tuple[int, float]]:
    from data_loading import measure

    from cromss.cli import main as cromss_main
    from cromss.data.demo import make_demo

    started = time.perf_counter()
    make_demo(work / "demo", locations=s.locations, size=s.chip, dw_train=0, dw_test=0, layouts=("lmdb",))
    with contextlib.redirect_stdout(sys.stderr):  # stdout holds the table only
        status = cromss_main(["data", "convert", str(work / "demo" / "nol"), str(work / "stream"), "--to", "stream",
                              "--chunk-bytes", s.chunk_bytes])
    if status != 0:
        raise SystemExit(f"cromss data convert failed with status {status}")
    log(f"loader data: {s.locations} locations of {s.chip} px written and streamed in "
        f"{time.perf_counter() - started:.0f} s")
    rates = []
    for workers in s.workers:
        rate, _, _ = measure(work / "stream", "stream", workers, s.loader_batch, s.loader_batches, crop=s.crop)
        log(f"loader: {workers} workers {rate:.0f} samples/s")
        rates.append((workers, rate))
    return rates


# ----------------------------------------------------------------------------- the table
def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(s: Settings, cells: list[dict], counts: dict, loader: list[tuple[int, float]], info: dict) -> str:
    lines = ["| part | setting | batch | step (ms) | samples/s | peak GPU memory (MB) | host conversions / step "
             "(cromss; all) | CUDA syncs / step (torch detector) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        setting = (f"{s.encoder} {c['fusion']} fusion, {s.size} px, {c['precision']}, channels_last "
                   f"{'on' if c['channels_last'] else 'off'}")
        count = counts.get((c["fusion"], c["precision"]), {})
        syncs = f"{_fmt(count.get('cromss'), 2)}; {_fmt(count.get('all'), 2)}" if count else "–"
        if c.get("note"):
            lines.append(f"| CromSS step | {setting} | {c.get('batch') or '–'} | {c['note']} | – | – | {syncs} | "
                         f"{_fmt(count.get('cuda'), 2) if count else '–'} |")
            continue
        lines.append(f"| CromSS step | {setting} | {c['batch']} | {_fmt(c['step_ms'])} | {_fmt(c['samples_s'])} | "
                     f"{_fmt(c['peak_mb'], 0)} | {syncs} | {_fmt(count.get('cuda'), 2) if count else '–'} |")
    for workers, rate in loader:
        lines.append(f"| loader | litdata stream, {workers} workers, {s.crop} px crops of {s.chip} px chips | "
                     f"{s.loader_batch} | – | {_fmt(rate)} | – | – | – |")
    lines.append(f"| machine | {info['device']}; torch {info['torch']}; {info['cpus']} CPUs | – | – | – | – | – | "
                 f"total {info['total_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy", action="store_true", help="toy size on the CPU (ResNet-18, 32 px, batch <= 4)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time after which no further (fusion, precision) is started (default 420)")
    parser.add_argument("--max-batch", type=int, default=None, help="upper end of the batch search (default 1024)")
    parser.add_argument("--workers", type=int, nargs="+", default=None, help="loader workers (default 4 8 16)")
    parser.add_argument("--fusions", nargs="+", choices=("mid", "late"), default=None, help="default: mid late")
    parser.add_argument("--precisions", nargs="+", choices=("32-true", "bf16-mixed"), default=None,
                        help="default: 32-true bf16-mixed")
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated data (default: temp)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)

    import os

    import torch

    s = Settings(**TOY) if args.toy else Settings()
    if args.budget_s is not None:
        s.budget_s = args.budget_s
    if args.max_batch is not None:
        s.max_batch = args.max_batch
    if args.workers is not None:
        s.workers = tuple(args.workers)
    if args.fusions is not None:
        s.fusions = tuple(args.fusions)
    if args.precisions is not None:
        s.precisions = tuple(args.precisions)
    cuda = torch.cuda.is_available() and not args.toy
    if not cuda and not args.toy:
        log("no CUDA device: this is the GPU check; use --toy for the CPU version")
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    if not cuda:
        torch.set_num_threads(1)
    started = time.perf_counter()
    # the loader first: its time is bounded; the step cells then fill the rest of the budget
    with tempfile.TemporaryDirectory() as tmp:
        loader = loader_rates(s, args.work or Path(tmp))
    cells: list[dict] = []
    counts: dict[tuple[str, str], dict] = {}
    for fusion in s.fusions:
        for precision in s.precisions:
            if time.perf_counter() - started > s.budget_s:
                for cl in s.channels_last:
                    cells.append({"fusion": fusion, "precision": precision, "channels_last": cl,
                                  "note": "skipped: time budget"})
                continue
            batch = largest_batch(s, fusion, precision, device)
            log(f"{fusion} {precision}: largest batch {batch}")
            counts[(fusion, precision)] = count_syncs(s, fusion, precision, device)
            log(f"{fusion} {precision}: host conversions / step {counts[(fusion, precision)]['all']:.2f}, "
                f"CUDA syncs / step {counts[(fusion, precision)]['cuda']}")
            for cl in s.channels_last:
                cell = {"fusion": fusion, "precision": precision, "channels_last": cl, "batch": batch}
                if batch == 0:
                    cells.append({**cell, "note": f"batch {s.first_batch} does not fit"})
                    continue
                try:
                    cell.update(time_cell(s, fusion, precision, cl, batch, device))
                except torch.cuda.OutOfMemoryError:
                    _free()
                    cell["batch"] = batch = max(8 if cuda else 1, int(batch * 0.85) // 8 * 8)
                    cell.update(time_cell(s, fusion, precision, cl, batch, device))
                log(f"{fusion} {precision} channels_last={cl}: batch {cell['batch']} step {cell['step_ms']:.1f} ms "
                    f"{cell['samples_s']:.1f} samples/s")
                cells.append(cell)
    info = {"device": torch.cuda.get_device_name(0) if cuda else "CPU (toy size)", "torch": torch.__version__,
            "cpus": os.cpu_count(), "total_s": time.perf_counter() - started}
    table = render(s, cells, counts, loader, info)
    print(table, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "machine": info, "settings": {k: v for k, v in vars(s).items() if k != "extra"}, "cells": cells,
            "syncs": {f"{f} {p}": c for (f, p), c in counts.items()}, "loader": loader}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
