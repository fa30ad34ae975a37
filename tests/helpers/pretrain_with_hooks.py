"""`cromss pretrain` with test-side fault hooks, as Lightning callbacks (no test hook lives in cromss/).

Usage (from a test, in a subprocess; Lightning's DDP launcher re-runs this script for every rank, so
each rank installs the same callbacks):

    python tests/helpers/pretrain_with_hooks.py [--fail-rank R [--fail-step S]]
        [--sample-log PATH [--stall-step N]] -- pretrain --config CFG [overrides...]

* ``--fail-rank R``: global rank R raises DataError("injected failure on rank R at step s ...") at the
  start of the first training batch with global step >= S (default 0);
* ``--sample-log PATH``: every training batch appends "epoch step rank id..." to ``PATH.rank<r>``;
* ``--stall-step N``: every rank hangs at global step N (after the checkpoint of step N), having
  written ``PATH.stalled<r>``, so that a test can kill -9 the job mid-epoch at a known point.

Everything after ``--`` goes to ``cromss.cli.main``: the CLI's own parsing and error handling (one line
``cromss: error: ...``, exit status 2) are what runs. The callbacks reach ``cromss.training.pretrain``
through its ``callbacks=`` parameter.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import lightning as L

from cromss.errors import DataError


class FailOnRank(L.Callback):
    """Raise a DataError on one global rank once the global step reaches ``step``."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and trainer.global_step >= self.step:
            raise DataError(f"injected failure on rank {self.rank} at step {trainer.global_step} "
                            "(test-side callback FailOnRank)")


class SampleLog(L.Callback):
    """Append "epoch step rank id..." per training batch to ``<path>.rank<r>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as handle:
            handle.write(f"{trainer.current_epoch} {trainer.global_step} {trainer.global_rank} "
                         f"{' '.join(batch['id'])}\n")


class StallAt(L.Callback):
    """Hang every rank at global step ``step`` after writing ``<marker>.stalled<r>``."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(f"{self.marker}.stalled{trainer.global_rank}").write_text(str(trainer.global_step))
            while True:
                time.sleep(1)


def hooks(args: argparse.Namespace) -> list[L.Callback]:
    callbacks: list[L.Callback] = []
    if args.fail_rank is not None:
        callbacks.append(FailOnRank(args.fail_rank, args.fail_step))
    if args.sample_log:
        callbacks.append(SampleLog(args.sample_log))
    if args.stall_step is not None:
        if not args.sample_log:
            raise SystemExit("--stall-step needs --sample-log (the marker file is <sample-log>.stalled<r>)")
        callbacks.append(StallAt(args.stall_step, args.sample_log))
    return callbacks


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: pretrain_with_hooks.py [hook options] -- pretrain --config CFG ...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="pretrain_with_hooks.py")
    parser.add_argument("--fail-rank", type=int)
    parser.add_argument("--fail-step", type=int, default=0)
    parser.add_argument("--sample-log")
    parser.add_argument("--stall-step", type=int)
    args = parser.parse_args(argv[:split])

    import cromss.training.run as run
    from cromss.cli import main as cli_main

    run.pretrain = functools.partial(run.pretrain, callbacks=hooks(args))  # cli/pretrain.py looks it up at call time
    return cli_main(argv[split + 1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
