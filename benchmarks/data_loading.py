"""Data loading throughput (samples/s) and bytes per sample of the LMDB, GeoTIFF and stream layouts.

Writes a demo dataset at the real chip size (264 px), converts it to a litdata stream, then times
DataLoader iteration of the pretraining pipeline (random 256 px crops, drawn flips / rotations,
random seasons; compact samples as the DataModule serves them, normalised on the device after the
transfer) for 0, 1 and 2 workers. "MB/sample" is the size of the tensors of one sample that cross
the worker boundary (and the host-to-device copy). The device step (BatchPreprocess) is timed
separately on this CPU: on a GPU node it runs on the GPU, not in the loader.

    .venv/bin/python benchmarks/data_loading.py --locations 32 --batches 12

Prints a Markdown table (the one in docs/data.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _cfg(root: Path, fmt: str, crop: int = 256):
    from cromss.data import DataConfig

    return DataConfig(kind="nol", root=str(root), format=fmt, crop_size=crop, val_fraction=0.01)


def measure(root: Path, fmt: str, workers: int, batch_size: int, batches: int,
            crop: int = 256) -> tuple[float, float, float]:
    """(loader samples/s over ``batches`` batches after one warm-up batch, MB per sample,
    samples/s of the device step (BatchPreprocess) run on this CPU)."""
    import torch
    from torch.utils.data import DataLoader

    from cromss.data import build_dataset

    cfg = _cfg(root, fmt, crop)
    torch.manual_seed(0)
    dataset = build_dataset(cfg, "train", train=True, compact=True)
    if fmt == "stream":
        from cromss.data.stream import stream_loader

        cfg.batch_size, cfg.num_workers, cfg.persistent_workers = batch_size, workers, workers > 0
        loader = stream_loader(dataset, cfg, train=True)
    else:
        # persistent workers: worker start-up is paid once (excluded), not at every epoch of the small demo
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                            persistent_workers=workers > 0, drop_last=True)
    seen, start, nbytes, batch = 0, None, 0, None
    while seen < batches * batch_size:
        for batch in loader:
            nbytes = sum(v.numel() * v.element_size() for v in batch.values() if torch.is_tensor(v))
            if start is None:  # the first batch includes worker start-up
                start = time.perf_counter()
                continue
            seen += batch["label"].shape[0]
            if seen >= batches * batch_size:
                break
    rate = seen / (time.perf_counter() - start)
    # the device step (normalise, mask, flips / rotations), timed on this CPU; on a GPU it runs there
    preprocess = dataset.preprocessor()
    started = time.perf_counter()
    for _ in range(5):
        preprocess(batch)
    device_rate = 5 * batch_size / (time.perf_counter() - started)
    return rate, nbytes / batch_size / 1e6, device_rate


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
    from cromss.data.stream_convert import convert_to_stream

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.data or tmp)
        if not (out / "nol").is_dir():
            start = time.perf_counter()
            make_demo(out, locations=args.locations, size=args.size, dw_train=0, dw_test=0)
            print(f"demo written in {time.perf_counter() - start:.1f} s")
        if not (out / "stream").is_dir():
            convert_to_stream(_cfg(out / "nol", "lmdb"), out / "stream", chunk_bytes="16MB")
        print(f"| layout | workers | loader samples/s (batch {args.batch_size}, crop 256 of {args.size}) "
              "| MB/sample crossing the worker boundary | device step on this CPU, samples/s |")
        print("|---|---|---|---|---|")
        for fmt in ("lmdb", "geotiff", "stream"):
            for workers in args.workers:
                root = out / ("stream" if fmt == "stream" else "nol")
                rate, size, device = measure(root, fmt, workers, args.batch_size, args.batches)
                print(f"| {fmt} | {workers} | {rate:.1f} | {size:.2f} | {device:.0f} |", flush=True)


if __name__ == "__main__":
    main()
