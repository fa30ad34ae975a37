"""``cromss data osm-filter | pad | assemble-nol | convert | verify``: building datasets.

Registered into the ``cromss data`` group by ``cromss.cli.data``. Heavy imports (rasterio, torch)
happen inside the command functions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cromss.errors import DataError

FORMATTER = argparse.RawDescriptionHelpFormatter


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add the dataset-building subcommands to the ``cromss data`` subparsers."""
    p = data_subparsers.add_parser(
        "osm-filter", formatter_class=FORMATTER,
        help="keep OSM label tiles that agree with the DW expert labels (Table I, acc > 0.75)",
        description="Check every OSM label tile against the Dynamic World label tile of the same name\n"
        "(file stem; both folders are searched recursively) with the many-to-many OSM->DW relation of\n"
        "Table I (cromss.schema.OSM_TO_DW). acc = TP / N over the pixels labelled in both (DW 0 and\n"
        "10 = cloud, and OSM 0 are unlabeled). A tile is kept when acc > --min-accuracy (strictly\n"
        "greater, as the paper). Tiles without labelled pixels are dropped.\n\n"
        "Writes OUT/kept_tiles.csv, OUT/all_tiles.csv (tile, accuracy, n_labelled, kept),\n"
        "OUT/accuracy_histogram.{png,csv,json} (20 bins over [0, 1], plus counts and unpaired tiles).",
        epilog="example: cromss data osm-filter --dw dw/train/label --osm osm/train/label --out osm_check",
    )
    p.add_argument("--dw", required=True, type=Path, help="folder of DW label GeoTIFFs (published ids 0..10)")
    p.add_argument("--osm", required=True, type=Path, help="folder of OSM label GeoTIFFs (published ids 0..13)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the CSV/JSON/PNG files")
    p.add_argument("--min-accuracy", type=float, default=0.75,
                   help="keep tiles with accuracy strictly above this (default: 0.75, the paper's value)")
    p.set_defaults(func=cmd_osm_filter)

    p = data_subparsers.add_parser(
        "pad", formatter_class=FORMATTER,
        help="pad 510x510 tiles to 512x512 keeping the georeference",
        description="Copy every GeoTIFF under SRC to the same relative path under --out, padding tiles\n"
        "smaller than --size symmetrically (510 -> 512: one pixel on each side), as the paper did for\n"
        "the 294 DW training tiles used as OSM test tiles. Fill: 0 for images (the paper's zero\n"
        "border; also marked invalid in the GeoTIFF dataset mask) and 0 = unlabeled for labels\n"
        "(files under a folder dw/ or osm/ or with 'label' in a folder or file name). The transform\n"
        "is shifted by one pixel so every original pixel keeps its coordinates. Tiles already at\n"
        "--size are copied unchanged.",
        epilog="example: cromss data pad dw/train --out dw_train_512",
    )
    p.add_argument("src", type=Path, help="folder with the tiles (searched recursively for .tif)")
    p.add_argument("--out", required=True, type=Path, help="output folder (must differ from SRC)")
    p.add_argument("--size", type=int, default=512, help="target side in pixels (default: 512)")
    p.set_defaults(func=cmd_pad)

    p = data_subparsers.add_parser(
        "assemble-nol", formatter_class=FORMATTER,
        help="join SSL4EO-S12 image ids with noisy label masks, keep 4-season locations",
        description="Join the SSL4EO-S12 GeoTIFF trees (S1: <id>/<date>/*.tif, S2: <id>/<date>/*.tif)\n"
        "with the noisy label masks (<id>/<season>.tif) by location id and keep the locations that\n"
        "have S1, S2 and a label for all four seasons (paper Sec. II-A). Every dropped location is\n"
        "listed with its reasons (no_s1/no_s2/no_label, missing_<source>_season: k of 4).\n"
        "With three .lmdb paths the LMDB layout is checked instead: index i of S1, S2 and label must\n"
        "carry the same sample id (else id_mismatch) and 4 seasons.\n\n"
        "Writes OUT/kept_ids.txt, OUT/dropped.csv and OUT/assembly_report.json (counts per reason).",
        epilog="example: cromss data assemble-nol --s1 ssl4eo/s1 --s2 ssl4eo/s2c --labels nol/dw_labels --out nol_report",
    )
    p.add_argument("--s1", required=True, type=Path,
                   help="SSL4EO-S12 S1 folder (<id>/<date>/VV.tif ...) or S1 LMDB (0k_251k_uint8_s1.lmdb)")
    p.add_argument("--s2", required=True, type=Path,
                   help="SSL4EO-S12 S2 L1C folder (<id>/<date>/B1.tif ...) or S2 LMDB (0k_251k_uint8_s2c.lmdb)")
    p.add_argument("--labels", required=True, type=Path,
                   help="noisy label folder (<id>/<season>.tif) or label LMDB (dw_labels.lmdb)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the report")
    p.set_defaults(func=cmd_assemble_nol)

    p = data_subparsers.add_parser(
        "convert", formatter_class=FORMATTER,
        help="convert any dataset into a litdata stream (shards for many GPUs, local or in a bucket)",
        description="Read SRC with the cromss readers (NoL LMDB / GeoTIFF, @DW / @OSM, DFC2020, generic)\n"
        "and write OUT with litdata's chunk writer: one folder of chunks per split (train / val / test) and\n"
        "OUT/cromss_stream.json, the dataset description (modalities and band names, classes and colours,\n"
        "label convention, band statistics). Train items are locations with every timestamp (the season\n"
        "is drawn per epoch); val / test items are the source split's evaluation entries. Images keep\n"
        "their stored dtype. Train with data.format: stream, data.root: OUT (or the bucket URL it was\n"
        "uploaded to). All or nothing: OUT is written as a hidden temporary folder beside it and renamed\n"
        "only when complete, under the lock OUT.cromss.lock; cromss_stream.json records the size and SHA-256\n"
        "of every file (cromss data verify OUT). See docs/dataset-building.md.",
        epilog="example: cromss data convert demo/nol nol_stream --to stream\n"
        "         cromss data convert my_data my_stream --to stream --kind generic",
    )
    p.add_argument("src", help="dataset folder (as data.root of a config)")
    p.add_argument("out", help="new stream folder (or an object-store URL fsspec can write, e.g. s3://b/p: written locally, then uploaded)")
    p.add_argument("--to", default="stream", choices=("stream",), help="target format (default: stream)")
    p.add_argument("--kind", default="nol", choices=("nol", "dw", "osm", "dfc2020", "generic"),
                   help="dataset kind (default: nol)")
    p.add_argument("--format", default="auto", choices=("auto", "lmdb", "geotiff"),
                   help="layout of a 'nol' source (default: auto-detect)")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="validation split drawn from the training locations / tiles (default: 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split (default: 0)")
    p.add_argument("--chunk-bytes", default="64MB", help="litdata chunk size (default: 64MB)")
    p.add_argument("--workers", type=int, default=1, help="conversion processes (default: 1)")
    p.set_defaults(func=cmd_convert)

    p = data_subparsers.add_parser(
        "verify", formatter_class=FORMATTER,
        help="check LMDBs and streams: sizes against their metadata, every value / chunk against its checksum",
        description="Streams (a folder or URL with cromss_stream.json, or every stream below a folder): every\n"
        "split's index.json must declare only the item formats cromss writes, and every chunk and index file\n"
        "must have the size and SHA-256 recorded in cromss_stream.json by `cromss data convert`.\n\n"
        "LMDBs: read every value of each LMDB (a *.lmdb path, or every *.lmdb below a folder): the data\n"
        "file must be as long as the LMDB's own metadata says (a cut-short copy), every value must decode,\n"
        "and its SHA-256 must equal the one in <name>.lmdb/checksums.sha256 (written by cromss when it\n"
        "writes an LMDB). Any difference is reported with its keys (exit status 2). LMDBs from elsewhere\n"
        "(the official release) have no checksums: run with --write-checksums on the machine holding the\n"
        "original, copy, then run without it on the copy.",
        epilog="examples:\n  cromss data verify demo/data/nol\n"
        "  cromss data verify --write-checksums /data/ssl4eo-s12   # on the source machine, once",
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="an LMDB, a stream (folder or URL), or a folder holding LMDBs / streams")
    p.add_argument("--write-checksums", action="store_true",
                   help="write checksums.sha256 for LMDBs that have none (an existing file is never replaced)")
    p.set_defaults(func=cmd_verify)


