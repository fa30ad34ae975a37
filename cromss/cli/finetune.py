"""``cromss finetune``, ``cromss evaluate`` and ``cromss table``: transfer pretrained encoders (Sec. IV-A)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cromss.errors import ConfigError

FINETUNE_HELP = """\
Fine-tune a segmentation model (PSPNet / DeepLabV3+ / FPN / U-Net / UPerNet from smp) with a
pretrained or random ResNet encoder on a downstream set, repeated over seeds.

Each seed runs in its own folder <output_dir>/<name>/<encoder-label>/<frozen|finetuned>/seed<k>/
(config.yaml, metrics.json of the TEST split for the best-VALIDATION checkpoint, checkpoints/),
followed by aggregate.json/.csv (mean ± std over seeds) next to the seed folders.
Validation is a seeded hold-out of the train split (data.val_fraction); the test split is used once.

Paper settings (configs/finetune/*.yaml): Adam lr 5e-4, 50 epochs, CE + Dice, unlabeled pixels
excluded; DFC2020 PSPNet batch 32 (no crop), DW DeepLabV3+ batch 56 crop 496, OSM FPN batch 32 crop 480.

examples:
  cromss finetune --config configs/finetune/dw-deeplabv3plus.yaml --encoder random --seeds 3
  cromss finetune --config configs/finetune/dw-deeplabv3plus.yaml \\
      --encoder weights-cromss-13B-midFusion-epoch=199.ckpt --modality s2 --frozen data.root=/data/dw
  cromss finetune --config configs/demo/finetune-dw.yaml --encoder runs/pretrain/demo --modality s1
  cromss finetune --config my.yaml data.kind=generic data.root=/data/floods modality=s2 \\
      'bands=[B2,B3,B4,B8]' --encoder s2-encoder.safetensors     # first-conv channels picked by band name

comparison baselines of Tables II-IV (ViT-Large scaleMAE / satMAE / satMAE++ / DOFA in UPerNet at lr 1e-4,
Satlas ResNet-50), read from their published files (docs/transfer.md):
  cromss finetune --config configs/finetune/baselines/dw-satmae.yaml \\
      --encoder pretrain-vit-large-e199.pth --frozen data.root=/data/dw

Generic data (data.kind: generic, docs/data.md "Your own data"): any modality of the dataset, its bands
by name ('bands'), and the dataset's classes (count, names, colours; recorded in the run's config.yaml).
"""

EVALUATE_HELP = """\
Evaluate a fine-tuned run (its checkpoints/best.ckpt) or a checkpoint file on a split of a dataset.
Prints OA, AA (mean per-class recall), mIoU, mF1 and per-class IoU / F1 from one confusion matrix
accumulated over the whole split (unlabeled pixels excluded; classes absent from the ground truth are
left out of the means) and writes them, with the confusion matrix, as JSON.

example:
  cromss evaluate runs/finetune/demo-dw/random/frozen/seed0 --data demo/data/dw --split test
"""

TABLE_HELP = """\
Collect metrics.json files of fine-tuning runs and write the paper's table: rows = encoder weights,
columns = Frozen / Fine-tuned x OA, AA, mIoU, mF1, values "mean±std" in % (sample std over seeds).
With --per-class (the default for generic data), a second table gives the IoU of every class, its
columns named by the data's classes.

example:
  cromss table 'runs/finetune/dw/*' --out runs/finetune/dw/table     # writes table.md and table.csv
"""


def _seeds(text: str) -> int | list[int]:
    """'3' -> a count of 3 seeds; '0,4,7' -> exactly those seeds."""
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects a count like 3 or a list like 0,1,2, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``finetune``, ``evaluate`` and ``table`` subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    finetune = subparsers.add_parser(
        "finetune", help="fine-tune a (pre)trained encoder in a segmentation framework",
        description=FINETUNE_HELP, formatter_class=raw,
    )
    finetune.add_argument("--config", required=True, help="task YAML, e.g. configs/finetune/dw-deeplabv3plus.yaml")
    finetune.add_argument(
        "--encoder", default=None, metavar="SOURCE",
        help="encoder weights: 'random', a 'cromss pretrain' run folder, an exported .safetensors file, an "
        "official CromSS .ckpt, a published name like cromss/13b-midf (cromss fetch --list), an "
        "SSL4EO-S12/torchgeo ResNet file, or the published file of the config's 'baseline' (default: the "
        "config's 'weights')",
    )
    finetune.add_argument("--label", default=None, help="folder/table name of the encoder (default: file stem)")
    finetune.add_argument("--modality", default=None,
                          help="input modality: s1 / s2, or any modality of a generic dataset (default: config)")
    finetune.add_argument("--init-missing", choices=("mean", "zero"), default=None,
                          help="first-conv channels of model bands the encoder weights lack: 'mean' of the "
                          "pretrained channels or 'zero' (default: such a band is an error)")
    mode = finetune.add_mutually_exclusive_group()
    mode.add_argument("--frozen", action="store_true", default=None,
                      help="keep encoder weights and BatchNorm statistics fixed; train only the decoder")
    mode.add_argument("--finetuned", dest="frozen", action="store_false",
                      help="train encoder and decoder together (the default unless the config says frozen)")
    finetune.add_argument("--seeds", type=_seeds, default=None,
                          help="number of repeats (3 = seeds seed..seed+2) or a list like 0,1,2 (default: config)")
    finetune.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="dotted config overrides, e.g. data.root=/data/dw epochs=10 data.batch_size=8")
    finetune.add_argument("--overwrite", action="store_true",
                          help="replace the results of seed folders that already hold some (the new run is "
                          "written beside them and moved into place only when it finished); without it such "
                          "a folder is refused")
    finetune.set_defaults(func=run_finetune, frozen=None)

    evaluate = subparsers.add_parser(
        "evaluate", help="OA / AA / mIoU / mF1 of a fine-tuned run on a dataset split",
        description=EVALUATE_HELP, formatter_class=raw,
    )
    evaluate.add_argument("run", metavar="RUN_OR_CKPT", help="a fine-tuning seed folder or a .ckpt file")
    evaluate.add_argument("--data", default=None, help="dataset root (default: the run's data.root)")
    evaluate.add_argument("--kind", choices=("dw", "osm", "dfc2020", "generic"), default=None,
                          help="dataset kind (default: the run's data.kind)")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test", help="split (default: test)")
    evaluate.add_argument("--batch-size", type=int, default=None, help="default: the run's data.batch_size")
    evaluate.add_argument("--out", default=None,
                          help="JSON output (default: <run>/evaluate-<kind>-<split>.json next to the checkpoint folder)")
    evaluate.set_defaults(func=run_evaluate)

    table = subparsers.add_parser(
        "table", help="mean±std table (paper layout) of fine-tuning runs",
        description=TABLE_HELP, formatter_class=raw,
    )
    table.add_argument("runs", nargs="+", metavar="RUN_GLOB",
                       help="run folders, globs or metrics.json files (searched recursively)")
    table.add_argument("--out", default=None, metavar="PREFIX", help="write PREFIX.md and PREFIX.csv")
    table.add_argument("--per-class", action=argparse.BooleanOptionalAction, default=None,
                       help="add the per-class IoU table named by the data's classes (PREFIX_per_class.csv); "
                       "default: for the user's own classes (generic data), not for the built-in tasks")
    table.set_defaults(func=run_table)


def run_finetune(args: argparse.Namespace) -> int:
    from cromss.transfer import finetune, load_finetune_config

    cfg = load_finetune_config(args.config, args.overrides)
    if args.encoder is not None:
        cfg.weights = args.encoder
        cfg.weights_label = args.label
    elif args.label is not None:
        cfg.weights_label = args.label
    if args.modality is not None:
        cfg.modality = args.modality
    if args.init_missing is not None:
        cfg.init_missing = args.init_missing
    if args.frozen is not None:
        cfg.frozen = args.frozen
    if args.seeds is not None:
        cfg.seeds = args.seeds
    cfg.validate()
    summary = finetune(cfg, overwrite=args.overwrite)
    print(f"{cfg.name} | {cfg.label} | {cfg.mode} | seeds {summary['seeds']}")
    for name, stats in summary["metrics"].items():
        print(f"  {name:>4}: {100 * stats['mean']:.2f} ± {100 * stats['std']:.2f} %")
    print(f"runs and aggregate.json/.csv in {cfg.group_dir()}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cromss.transfer import evaluate_run, format_metrics, write_json

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = evaluate_run(args.run, args.data, args.kind, args.split, batch_size=args.batch_size)
    print(f"{result['checkpoint']} on {result['data_root']} ({result['kind']}, {result['split']})")
    print(format_metrics(result))
    if args.out is not None:
        out = Path(args.out)
    else:
        ckpt = Path(result["checkpoint"])
        run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        out = run_dir / f"evaluate-{result['kind']}-{result['split']}.json"
    write_json(result, out)
    print(f"wrote {out}")
    return 0


def run_table(args: argparse.Namespace) -> int:
    from cromss.transfer import write_table

    markdown = write_table(args.runs, args.out, per_class=args.per_class)
    print(markdown, end="")
    if args.out is not None:
        print(json.dumps({"markdown": f"{args.out}.md", "csv": f"{args.out}.csv"}))
    return 0
