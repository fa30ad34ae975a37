"""``cromss data index``: describe a folder of GeoTIFFs as a generic dataset (dataset.yaml + samples.csv)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def _index(args: argparse.Namespace) -> int:
    from cromss.data.index import IndexSpec, index_dataset, parse_assignments

    bands = {m: [b.strip() for b in v.split(",") if b.strip()]
             for m, v in parse_assignments(args.bands, "--bands").items()}
    splits = {name: Path(getattr(args, f"{name}_split")) for name in ("train", "val", "test")
              if getattr(args, f"{name}_split")}
    spec = IndexSpec(
        root=Path(args.root), images=parse_assignments(args.image, "--image"), label=args.label,
        classes=Path(args.classes), reference=args.reference, id_pattern=args.id_pattern,
        time_pattern=args.time_pattern, splits=splits, bands=bands, overwrite=args.overwrite,
    )
    command = "cromss " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["data"] else ""
    result, written = index_dataset(spec, command)
    locations = len({r["location"] for r in result.rows})
    counts: dict[str, int] = {}
    for row in result.rows:
        counts[row.get("split") or "unassigned"] = counts.get(row.get("split") or "unassigned", 0) + 1
    print(f"wrote {written[0]} and {written[1]}: {len(result.rows)} rows, {locations} locations"
          + (f" ({', '.join(f'{k}: {v}' for k, v in counts.items())} rows)" if spec.splits else ""))
    for modality, names in result.description["modalities"].items():
        print(f"  {modality}: {len(names)} bands {', '.join(names)}")
    from cromss.errors import warn

    for line in result.warnings:
        warn(line, once=False)
    if result.missing_reference:
        print(f"  {result.missing_reference} row(s) have no reference file")
    if result.unsplit_locations:
        print(f"  {result.unsplit_locations} location(s) are in no split file: written with an empty split "
              "(= training pool)")
    if args.stats:
        # the band statistics every run normalises with (training split only, as `cromss data stats`)
        from cromss.data.stats import compute_band_stats, write_band_stats

        stats = compute_band_stats(spec.root, "generic", None, None)
        for path in write_band_stats(stats, spec.root / "stats"):
            print(f"wrote {path} (band statistics of the training split)")
        print(f"next: cromss data inspect {spec.root}, then cromss pretrain with data.kind=generic "
              f"data.root={spec.root}")
    else:
        print(f"next: cromss data inspect {spec.root} && cromss data stats {spec.root}")
    return 0


def register(data_sub: argparse._SubParsersAction, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``cromss data index`` to the ``cromss data`` subcommands."""
    parser = data_sub.add_parser(
        "index", help="write dataset.yaml + samples.csv of your own GeoTIFFs from file patterns",
        formatter_class=formatter,
        description="Describe a folder of GeoTIFFs as a generic dataset (data.kind: generic). Globs are\n"
        "relative to ROOT (as TerraTorch's img_grep / label_grep); the files of one sample pair up by\n"
        "their sample id: the text matched by the glob's wildcards in the file name, or the first\n"
        "group of --id-pattern. Nothing is written unless every file pairs up. See docs/data.md.\n\n"
        "Example: cromss data index /data/floods --image s2='S2/*_S2Hand.tif' \\\n"
        "           --image s1='S1/*_S1Hand.tif' --label 'Label/*_LabelHand.tif' --classes classes.yaml",
    )
    parser.add_argument("root", help="dataset folder (dataset.yaml and samples.csv are written here)")
    parser.add_argument("--stats", action=argparse.BooleanOptionalAction, default=True,
                        help="also compute the band statistics of the training split into ROOT/stats/ "
                        "(as cromss data stats ROOT)")
    parser.add_argument("--image", action="append", required=True, metavar="NAME=GLOB",
                        help="one per modality: its name and the glob of its files (bands in file order)")
    parser.add_argument("--label", required=True, metavar="GLOB", help="glob of the (noisy) label files")
    parser.add_argument("--reference", metavar="GLOB", default=None,
                        help="glob of better labels of the same pixels (used only to measure noise flagging)")
    parser.add_argument("--classes", required=True, metavar="FILE",
                        help="YAML list of class names (raw value = class id), or a table (YAML/CSV) of "
                        "raw value, name and optional colour (-> label_values)")
    parser.add_argument("--bands", action="append", metavar="NAME=B1,B2,...", default=None,
                        help="band names of a modality in file order (default: the band descriptions of "
                        "its first file)")
    parser.add_argument("--id-pattern", default=None, metavar="REGEX",
                        help="regex on the path relative to ROOT whose first group (or group 'id') is the "
                        "sample id (default: the text matched by the glob's wildcards in the file name)")
    parser.add_argument("--time-pattern", default=None, metavar="REGEX",
                        help="regex capturing the date in the sample id; the rest of the id is the location "
                        "and rows sharing a location are its timestamps (e.g. '(\\d{8})')")
    for name in ("train", "val", "test"):
        parser.add_argument(f"--{name}-split", default=None, metavar="FILE",
                            help=f"file of {name} sample ids or locations, one per line (TerraTorch {name}_split)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset.yaml / samples.csv")
    parser.set_defaults(func=_index)
