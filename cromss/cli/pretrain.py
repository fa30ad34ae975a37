"""``cromss pretrain``: pretrain encoders with CromSS (or an ablation) from one YAML config."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Pretrain U-Net encoders on noisy labels (CromSS, paper Sec. III) as described by one YAML config.

Every row of the paper's Tables V/VI is one config in configs/pretrain/ (CromSS mid/late fusion
with 13 or 9 S2 bands, mid/late fusion without sample selection, single-modal S1/S2); configs/demo/
has CPU-sized versions for the demo data (`cromss data make-demo demo/data`).

The run folder is <output_dir>/<name>: config.yaml (resolved), metrics.csv, tensorboard/,
checkpoints/last.ckpt (every epoch) and best.ckpt (lowest val/loss), summary.json (final metrics,
incl. the ROC-AUC of 1 - W_l for flagging noisy labels when the data has true labels).
Multi-GPU / multi-node: trainer.devices / trainer.num_nodes (DDP; torchrun and SLURM are
detected by Lightning). See docs/pretraining.md."""

EPILOG = """\
examples:
  cromss pretrain --config configs/demo/pretrain-cromss-midf.yaml
  cromss pretrain --config configs/pretrain/cromss-midf-13b.yaml data.root=/data/ssl4eo trainer.devices=4
  cromss pretrain --config configs/pretrain/cromss-midf-13b.yaml name=st-mu0.2-beta0 method.mu=0.2 method.beta=0
  cromss pretrain --config configs/demo/pretrain-cromss-midf.yaml --resume trainer.max_epochs=40
  cromss pretrain --config configs/demo/pretrain-cromss-midf.yaml --print-config"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain`` subcommand."""
    parser = subparsers.add_parser(
        "pretrain", help="pretrain encoders with CromSS from a YAML config (run folder, resume, DDP)",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="pretraining config, e.g. configs/pretrain/cromss-midf-13b.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run <output_dir>/<name> from checkpoints/last.ckpt (same seed: the "
                        "result equals an uninterrupted run); without it an existing run is refused")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (after overrides) as YAML and exit without training")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides of config keys, values parsed as YAML, e.g. method.alpha0=0.4 "
                        "trainer.max_epochs=10 data.batch_size=8 name=my-run")
    parser.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    """Load the config, apply overrides, train (or print the config)."""
    import yaml

    from cromss.config import load_config, to_dict
    from cromss.training import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.print_config:
        from cromss.training.run import resolve_config

        print(yaml.safe_dump(to_dict(resolve_config(cfg)), sort_keys=False), end="")
        return 0
    from cromss.training.run import pretrain

    pretrain(cfg, resume=args.resume)
    return 0
