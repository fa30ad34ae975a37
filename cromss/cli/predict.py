"""``cromss predict``: map a Sentinel-1/2 scene of any size with a trained model."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """\
examples:
  # S2 map with the S2 U-Net of a pretraining run, 256 px tiles overlapping by 64 px
  cromss predict --checkpoint runs/cromss-midf-13b --s2 scene_S2.tif --out map.tif
  # both modalities on the same grid, average of the S1 and S2 U-Nets, plus probabilities
  cromss predict --checkpoint runs/cromss-midf-13b/checkpoints/last.ckpt --s1 S1.tif --s2 S2.tif \\
      --modality mean --out map.tif --probabilities probs.tif --probability-dtype uint8
  # a fine-tuned model (cromss finetune run folder)
  cromss predict --checkpoint runs/finetune/dw/cromss/finetuned/seed0 --s2 S2.tif --out map.tif
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="map a GeoTIFF scene of any size with a trained model (tiled, blended, georeferenced)",
        description="Tiled sliding-window inference over a whole scene. Tiles overlap and are blended "
        "with a linear-ramp window; memory is bounded by one strip of tile rows, not by the scene. "
        "Inputs are RAW GeoTIFFs (S1 VV/VH in dB, S2 L1C DN with 13 bands, or 9 bands for a 9-band "
        "model), normalised like the training data (mean +/- 2 std clipping to [0, 1]). Output: a uint8 "
        "class GeoTIFF with the input's CRS and transform, a colour table and nodata 255 where any input "
        "band is NaN or the file's nodata value.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="pretraining run folder or .ckpt (also official CromSS checkpoints), or a "
                        "fine-tuning run folder or .ckpt")
    parser.add_argument("--s1", metavar="TIF", help="Sentinel-1 GeoTIFF (2 bands VV, VH in dB)")
    parser.add_argument("--s2", metavar="TIF", help="Sentinel-2 L1C GeoTIFF (13 bands, or 9)")
    parser.add_argument("--out", required=True, metavar="TIF", help="output class map GeoTIFF (uint8)")
    parser.add_argument("--modality", choices=("s1", "s2", "mean"), default=None,
                        help="which U-Net maps the scene; 'mean' averages the S1 and S2 probabilities "
                        "(default: s2 if --s2 is given and the model has an S2 U-Net, else s1)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default: 256)")
    parser.add_argument("--overlap", type=int, default=64,
                        help="pixels shared by neighbouring tiles (default: 64; must be < --tile)")
    parser.add_argument("--probabilities", metavar="TIF", default=None,
                        help="also write per-class probabilities, one band per class")
    parser.add_argument("--probability-dtype", choices=("float32", "uint8"), default="float32",
                        help="float32 in [0, 1] with nodata NaN (default), or uint8 percent 0..100 with "
                        "nodata 255 (4x smaller)")
    parser.add_argument("--nodata", type=float, default=None,
                        help="input nodata value overriding the files' own (NaN is always nodata)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0 (default: cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cromss.errors import DataError
    from cromss.predict import load_predictor, predict_scene

    if args.s1 is None and args.s2 is None:
        raise DataError("give at least one input scene: --s1 TIF and/or --s2 TIF")
    net, classes, kind, _ = load_predictor(args.checkpoint)
    summary = predict_scene(
        net, args.out, s1=args.s1, s2=args.s2, modality=args.modality, tile=args.tile, overlap=args.overlap,
        probabilities=args.probabilities, probability_dtype=args.probability_dtype, nodata=args.nodata,
        classes=classes, device=args.device,
    )
    summary["model"] = kind
    print(json.dumps(summary, indent=2))
    return 0
