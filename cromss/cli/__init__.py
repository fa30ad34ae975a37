"""The ``cromss`` command: one entry point, one subcommand group per concept.

Each ``cromss.cli.<group>`` module exposes ``register(subparsers)`` and sets
``func`` on its parsers. One rule for every user error, argparse's own included: ONE line
``cromss: error: ...`` on stderr and exit status 2 (no usage block, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import typing
import warnings

from cromss import __version__
from cromss.errors import CromssError

#: Subcommand modules, in --help order. A module missing here is simply not offered.
GROUPS = ("data", "fetch", "pretrain", "export", "finetune", "analyze", "predict", "audit", "experiment", "demo")


class UsageError(CromssError):
    """A command line that argparse refuses (unknown option, missing argument, bad value)."""


class CromssArgumentParser(argparse.ArgumentParser):
    """argparse with the one-line error rule: its errors raise :class:`UsageError` instead of printing
    the usage block and a second ``PROG: error:`` line (subparsers inherit the class)."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.removeprefix("cromss").strip()
        where = f"{command}: " if command else ""
        hint = f"'{self.prog} --help' lists the options"
        raise UsageError(f"{where}{message} ({hint})")


def one_line(err: BaseException) -> str:
    """The message of ``err`` as one line.

    An error raised in a DataLoader worker reaches the main process as ``Caught DataError in DataLoader
    worker process 0. Original Traceback ...``: its last line is the original message.
    """
    text = str(err).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        text = re.sub(r"^[\w.]*(Error|Exception): ", "", last)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = CromssArgumentParser(
        prog="cromss",
        description="Pretrain remote-sensing segmentation encoders on noisy labels across sensors "
        "(CromSS), transfer them to mapping tasks and look at what they learned.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'cromss COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"cromss {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        try:
            module = importlib.import_module(f"cromss.cli.{group}")
        except ModuleNotFoundError as err:
            if err.name == f"cromss.cli.{group}":
                continue
            raise
        module.register(subparsers)
    return parser


class _DropAdvert(logging.Filter):
    """Drops Lightning's cloud-logging advert from the console (it is not about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_third_party_noise() -> None:
    """Silence messages that are not about the user's run: torch's LeafSpec deprecation (raised inside
    Lightning, not fixable here) and Lightning's LitLogger tip. Only the CLI calls this; library users
    keep their own warning settings."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in logger.filters):
            logger.addFilter(_DropAdvert())


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_noise()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        result = args.func(args)
    except CromssError as err:
        print(f"cromss: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cromss: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        # the last net under the specific messages: a file system error is the user's to fix, one line
        from cromss.outputs import os_error_cause

        where = f"{err.filename}: " if err.filename else ""
        print(f"cromss: error: {where}{one_line(Exception(os_error_cause(err)))}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