def cmd_osm_filter(args: argparse.Namespace) -> int:
    from cromss.curation import filter_osm_tiles, write_osm_filter_outputs

    result = filter_osm_tiles(args.dw, args.osm, args.min_accuracy)
    paths = write_osm_filter_outputs(result, args.out, args.min_accuracy)
    print(f"checked {len(result.tiles)} tile pairs, kept {len(result.kept)} (accuracy > {args.min_accuracy}); "
          f"{len(result.only_dw)} DW-only and {len(result.only_osm)} OSM-only tiles skipped")
    print(f"kept list: {paths['kept']}  histogram: {paths['hist_png']}")
    return 0


def cmd_pad(args: argparse.Namespace) -> int:
    from cromss.curation import pad_tree

    counts = pad_tree(args.src, args.out, args.size)
    print(f"padded {counts['padded']} file(s) to {args.size}x{args.size}, copied {counts['copied']} unchanged "
          f"-> {args.out}")
    return 0


def cmd_assemble_nol(args: argparse.Namespace) -> int:
    from cromss.curation import assemble_nol_lmdb, assemble_nol_tree, write_assembly_report

    if all(str(p).rstrip("/").endswith(".lmdb") for p in (args.s1, args.s2, args.labels)):
        result = assemble_nol_lmdb(args.s1, args.s2, args.labels)
    else:
        result = assemble_nol_tree(args.s1, args.s2, args.labels)
    paths = write_assembly_report(result, args.out)
    print(f"kept {len(result.kept)} location(s), dropped {len(result.dropped)}: "
          f"{json.dumps(result.reason_counts())}")
    print(f"report: {paths['report']}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from cromss.data import DataConfig
    from cromss.data.stream_convert import convert_to_stream
    from cromss.errors import ConfigError

    if not 0.0 <= args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    cfg = DataConfig(kind=args.kind, root=str(args.src), format=args.format, crop_size=None,
                     val_fraction=args.val_fraction, seed=args.seed)
    meta = convert_to_stream(cfg, args.out, chunk_bytes=args.chunk_bytes, num_workers=args.workers)
    counts = ", ".join(f"{split} {count}" for split, count in meta["splits"].items())
    print(f"wrote a litdata stream of {meta['name']} ({counts} items) -> {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from cromss.data.stream import load_stream_metadata
    from cromss.data.stream_check import META_FILE, is_stream, verify_stream
    from cromss.data.verify import find_lmdbs, verify_lmdb

    streams: list[str] = []
    lmdb_paths: list[Path] = []
    for raw in args.paths:
        if is_stream(raw):
            streams.append(str(raw))
            continue
        path = Path(raw)
        if not path.exists():
            raise DataError(f"not found: {path}")
        below = sorted(str(p.parent) for p in path.rglob(META_FILE)) if path.is_dir() else []
        streams += below
        if path.suffix == ".lmdb" or (path / "data.mdb").is_file() or any(path.rglob("*.lmdb")) or not below:
            lmdb_paths.append(path)
    bad_streams = []
    for root in streams:
        check = verify_stream(root, load_stream_metadata(root))
        if not check.ok:
            print(f"{root}: {check.files} files, CORRUPT: {check.problem()}")
            bad_streams.append(check)
            continue
        state = ("all sizes and checksums match" if check.checksums == "verified" else
                 "sizes ok; no checksums recorded (a stream written by an older cromss: convert it again to get them)")
        print(f"{root}: {check.files} files ({check.bytes / 1e6:.1f} MB), formats ok, {state}")
    if bad_streams:
        raise DataError(f"{len(bad_streams)} stream(s) corrupt, first {bad_streams[0].root}: {bad_streams[0].problem()}; "
                        "copy or convert it again")
    if not lmdb_paths:
        return 0
    bad = []
    for path in find_lmdbs(lmdb_paths):
        check = verify_lmdb(path, write_checksums=args.write_checksums)
        if not check.ok:
            print(f"{path}: {check.entries} values, CORRUPT: {check.problem()}")
            bad.append(check)
            continue
        state = {"verified": "all checksums match", "written": "checksums written",
                 "absent": "no checksums to compare (--write-checksums writes them)"}[check.checksums]
        print(f"{path}: {check.entries} values, sizes ok, {state}")
    if bad:
        raise DataError(f"{len(bad)} LMDB(s) corrupt, first {bad[0].path}: {bad[0].problem()}; copy it again")
    return 0
