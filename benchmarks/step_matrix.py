"""Per-step time and peak memory of CromSS vs plain U-Nets (issue 8).

Setups, each one full training step (forward, loss, backward, Adam step) on random data
(S1 2 bands + S2 13 bands, 9 classes, 4 seasons of labels):

* ``one-unet``:     one smp U-Net on S2, CE + Dice on one-hot labels (the single-modal baseline);
* ``two-unets``:    two independent U-Nets (S1 and S2), each with its own CE + Dice, nothing shared;
* ``cromss-late``:  CromSS late fusion (two U-Nets), spatial-temporal smoothing (eqs. 13-15),
  cross-modal selection (eqs. 8-12) and the KL consistency terms (eq. 7), as in training;
* ``cromss-mid``:   CromSS middle fusion (two encoders, one shared decoder and head), same method.

The CromSS steps use ``cromss.training.CromSSModule``'s own ``targets``/``weights``/``objective``
(the code that trains), with alpha/gamma at the end of the ramp. The paper's decoder channels
(256, 128, 64, 32, 16) are used for every setup.

Every (setup, encoder, size) cell runs in a fresh subprocess, so that its peak memory is its own:
CPU peak = the process's peak resident set size during the timed steps (VmHWM, reset after the
warm-up step via /proc/self/clear_refs) minus its resident size after the imports, i.e. the memory
the cell itself holds (model, Adam state, activations, data); CUDA peak =
``torch.cuda.max_memory_allocated`` (reset after the warm-up step).

Usage::

    .venv/bin/python benchmarks/step_matrix.py                          # full matrix, CPU (+ CUDA if present)
    .venv/bin/python benchmarks/step_matrix.py --encoders resnet18 --sizes 128 --repeats 2
    .venv/bin/python benchmarks/step_matrix.py --out benchmarks/step_matrix.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETUPS: tuple[str, ...] = ("one-unet", "two-unets", "cromss-late", "cromss-mid")
DECODER = [256, 128, 64, 32, 16]
NUM_CLASSES = 9


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` memory field (VmHWM = peak RSS, VmRSS = current RSS) in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _build_step(setup: str, encoder: str, batch: int, size: int, device: str):
    """A closure running one training step of ``setup``, and its parameter count."""
    import segmentation_models_pytorch as smp
    import torch

    from cromss.losses import segmentation_loss
    from cromss.training import PretrainConfig
    from cromss.training.module import CromSSModule, one_hot_targets

    torch.manual_seed(0)
    s1 = torch.rand(batch, 2, size, size, device=device)
    s2 = torch.rand(batch, 13, size, size, device=device)
    seasons = torch.randint(0, NUM_CLASSES, (batch, 4, size, size), device=device)
    season = torch.randint(0, 4, (batch,), device=device)
    labels = seasons[torch.arange(batch, device=device), season]

    if setup in ("one-unet", "two-unets"):
        inputs = {"s2": s2} if setup == "one-unet" else {"s1": s1, "s2": s2}
        nets = torch.nn.ModuleDict({
            m: smp.Unet(encoder, encoder_weights=None, in_channels=x.shape[1], classes=NUM_CLASSES,
                        decoder_channels=DECODER) for m, x in inputs.items()
        }).to(device)
        optimizer = torch.optim.Adam(nets.parameters(), lr=1e-3)
        targets = one_hot_targets(labels, NUM_CLASSES)
        weight = torch.ones_like(labels, dtype=torch.float32)

        def step() -> None:
            loss = sum(segmentation_loss(nets[m](x), targets, weight) for m, x in inputs.items())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step, sum(p.numel() for p in nets.parameters())

    cfg = PretrainConfig()
    cfg.model.encoder, cfg.model.fusion, cfg.model.decoder_channels = encoder, setup.split("-")[1], DECODER
    module = CromSSModule(cfg).to(device)
    optimizer = torch.optim.Adam(module.net.parameters(), lr=1e-3)
    batch_dict = {"s1": s1, "s2": s2, "label": labels, "labels_all_seasons": seasons, "season": season}
    alpha, gamma = cfg.method.alpha0, 1.0

    def step() -> None:
        logits = module.net({"s1": s1, "s2": s2})
        probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
        targets = module.targets(batch_dict)
        weights = module.weights(probs, labels, alpha, gamma, selection=True)
        loss, _ = module.objective(logits, probs, targets, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, sum(p.numel() for p in module.net.parameters())


def run_cell(setup: str, encoder: str, batch: int, size: int, device: str, repeats: int, threads: int) -> dict:
    """Time ``repeats`` steps after one warm-up step; peak memory of the timed steps."""
    import torch

    torch.set_num_threads(threads)
    import segmentation_models_pytorch  # noqa: F401  (imports count in the baseline, not in the cell)

    import cromss.training.module  # noqa: F401

    baseline_kb = _status_kb("VmRSS") or 0
    step, params = _build_step(setup, encoder, batch, size, device)
    cuda = device.startswith("cuda")
    step()  # warm-up: allocator, oneDNN/cuDNN kernel selection
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    reset = _reset_rss_peak()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda
               else (_status_kb("VmHWM") or 0) / 1024 if reset else None)
    # CPU: what the cell adds to the process after imports (model, optimizer state, activations, data)
    cell_mb = peak_mb if cuda or peak_mb is None else peak_mb - baseline_kb / 1024
    return {"setup": setup, "encoder": encoder, "batch": batch, "size": size, "device": device,
            "threads": threads, "params_m": round(params / 1e6, 2), "step_s": statistics.median(times),
            "step_s_all": [round(t, 4) for t in times], "peak_mb": None if cell_mb is None else round(cell_mb, 1),
            "process_peak_mb": None if peak_mb is None else round(peak_mb, 1),
            "peak_kind": "cuda_max_allocated" if cuda else "peak_rss_minus_rss_after_imports"}


def _ratio(value: float | None, base: float | None) -> str:
    return "–" if not value or not base else f"{value / base:.2f}"


def render(results: list[dict]) -> str:
    """Markdown: one row per (device, encoder, size, setup) with ratios to one U-Net and two U-Nets."""
    lines = ["| device | encoder | px | setup | params (M) | step (s) | × one U-Net | × two U-Nets | peak MB | "
             "× one U-Net | × two U-Nets |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in results:
        groups.setdefault((r["device"], r["encoder"], r["size"]), {})[r["setup"]] = r
    for (device, encoder, size), cells in groups.items():
        one, two = cells.get("one-unet", {}), cells.get("two-unets", {})
        for setup in SETUPS:
            r = cells.get(setup)
            if r is None:
                continue
            lines.append(
                f"| {device} | {encoder} | {size} | {setup} | {r['params_m']} | {r['step_s']:.3f} | "
                f"{_ratio(r['step_s'], one.get('step_s'))} | {_ratio(r['step_s'], two.get('step_s'))} | "
                f"{r['peak_mb'] if r['peak_mb'] is not None else '–'} | {_ratio(r['peak_mb'], one.get('peak_mb'))} | "
                f"{_ratio(r['peak_mb'], two.get('peak_mb'))} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "logical_cpus": __import__("os").cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}
    try:
        info["load_avg_1m_at_start"] = __import__("os").getloadavg()[0]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--batch", type=int, default=4, help="batch size of every cell (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per cell after 1 warm-up (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON (+ .md next to it)")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    args = parser.parse_args()

    if args.cell:
        setup, encoder, size, device = args.cell.split(",")
        print(json.dumps(run_cell(setup, encoder, args.batch, int(size), device, args.repeats, args.threads)))
        return
    import torch

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    info = machine()
    started = time.perf_counter()
    results = []
    for device in devices:
        for encoder in args.encoders:
            for size in args.sizes:
                for setup in args.setups:
                    cmd = [sys.executable, __file__, "--cell", f"{setup},{encoder},{size},{device}",
                           "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads)]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"{setup} {encoder} {size} {device}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                        continue
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    results.append(result)
                    print(f"{device} {encoder} {size:>4} {setup:<12} step {result['step_s']:.3f} s  "
                          f"peak {result['peak_mb']} MB", flush=True)
    info["total_s"] = round(time.perf_counter() - started, 1)
    table = render(results)
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": info, "args": {k: v for k, v in vars(args).items()
                                                                  if k not in ("out", "cell")},
                                        "results": results}, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
