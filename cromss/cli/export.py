"""``cromss export-encoder``: publish one modality's pretrained encoder as safetensors + JSON."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Write the pretrained encoder of one modality as a self-describing .safetensors file.

RUN is a `cromss pretrain` run folder (its checkpoints/last.ckpt, else best.ckpt, is used), a
checkpoint file of such a run, or an official CromSS checkpoint
(weights-cromss-13B-midFusion-epoch=199.ckpt and siblings).

The file holds the smp encoder state dict (keys exactly as smp_model.encoder.state_dict()) and
metadata: architecture, modality, input bands in order, normalisation statistics (clip to
mean +/- 2 std, scale to [0, 1]), class table, the pretraining config and the cromss version.
The same metadata is written next to it as OUT with suffix .json.
"""

EPILOG = """\
examples:
  cromss export-encoder runs/pretrain-mid --modality s2 weights/cromss_s2.safetensors
  cromss export-encoder weights-cromss-13B-midFusion-epoch=199.ckpt --modality s1 weights/

use it:
  import cromss.weights, segmentation_models_pytorch as smp
  model = smp.FPN("resnet50", encoder_weights=None, in_channels=13, classes=8)
  cromss.weights.load_into(model, "weights/cromss_s2.safetensors")
"""


def run_export(args: argparse.Namespace) -> int:
    """Export the encoder and print where it went."""
    from cromss.weights import export_encoder, read_export

    out = export_encoder(args.run, args.modality, args.out, overwrite=args.overwrite)
    _, meta = read_export(out)
    arch = meta["architecture"]
    print(
        f"wrote {out} ({arch['encoder']}, {meta['modality']}, {arch['in_channels']} bands: "
        f"{', '.join(meta['bands'])}) and {out.with_suffix('.json')}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export-encoder`` command."""
    parser = subparsers.add_parser(
        "export-encoder",
        help="write a pretrained encoder (s1 or s2) as safetensors + JSON metadata",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN", help="pretrain run folder, checkpoint file (.ckpt) or a "
                        "published name like cromss/13b-midf (cromss fetch --list)")
    parser.add_argument(
        "--modality",
        required=True,
        help="which encoder to export: s1 (Sentinel-1 VV, VH), s2 (Sentinel-2, 13 or 9 bands) or a modality "
        "of a generic dataset (its band names are read from the run's config)",
    )
    parser.add_argument(
        "out",
        metavar="OUT",
        help="output file (.safetensors is added if missing) or an existing folder "
        "(then <modality>_encoder.safetensors is written in it)",
    )
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing export (OUT and its .json); without it an existing file is "
                        "refused")
    parser.set_defaults(func=run_export)
