"""``cromss audit``: find the wrong labels of a whole dataset with a pretrained run, ranked and on the map."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Score every labelled pixel of a dataset with a pretrained CromSS run: 1 - W_l per modality as in
training at the end of the ramp (alpha0, gamma = 1, per-class thresholds, cross-modal enhancement),
with the per-class thresholds taken over the WHOLE dataset, and a combined score across modalities.

Writes into DIR:
  scores/<sample>.tif  float32 score map per sample on the label's grid (band 1 combined, then one band
                       per modality; NaN = unlabelled; georeferenced when the source is)
  ranking.csv          one row per sample, the ones to relabel first on top
  audit.json           settings, totals, per-class thresholds, and with a reference label ROC-AUC, AP,
                       precision at the top k %, per class
  panels/*.png         the worst samples (image, label, score, reference); `cromss report RUN --audit DIR`
"""

EPILOG = """\
examples:
  cromss audit runs/own-data/floods-midf --out audits/floods
  cromss audit runs/own-data/floods-midf --data own-data/floods --out audits/floods --clean own-data/floods-clean
  cromss pretrain --config configs/own-data/floods-pretrain.yaml data.root=own-data/floods-clean name=floods-clean

A pixel is flagged when its combined score is >= --flag (default 0.5: W_l <= 0.5, i.e. its enhanced
label confidence is below half its class's threshold). See docs/audit.md.
"""


def run(args: argparse.Namespace) -> int:
    from cromss.audit import AuditOptions, run_audit

    options = AuditOptions(
        data=args.data, thresholds=args.thresholds, score=args.score, combine=args.combine, flag=args.flag,
        batch_size=args.batch_size, device=args.device, panels=args.panels,
        splits=args.splits.split(",") if args.splits else None, maps=not args.no_maps,
        progress=not args.no_progress, clean=args.clean, relabel=args.relabel, overwrite=args.overwrite,
    )
    summary = run_audit(args.run, args.out, options)
    line = (f"audited {summary['samples']} samples, {summary['labelled_pixels']} labelled pixels: "
            f"{summary['flagged_pixels']} flagged ({100 * (summary['flagged_fraction'] or 0):.1f} %), "
            f"{summary['estimated_wrong_pixels']:.0f} estimated wrong")
    print(line)
    reference = summary.get("reference")
    if reference:
        combined = reference["scores"].get(f"combined_{options.combine}", {})
        auc, ap = combined.get("auc"), combined.get("ap")
        print(f"against the reference: {reference['wrong']} wrong pixels ({100 * (reference['wrong_fraction'] or 0):.1f} %); "
              f"combined score ROC-AUC {auc if auc is None else round(auc, 3)}, AP {ap if ap is None else round(ap, 3)}")
    print(f"wrote {args.out}/ranking.csv, {args.out}/audit.json" + (", score maps" if options.maps else ""))
    if args.clean:
        print(f"wrote the cleaned dataset {args.clean} ({summary['clean']['mode']}: {summary['clean']['ignored']} "
              f"pixels ignored, {summary['clean']['relabelled']} relabelled)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``audit`` command."""
    parser = subparsers.add_parser("audit", help="rank the wrong labels of a dataset and map them (1 - W_l)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="a `cromss pretrain` run folder (its last.ckpt is used)")
    parser.add_argument("--data", metavar="ROOT", help="the dataset to audit (default: the run's pretraining "
                        "data); a generic dataset (dataset.yaml), a stream, or a folder of the run's kind")
    parser.add_argument("--out", required=True, metavar="DIR", help="the audit folder to write")
    parser.add_argument("--clean", metavar="OUT", help="also write a generic dataset with the flagged labels "
                        "ignored (ready for pretrain / finetune)")
    parser.add_argument("--relabel", action="store_true", help="with --clean: set flagged pixels to the "
                        "modalities' consensus class (all argmax agree) instead; no consensus: ignored")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out / --clean folder")
    parser.add_argument("--thresholds", choices=["dataset", "batch"], default="dataset",
                        help="per-class thresholds of eq. (11) over the whole dataset (default) or per batch "
                        "as in training")
    parser.add_argument("--score", choices=["weight", "ratio", "confidence"], default="weight",
                        help="what ranks the pixels: weight = 1 - W_l (default, the method's trust), ratio = "
                        "1 / (1 + f / f_c) (same order below the class threshold, no ties above it), confidence "
                        "= 1 - f (no per-class normalisation; ranked best at high noise in docs/results.md); "
                        "flags and --clean always use 1 - W_l")
    parser.add_argument("--combine", choices=["mean", "product", "max", "min"], default="mean",
                        help="combined score across modalities (default: mean of 1 - W_l)")
    parser.add_argument("--flag", type=float, default=0.5, help="flag pixels whose combined score is >= this "
                        "(default 0.5)")
    parser.add_argument("--splits", help="comma-separated splits to audit (default: train,val and test if any)")
    parser.add_argument("--batch-size", type=int, help="samples per forward pass (default: the run's)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--panels", type=int, default=8, help="worst samples drawn as panels (default 8)")
    parser.add_argument("--no-maps", action="store_true", help="do not write the score GeoTIFFs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
