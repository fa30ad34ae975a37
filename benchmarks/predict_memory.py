"""Peak memory of ``cromss predict`` on a large scene: bounded by the tile strip, not the scene.

Writes a synthetic SIZE x SIZE 13-band int16 Sentinel-2 GeoTIFF (in strips, so generating it does not
inflate the measurement), maps it with a randomly initialised U-Net (resnet18 by default) through
:func:`cromss.predict.predict_scene` and reports:

* ``tracemalloc`` peak during prediction (Python + numpy allocations; torch's own buffers are not
  traced),
* ``ru_maxrss`` of the process (everything, incl. torch, GDAL cache and the model), before and after.

Run:  .venv/bin/python benchmarks/predict_memory.py [--size 4096] [--tile 256] [--overlap 64]
Exit status 1 if the peak RSS exceeds --limit-gib (default 2).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def max_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_scene(path: Path, size: int, strip: int = 256) -> None:
    """A size x size 13-band int16 GeoTIFF of plausible L1C values, written strip by strip."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "int16",
               "crs": "EPSG:32632", "transform": from_origin(600000, 5000000, 10, 10), "nodata": 0,
               "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, strip):
            rows = min(strip, size - row)
            data = rng.integers(200, 4000, size=(13, rows, size), dtype=np.int16)
            dst.write(data, window=Window(0, row, size, rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="scene edge in pixels (default: 4096)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--probabilities", action="store_true", help="also write uint8 probabilities")
    parser.add_argument("--limit-gib", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from cromss.models import ModelConfig, build_model
    from cromss.predict import predict_scene

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="cromss-bench-") as tmp:
        scene = Path(tmp) / "s2.tif"
        start = time.perf_counter()
        write_scene(scene, args.size)
        write_seconds = time.perf_counter() - start
        net = build_model(ModelConfig(encoder=args.encoder, fusion="single", modalities=["s2"]))
        rss_before = max_rss_mib()
        tracemalloc.start()
        start = time.perf_counter()
        summary = predict_scene(net, Path(tmp) / "map.tif", s2=scene, tile=args.tile, overlap=args.overlap,
                                probabilities=Path(tmp) / "p.tif" if args.probabilities else None,
                                probability_dtype="uint8")
        seconds = time.perf_counter() - start
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_after = max_rss_mib()
        scene_mib = scene.stat().st_size / 2**20
    result = {
        "scene": f"{args.size}x{args.size}x13 int16 ({scene_mib:.0f} MiB on disk)",
        "encoder": args.encoder, "tile": args.tile, "overlap": args.overlap,
        "probabilities": args.probabilities,
        "tracemalloc_peak_mib": round(traced_peak / 2**20, 1),
        "max_rss_before_predict_mib": round(rss_before, 1),
        "max_rss_peak_mib": round(rss_after, 1),
        "predict_seconds": round(seconds, 1),
        "scene_write_seconds": round(write_seconds, 1),
        "torch_threads": args.threads,
        "class_pixels": summary["class_pixels"],
    }
    print(json.dumps(result, indent=2))
    limit_mib = args.limit_gib * 1024
    if rss_after > limit_mib:
        print(f"FAIL: peak RSS {rss_after:.0f} MiB exceeds {limit_mib:.0f} MiB", file=sys.stderr)
        return 1
    print(f"OK: peak RSS {rss_after:.0f} MiB <= {limit_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
