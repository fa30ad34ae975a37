"""``cromss predict``: map a scene (or a folder of scenes) of any size with a trained model."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """\
examples:
  # S2 map with the S2 U-Net of a pretraining run, 256 px tiles overlapping by 64 px
  cromss predict --checkpoint runs/cromss-midf-13b --s2 scene_S2.tif --out map.tif
  # raw Sentinel-2 L1C band files (10/20/60 m) of a granule folder, matched by name (*_B01.jp2 ... *_B12.jp2),
  # resampled onto the 10 m grid
  cromss predict --checkpoint runs/cromss-midf-13b --s2 S2A_..._.SAFE/GRANULE/L1C_.../IMG_DATA --out map.tif
  # one file per band given explicitly (MODALITY:BAND=PATH; BAND=PATH when the band name is unambiguous)
  cromss predict --checkpoint RUN --band s2:B1=b1.tif --band s2:B2=b2.tif ... --band s2:B12=b12.tif --out map.tif
  # both modalities, average of the S1 and S2 U-Nets, plus probabilities
  cromss predict --checkpoint runs/cromss-midf-13b/checkpoints/last.ckpt --s1 S1.tif --s2 S2.tif \\
      --modality mean --out map.tif --probabilities probs.tif --probability-dtype uint8
  # a run on your own data (any modality names): --input MODALITY=PATH
  cromss predict --checkpoint runs/floods --input optical=scene_opt.tif --input sar=scene_sar.tif --out map.tif
  # every scene of a folder (a subfolder per scene, or one raster file per scene): one map each in maps/
  cromss predict --checkpoint RUN --scenes scenes/ --out maps/
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="map a scene (or a folder of scenes) of any size with a trained model (tiled, blended, georeferenced)",
        description="Tiled sliding-window inference over a whole scene. Tiles overlap and are blended "
        "with a linear-ramp window; memory is bounded by one strip of tile rows, not by the scene. "
        "Inputs are RAW rasters (e.g. S1 VV/VH in dB, S2 L1C DN), one stack file per modality (band names "
        "in the file are checked against the model's band order) or one file per band at any resolution; "
        "every band is resampled (bilinear) onto the finest input grid, which is the grid of the map. "
        "Inputs are normalised with the run's own band statistics (mean +/- 2 std clipping to [0, 1]). "
        "Output: a uint8 class GeoTIFF with the run's class names and colours, nodata 255 where any input "
        "band is NaN, the file's nodata value or outside a band's footprint.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="pretraining run folder or .ckpt (also official CromSS checkpoints), or a "
                        "fine-tuning run folder or .ckpt")
    parser.add_argument("--s1", metavar="PATH", help="Sentinel-1 stack (VV, VH in dB) or folder of band files "
                        "(same as --input s1=PATH)")
    parser.add_argument("--s2", metavar="PATH", help="Sentinel-2 L1C stack (13 bands, or 9) or folder of band "
                        "files such as *_B01.jp2 ... *_B12.jp2 (same as --input s2=PATH)")
    parser.add_argument("--input", action="append", default=[], metavar="MODALITY=PATH",
                        help="input of any modality of the model: a stack file or a folder of band files "
                        "(repeatable)")
    parser.add_argument("--band", action="append", default=[], metavar="[MODALITY:]BAND=PATH",
                        help="one file per band, e.g. --band s2:B8A=T32_B8A.jp2 (repeatable; every band of the "
                        "modality needs one; MODALITY may be left out when only one modality has that band)")
    parser.add_argument("--scenes", metavar="DIR", default=None,
                        help="predict every scene of DIR (a subfolder per scene with its band or modality "
                        "files, or one raster file per scene); --out is then a folder, one NAME.tif per scene")
    parser.add_argument("--out", required=True, metavar="TIF",
                        help="output class map GeoTIFF (uint8); with --scenes, the output folder")
    parser.add_argument("--modality", default=None,
                        help="which U-Net maps the scene: a modality of the model (s1, s2, or your own names) "
                        "or 'mean' (average of all its U-Nets' probabilities); default: s2 if given and the "
                        "model has it, else the model's first modality with an input")
    parser.add_argument("--stats", action="append", default=[], metavar="MODALITY=JSON",
                        help="band statistics JSON to normalise MODALITY with, instead of the run's own "
                        "(needed only when the run's statistics file has moved)")
    parser.add_argument("--tile", type=int, default=256, help="tile size in pixels (default: 256)")
    parser.add_argument("--overlap", type=int, default=64,
                        help="pixels shared by neighbouring tiles (default: 64; must be < --tile)")
    parser.add_argument("--probabilities", metavar="TIF", default=None,
                        help="also write per-class probabilities, one band per class (with --scenes: a folder)")
    parser.add_argument("--probability-dtype", choices=("float32", "uint8"), default="float32",
                        help="float32 in [0, 1] with nodata NaN (default), or uint8 percent 0..100 with "
                        "nodata 255 (4x smaller)")
    parser.add_argument("--nodata", type=float, default=None,
                        help="input nodata value overriding the files' own (NaN is always nodata; raw "
                        "Sentinel-2 L1C files declare none, their nodata is 0)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0 (default: cpu)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing maps (--out, --probabilities); without it an existing file is "
                        "refused before the scene is read")
    parser.set_defaults(func=run)


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    from cromss.errors import ConfigError

    pairs = []
    for value in values:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise ConfigError(f"{flag} {value!r}: expected {flag[2:].upper()}=PATH")
        pairs.append((key, path))
    return pairs


