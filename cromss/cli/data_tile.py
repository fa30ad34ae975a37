"""``cromss data tile``: cut co-registered scenes into GeoTIFF tiles (for your own data)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(data_subparsers: argparse._SubParsersAction) -> None:
    """Add ``tile`` to the ``cromss data`` subparsers."""
    p = data_subparsers.add_parser(
        "tile", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="cut images and labels on one grid into GeoTIFF tiles",
        description="Cut co-registered rasters (same size, transform and CRS) into square GeoTIFF tiles\n"
        "OUT/<NAME>/<prefix>_r<row>_c<col>.tif, keeping georeference, dtype, nodata and band\n"
        "descriptions. Partial tiles at the right/bottom edge are dropped; tiles whose FIRST input is\n"
        "all nodata are skipped (--keep-empty keeps them). Tiles of the same prefix already in OUT are\n"
        "refused (--overwrite replaces them); all tiles are written completely or none. Then: cromss data index OUT ...",
        epilog="example: cromss data tile --input s2=S2.tif --input s1=S1.tif --input label=ndwi.tif "
        "--size 128 --out tiles",
    )
    p.add_argument("--input", action="append", required=True, metavar="NAME=FILE",
                   help="a raster and the folder name of its tiles (repeat; all on one grid)")
    p.add_argument("--size", type=int, required=True, help="tile side in pixels")
    p.add_argument("--stride", type=int, default=None, help="step between tiles (default: --size)")
    p.add_argument("--prefix", default=None, help="tile name prefix (default: stem of the first input)")
    p.add_argument("--keep-empty", action="store_true", help="also write tiles that are all nodata")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the tiles of this prefix already in --out (without it they are refused; the old "
                   "ones are removed only once every new tile is written)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=cmd_tile)


def cmd_tile(args: argparse.Namespace) -> int:
    from cromss.data.tiling import tile_rasters
    from cromss.errors import DataError

    inputs = {}
    for text in args.input:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise DataError(f"--input {text!r}: expected NAME=FILE")
        if name in inputs:
            raise DataError(f"--input: name {name!r} given twice")
        inputs[name] = Path(path)
    tiles = tile_rasters(inputs, args.out, args.size, args.stride, args.prefix, args.keep_empty, args.overwrite)
    print(f"wrote {len(tiles)} tile(s) x {len(inputs)} input(s) of {args.size}x{args.size} px to {args.out}")
    return 0
