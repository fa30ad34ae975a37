"""``cromss data ...``: make the demo dataset, inspect a dataset, compute band statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _make_demo(args: argparse.Namespace) -> int:
    import time

    from cromss.data.demo import make_demo

    start = time.perf_counter()
    layouts = ("lmdb", "geotiff") if args.layout == "both" else (args.layout,)
    out = make_demo(
        Path(args.out), locations=args.locations, size=args.size, noise_rate=args.noise_rate,
        seed=args.seed, dw_train=args.dw_train, dw_test=args.dw_test, dw_size=args.dw_size,
        layouts=layouts, overwrite=args.overwrite,
    )
    print(f"wrote demo dataset to {out} in {time.perf_counter() - start:.1f} s "
          f"({args.locations} locations x 4 seasons, {args.size}x{args.size} px; "
          f"{args.dw_train}+{args.dw_test} DW tiles). Next: cromss data inspect {out}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from cromss.data.inspect import detect_layouts, format_summary, summarize

    problems = 0
    for layout in detect_layouts(args.path):
        formats = layout.formats if args.format == "all" else [f for f in layout.formats if f == args.format]
        for fmt in formats:
            info = summarize(layout, fmt, max_samples=args.max_samples)
            problems += len(info["problems"])
            print(format_summary(info))
            print()
    if problems:
        print(f"cromss: {problems} file(s) could not be used (see PROBLEMS above)", file=sys.stderr)
        return 1
    return 0


def _stats(args: argparse.Namespace) -> int:
    from cromss.data.stats import compute_band_stats, write_band_stats

    path = Path(args.path)
    kind = args.kind
    root = path
    if kind == "auto":
        from cromss.data.inspect import detect_layouts

        layout = detect_layouts(path)[0]
        kind, root = layout.kind, layout.root
    modalities = tuple(args.modalities) if args.modalities else None
    stats = compute_band_stats(root, kind, modalities, args.max_samples, progress=True)
    out_dir = Path(args.out) if args.out else root / "stats"
    for written in write_band_stats(stats, out_dir):
        print(f"wrote {written}")
    for modality, data in stats.items():
        means = ", ".join(f"{b}={m:.2f}" for b, m in zip(data["bands"], data["mean"]))
        print(f"  {modality} mean: {means}")
    if args.out is None:
        keys = ("data.stats.<modality>" if kind == "generic"
                else " / ".join(f"data.{m}_stats" for m in stats))
        print(f"runs with data.root {root} find them by themselves (unless {keys} is set); the resolved "
              "config of a run records the file used")
    else:
        hints = " ".join((f"data.stats.{m}=" if kind == "generic" else f"data.{m}_stats=") + str(out_dir / f"{m}_stats.json")
                         for m in stats)
        print(f"use them with the overrides: {hints}")
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's line breaks (examples on their own line)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cromss data`` and its subcommands."""
    parser = subparsers.add_parser(
        "data", help="make the demo dataset, inspect datasets, compute band statistics",
        description="Datasets of CromSS: SSL4EO-S12@NoL (pretraining; LMDB or GeoTIFF tree), "
        "SSL4EO-S12@DW/@OSM tiles and DFC2020. Layouts are described in docs/data.md.",
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])

    demo = data_sub.add_parser(
        "make-demo", help="write a small synthetic dataset in the real layouts",
        formatter_class=_HelpFormatter,
        description="Write a synthetic pretraining set OUT/nol (LMDBs and GeoTIFF tree, noisy + true\n"
        "labels, 4 seasons) and a downstream DW-style set OUT/dw (train/test tiles) in the\n"
        "layouts of the real data. Takes seconds; a small U-Net learns it on a CPU in minutes.\n\nExample: cromss data make-demo /tmp/demo",
    )
    demo.add_argument("out", help="output folder (created)")
    demo.add_argument("--locations", type=int, default=48, help="pretraining locations (x 4 seasons)")
    demo.add_argument("--size", type=int, default=96, help="tile side in pixels (real chips: 264)")
    demo.add_argument("--noise-rate", type=float, default=0.3,
                      help="fraction of wrong pixels in the noisy labels")
    demo.add_argument("--seed", type=int, default=0, help="random seed (the data is a function of it)")
    demo.add_argument("--dw-train", type=int, default=24, help="downstream DW training tiles")
    demo.add_argument("--dw-test", type=int, default=8, help="downstream DW test tiles")
    demo.add_argument("--dw-size", type=int, default=None, help="DW tile side (None = same as --size)")
    demo.add_argument("--layout", choices=("both", "lmdb", "geotiff"), default="both",
                      help="pretraining layout(s) to write")
    demo.add_argument("--overwrite", action="store_true", help="replace OUT/nol and OUT/dw if present")
    demo.set_defaults(func=_make_demo)

    inspect = data_sub.add_parser(
        "inspect", help="detect a layout and print counts, bands, classes, noise rate",
        formatter_class=_HelpFormatter,
        description="Detect the dataset(s) at PATH (or in its subfolders: a generic dataset.yaml or a\n"
        "built-in layout) and print sample counts, timestamps, bands by name, tile sizes, the class\n"
        "histogram (raw label values outside label_values counted as ignored) and, with true /\n"
        "reference labels, the measured label noise rate. The labels and images of the first\n"
        "--max-samples locations are OPENED; files that cannot be used are listed and the exit\n"
        "status is 1.\n\nExample: cromss data inspect /tmp/demo",
    )
    inspect.add_argument("path", help="dataset folder")
    inspect.add_argument("--format", choices=("all", "lmdb", "geotiff"), default="all",
                         help="which layout(s) of a pretraining set to read")
    inspect.add_argument("--max-samples", type=int, default=500,
                         help="samples read for the histogram (per layout)")
    inspect.set_defaults(func=_inspect)

    stats = data_sub.add_parser(
        "stats", help="compute per-band mean/std of the training split (streaming)",
        formatter_class=_HelpFormatter,
        description="Compute per-band mean and std over the TRAINING split of a dataset (never its test\n"
        "or declared val rows) with float64 running sums (constant memory) and write\n"
        "<modality>_stats.json. Written to PATH/stats/ (the default), they are found by pretrain,\n"
        "finetune, evaluate and predict by themselves; the resolved config of a run records the file\n"
        "used. Built-in kinds: S1 (dB) and S2 (13 bands, DN) of the GeoTIFF layouts; generic datasets\n"
        "(dataset.yaml): every modality, bands by name.\n\n"
        "Example: cromss data stats /tmp/demo/nol",
    )
    stats.add_argument("path", help="dataset folder (GeoTIFF layout or generic dataset)")
    stats.add_argument("--kind", choices=("auto", "nol", "dw", "osm", "dfc2020", "generic"), default="auto",
                       help="dataset kind; auto detects it")
    stats.add_argument("--modalities", nargs="+", default=None,
                       help="modalities to compute (default: s1 s2, or every modality of dataset.yaml)")
    stats.add_argument("--max-samples", type=int, default=None, help="stop after N samples (all seasons)")
    stats.add_argument("--out", default=None, help="output folder (default: PATH/stats, found by runs)")
    stats.set_defaults(func=_stats)

    from cromss.cli import data_index

    data_index.register(data_sub, _HelpFormatter)

    try:
        from cromss.cli import data_tools
    except ModuleNotFoundError as err:
        if err.name != "cromss.cli.data_tools":
            raise
    else:
        data_tools.register(data_sub)
    from cromss.cli import data_tile

    data_tile.register(data_sub)
