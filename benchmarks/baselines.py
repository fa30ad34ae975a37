"""What the paper's comparison baselines cost: one training step per baseline at the real model size.

Each cell builds the baseline's segmentation model with random weights at its published size (ViT-Large:
width 1024, 24 blocks, 16 heads; Satlas: ResNet-50), feeds a random batch (default 2 x 224 x 224, the
baseline's input bands), and times one training step — forward, CE loss, backward, Adam step — in the
fine-tuned mode (all weights train) and the frozen mode (encoder without gradients, as
``FinetuneModule``). One untimed warm-up step precedes the timed ones; the median is reported.
Peak memory is the cell process's peak resident set (``ru_maxrss``: model, gradients, Adam state,
activations); every cell runs in its own subprocess so peaks do not mix.

satMAE++ has exactly satMAE's architecture (encoder and head), so its line reuses satMAE's numbers.

Run:  .venv/bin/python benchmarks/baselines.py [--size 224] [--batch 2] [--repeats 1] [--threads 2]
                                              [--framework upernet] [--only scalemae,dofa] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: cell name -> (baseline, modality, input bands of the data, framework override or None)
CELLS: dict[str, tuple[str, str, int, str | None]] = {
    "scalemae": ("scalemae", "s2", 13, None),
    "satmae": ("satmae", "s2", 13, None),
    "dofa-s2": ("dofa", "s2", 9, None),
    "dofa-s1": ("dofa", "s1", 13, None),
    "satlas": ("satlas", "s2", 9, "deeplabv3plus"),
}
SAME_AS = {"satmae++": "satmae"}


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_cell(name: str, mode: str, size: int, batch: int, repeats: int, threads: int, framework: str) -> dict:
    """One cell in one mode, in this process: build, warm up, time."""
    import torch

    from cromss.baselines.registry import ViTConfig
    from cromss.config import from_dict
    from cromss.transfer import FinetuneConfig, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline, modality, s2_bands, fw = CELLS[name]
    cfg = from_dict(FinetuneConfig, {
        "baseline": baseline, "modality": modality, "s2_bands": s2_bands, "framework": fw or framework,
        "encoder": "resnet50" if baseline == "satlas" else "vit_large", "vit": {},
        "data": {"kind": "dw", "root": "unused"},
    })
    assert cfg.vit == ViTConfig()  # ViT-Large
    rss_imports = max_rss_mib()
    result = {"cell": name, "baseline": baseline, "framework": cfg.framework, "input_bands": len(cfg.input_bands),
              "size": size, "batch": batch, "threads": threads}
    x = torch.rand(batch, len(cfg.input_bands), size, size)
    y = torch.randint(0, cfg.classes, (batch, size, size))
    if True:  # one mode per process: ru_maxrss only grows
        model = build_model(cfg)
        if mode == "frozen":
            model.freeze_encoder()
        model.train()
        if mode == "frozen":
            model.freeze_encoder()  # smp's train() skips a frozen encoder; ours keeps it in eval
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-4)
        result["parameters_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
        result[f"{mode}_trainable_m"] = round(sum(p.numel() for p in params) / 1e6, 1)
        times = []
        for step in range(repeats + 1):
            started = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - started)
        result[f"{mode}_step_s"] = round(statistics.median(times), 2)
        result[f"{mode}_peak_rss_gib"] = round(max_rss_mib() / 1024, 2)
    result["rss_after_imports_gib"] = round(rss_imports / 1024, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per mode after one warm-up (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--framework", default="upernet", choices=("upernet", "segmenter"), help="ViT head")
    parser.add_argument("--only", default=None, help="comma-separated cells (default: all): " + ",".join(CELLS))
    parser.add_argument("--out", default=None, help="write the results as JSON")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: run one cell, print JSON
    parser.add_argument("--mode", default="finetuned", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(run_cell(args.cell, args.mode, args.size, args.batch, args.repeats, args.threads,
                                  args.framework)))
        return 0
    cells = args.only.split(",") if args.only else list(CELLS)
    results = {}
    for name in cells:
        results[name] = {}
        for mode in ("finetuned", "frozen"):
            command = [sys.executable, __file__, "--cell", name, "--mode", mode, "--size", str(args.size),
                       "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads),
                       "--framework", args.framework]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{name} ({mode}): failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            results[name].update(json.loads(done.stdout.strip().splitlines()[-1]))
        r = results[name]
        print(f"{name:9s} {r['framework']:13s} {r['parameters_m']:7.1f} M params | fine-tuned {r['finetuned_step_s']:7.2f} s "
              f"peak {r['finetuned_peak_rss_gib']:5.2f} GiB | frozen {r['frozen_step_s']:7.2f} s "
              f"peak {r['frozen_peak_rss_gib']:5.2f} GiB", flush=True)
    for alias, source in SAME_AS.items():
        if source in results:
            print(f"{alias:9s} same architecture as {source}: same cost")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