def _band_inputs(values: list[str], net: object) -> dict[str, dict[str, str]]:
    """``--band [MODALITY:]BAND=PATH`` -> modality -> band -> file."""
    from cromss.bands import contains
    from cromss.errors import ConfigError
    from cromss.predict import net_bands

    out: dict[str, dict[str, str]] = {}
    for key, path in _pairs(values, "--band"):
        modality, sep, band = key.rpartition(":")
        if not sep:
            owners = [m for m in net.modalities if contains(net_bands(net, m), band, m)]
            if len(owners) != 1:
                raise ConfigError(f"--band {key}=...: band {band!r} is a band of "
                                  f"{owners or 'no modality'} of the model; write --band MODALITY:{band}=PATH")
            modality = owners[0]
        if contains(list(out.setdefault(modality, {})), band, modality):
            raise ConfigError(f"--band {modality}:{band} is given twice (band names: B01 is B1)")
        out[modality][band] = path
    return out


def run(args: argparse.Namespace) -> int:
    from cromss.errors import ConfigError, DataError
    from cromss.predict import (
        load_predictor,
        net_bands,
        predict_scene,
        predict_scenes,
        run_folder_of,
        run_nodata_rules,
        run_normalizers,
        scene_modalities,
    )

    inputs: dict[str, object] = {}
    for modality, path in _pairs(args.input, "--input"):
        if modality in inputs:
            raise ConfigError(f"--input {modality}=... is given twice")
        inputs[modality] = path
    if args.scenes is None and not (inputs or args.band or args.s1 or args.s2):
        raise DataError("give the scene: --s1/--s2 PATH, --input MODALITY=PATH, --band [MODALITY:]BAND=PATH, "
                        "or a folder of scenes with --scenes DIR")
    if args.scenes is not None and (inputs or args.band or args.s1 or args.s2):
        raise ConfigError("--scenes DIR predicts the scenes of a folder; it does not combine with "
                          "--s1/--s2/--input/--band")
    net, classes, kind, config = load_predictor(args.checkpoint)
    direct = set(inputs) | {m for m in ("s1", "s2") if getattr(args, m)}
    for modality, bands in _band_inputs(args.band, net).items():
        if modality in direct:
            raise ConfigError(f"modality {modality} is given both as band files (--band) and as one input")
        inputs[modality] = bands
    used = scene_modalities(net, args.modality, None if args.scenes is not None else direct | set(inputs))
    stats = dict(_pairs(args.stats, "--stats"))
    normalizers = run_normalizers(config, {m: net_bands(net, m) for m in used}, stats,
                                  source=f"run {args.checkpoint}", run_dir=run_folder_of(args.checkpoint))
    options = dict(tile=args.tile, overlap=args.overlap, probability_dtype=args.probability_dtype,
                   nodata=args.nodata, classes=classes, device=args.device, normalizers=normalizers,
                   nodata_rules=run_nodata_rules(config, used, source=f"run {args.checkpoint}"),
                   overwrite=args.overwrite)
    if args.scenes is not None:
        summaries = predict_scenes(net, args.scenes, args.out, probabilities_dir=args.probabilities,
                                   modality=args.modality, **options)
        print(json.dumps({"model": kind, "scenes": summaries}, indent=2))
        bad = [s for s in summaries if "error" in s]
        if bad:
            listed = "; ".join(f"{s['scene']}: {s['error']}" for s in bad)
            raise DataError(f"{len(bad)} of {len(summaries)} scene(s) of {args.scenes} could not be mapped "
                            f"(the other {len(summaries) - len(bad)} were): {listed}")
        return 0
    summary = predict_scene(net, args.out, s1=args.s1, s2=args.s2, inputs=inputs, modality=args.modality,
                            probabilities=args.probabilities, **options)
    summary["model"] = kind
    print(json.dumps(summary, indent=2))
    return 0
