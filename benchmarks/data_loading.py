"""Data loading throughput (samples/s) of the LMDB and GeoTIFF pretraining layouts.

Writes a demo dataset at the real chip size (264 px), then times DataLoader iteration with random
256 px crops, flips, rotations and random seasons (the pretraining pipeline) for 0, 1 and 2 workers.

    .venv/bin/python benchmarks/data_loading.py --locations 32 --batches 12

Prints a Markdown table (the one in docs/data.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def measure(root: Path, fmt: str, workers: int, batch_size: int, batches: int) -> float:
    """Samples per second over ``batches`` batches, after one warm-up batch."""
    import torch
    from torch.utils.data import DataLoader

    from cromss.data import DataConfig, build_dataset

    cfg = DataConfig(kind="nol", root=str(root), format=fmt, crop_size=256, val_fraction=0.01)
    dataset = build_dataset(cfg, "train", train=True)
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=False, drop_last=True)
    seen, start = 0, None
    while seen < batches * batch_size:
        for batch in loader:
            if start is None:  # the first batch includes worker start-up
                start = time.perf_counter()
                continue
            seen += batch["label"].shape[0]
            if seen >= batches * batch_size:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--locations", type=int, default=32, help="demo locations (x 4 seasons)")
    parser.add_argument("--size", type=int, default=264, help="tile side (real SSL4EO-S12 chips: 264)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="reuse / keep the demo here (default: temp folder)")
    args = parser.parse_args()

    import torch

    from cromss.data.demo import make_demo

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.data or tmp)
        if not (out / "nol").is_dir():
            start = time.perf_counter()
            make_demo(out, locations=args.locations, size=args.size, dw_train=0, dw_test=0)
            print(f"demo written in {time.perf_counter() - start:.1f} s")
        print(f"| layout | workers | samples/s (batch {args.batch_size}, crop 256 of {args.size}) |")
        print("|---|---|---|")
        for fmt in ("lmdb", "geotiff"):
            for workers in args.workers:
                rate = measure(out / "nol", fmt, workers, args.batch_size, args.batches)
                print(f"| {fmt} | {workers} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    main()
