"""``cromss experiment``: the ablation studies of the paper (Tables V, VI) and a noise sweep on demo data."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STUDIES: dict[str, tuple[str, str, str]] = {
    # subcommand: (default config, one-line help, what the study is)
    "ablation": (
        "configs/experiments/ablation-demo.yaml",
        "Table V: single-modal S1/S2, midF, lateF, CromSS-midF/-lateF vs random init",
        "pretrains each variant on demo data with a known noise rate (default 40 %) and transfers every\n"
        "encoder (S1 and S2 rows) frozen and fine-tuned to the downstream split with true labels.",
    ),
    "smoothing": (
        "configs/experiments/smoothing-demo.yaml",
        "Table VI: label smoothing (mu, beta) in {(0,0), (0,0.2), (0.2,0), (0.15,0.05)} with CromSS-midF",
        "pretrains CromSS-midF with each (mu, beta) of eq. (13) and transfers the S2 encoders.",
    ),
    "noise-sweep": (
        "configs/experiments/noise-sweep-demo.yaml",
        "noise rate 0, 20, 40, 60 percent: CromSS-midF vs single-modal S2",
        "pretrains CromSS-midF and single-modal S2 at each noise rate (same scenes, only the label noise\n"
        "changes) and transfers the S2 encoders.",
    ),
}

COMMON = """
Every pretraining and every fine-tuning seed is a cell with its own folder under output_dir; finished
cells are skipped, so re-running the command resumes an interrupted study, and the three studies reuse
each other's cells when they share output_dir (the defaults do). Several processes may run on one
output_dir at once (cells are locked): --workers N starts N such processes and splits the CPU threads
between them. For each pretraining the ROC-AUC and average precision of
1 - W_l for flagging the truly mislabelled pixels are measured (noise_detection.json; for variants
without selection W_l is computed from the final network for the measurement only, marked *).

The table is written to <output_dir>/<name>.md, .csv and .json (with the full config and seeds).
Sizes (locations, tile size, epochs, seeds) are overrides of the config: the demo configs run on 2 CPU
cores; on GPUs raise them, e.g. pretrain.overrides / finetune.overrides in the YAML.
"""


def _help(study: str) -> tuple[str, str]:
    config, short, what = STUDIES[study]
    description = f"{short}.\n\nThe study {what}\n{COMMON}"
    epilog = (
        "examples:\n"
        f"  cromss experiment {study}                                   # {config}\n"
        f"  cromss experiment {study} --dry-run                         # list the cells\n"
        f"  cromss experiment {study} --workers 2                       # two processes, one thread each on 2 cores\n"
        f"  cromss experiment {study} output_dir=runs/exp2 finetune.seeds=5 threads=2\n"
        f"  cromss experiment {study} --config my-study.yaml --table-only"
    )
    return description, epilog


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``experiment`` with the subcommands ``ablation``, ``smoothing`` and ``noise-sweep``."""
    parser = subparsers.add_parser(
        "experiment", help="ablation studies on controlled-noise demo data (Tables V, VI, noise sweep)",
        description="Run the paper's ablation studies on demo data with known label noise: "
        "'ablation' (Table V), 'smoothing' (Table VI), 'noise-sweep'. See docs/results.md.",
    )
    studies = parser.add_subparsers(dest="study", metavar="STUDY")
    for study, (config, short, _) in STUDIES.items():
        description, epilog = _help(study)
        sub = studies.add_parser(study, help=short, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--config", default=config, metavar="YAML",
                         help=f"experiment config (default: {config})")
        sub.add_argument("--dry-run", action="store_true", help="list the cells and exit without training")
        sub.add_argument("--table-only", action="store_true",
                         help="only (re)write the table from the finished cells, train nothing")
        sub.add_argument("--workers", type=int, default=1, metavar="N",
                         help="run N processes on the same cell store (default 1); each gets "
                         "threads=cpu_count//N unless threads= is given")
        sub.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                         help="dotted overrides of the experiment config, e.g. output_dir=runs/x "
                         "finetune.seeds=3 'noise_rates=[0.2]' threads=1")
        sub.set_defaults(func=run_study)
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])


def run_study(args: argparse.Namespace) -> int:
    """Load the experiment config and run (or list, or tabulate) its cells."""
    from cromss.errors import ConfigError
    from cromss.experiments import load_experiment_config, run_experiment, write_study_table

    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    exp = load_experiment_config(args.config, args.overrides)
    if args.workers > 1 and not (args.table_only or args.dry_run):
        failed = run_workers(args, exp.threads)
        if failed:
            print(f"error: {failed} of {args.workers} worker processes failed (see their output above)",
                  file=sys.stderr)
            return 1
        result = write_study_table(exp)
    elif args.table_only:
        result = write_study_table(exp)
    else:
        result = run_experiment(exp, dry_run=args.dry_run)
    print(result["table"], end="")
    for path in result.get("files", []):
        print(f"wrote {path}")
    return 0


def run_workers(args: argparse.Namespace, threads: int | None) -> int:
    """Run ``args.workers`` copies of this study as subprocesses on one cell store; returns how many failed.

    The cell locks of :func:`cromss.experiments.run_cell` keep the processes from running a cell twice:
    each takes the next free cell and defers the ones another process holds.
    """
    per_worker = threads or max(1, (os.cpu_count() or 1) // args.workers)
    command = [sys.executable, "-m", "cromss", "experiment", args.study, "--config", args.config,
               *args.overrides, f"threads={per_worker}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(per_worker))
    processes = []
    for index in range(args.workers):
        processes.append(subprocess.Popen(command, env=env))
        print(f"worker {index + 1}/{args.workers}: pid {processes[-1].pid}, {per_worker} thread(s)", flush=True)
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        for process in processes:
            process.terminate()
        raise
    return sum(code != 0 for code in codes)
