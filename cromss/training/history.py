"""Run folders as append-only history: configs per launch, one ``metrics.csv`` continued across resumes.

A run is launched once and resumed any number of times (``cromss pretrain --resume``). Nothing an
earlier launch wrote is deleted or rewritten:

* ``config.yaml`` is the config of the first launch and is never replaced; resume ``n`` (1, 2, ...)
  writes ``config.resume-<n>.yaml`` and ``config.resume-<n>.diff`` (a unified diff against the
  previous launch's config; a one-line comment when nothing changed).
* ``metrics.csv`` is continued: every launch appends its rows (flushed at each logged step, so a
  ``kill -9`` loses at most the rows of the step being logged), each row tagged with its ``launch``
  number (0 = first launch, n = the n-th launch after it: a resume, or a new start after a launch that
  crashed before its first checkpoint; every launch counts). Rows the killed launch logged after its last checkpoint stay
  in the file; :func:`current_rows` drops them (an earlier launch's row is superseded when a later launch
  started at or before its epoch). The header only widens when a metric appears for the first time:
  the file is then rewritten atomically with every earlier row kept.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from cromss.outputs import atomic_write_text, output_error
from cromss.textfiles import read_text

#: Column of metrics.csv holding the launch number (0 = first launch, n = the n-th launch after it).
LAUNCH_COLUMN = "launch"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
_RESUME_CONFIG = re.compile(r"^config\.resume-(\d+)\.yaml$")


def resume_configs(run_dir: Path) -> list[tuple[int, Path]]:
    """``[(n, config.resume-<n>.yaml), ...]`` of ``run_dir``, by n."""
    found = []
    if run_dir.is_dir():
        for path in run_dir.iterdir():
            match = _RESUME_CONFIG.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_config_file(run_dir: Path) -> Path:
    """The config file of the latest launch (``config.resume-<n>.yaml`` or ``config.yaml``)."""
    resumes = resume_configs(run_dir)
    return resumes[-1][1] if resumes else run_dir / CONFIG_FILE


def next_launch(run_dir: Path, resume: bool = True) -> int:
    """Launch number of a new launch: 0 for the first launch of a run folder, else one more than the latest.

    Every launch counts, resumed or not: a launch that crashed before its first checkpoint leaves
    ``config.yaml`` (and rows in ``metrics.csv``) but nothing to resume, so the next launch starts again
    at epoch 0 as launch 1, not as a second launch 0 (``resume`` no longer changes the number).
    """
    known = {n for n, _ in resume_configs(run_dir)} | _logged_launches(run_dir / METRICS_FILE)
    if (run_dir / CONFIG_FILE).is_file():
        known.add(0)
    return max(known) + 1 if known else 0


def _logged_launches(path: Path) -> set[int]:
    """Launch numbers that appear in ``metrics.csv`` (empty when there is none)."""
    if not path.is_file():
        return set()
    with io.StringIO(read_text(path, "metrics file"), newline="") as handle:
        return {_launch_of(row) for row in csv.DictReader(handle)}


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``['method.alpha0: 0.5 -> 0.4', ...]``: dotted keys whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def record_launch_config(run_dir: Path, config: dict[str, Any], launch: int) -> tuple[Path, list[str]]:
    """Write the config of launch ``launch``; return its file and the changes against the previous launch.

    Launch 0 writes ``config.yaml``. Resume n writes ``config.resume-<n>.yaml`` and ``config.resume-<n>.diff``;
    ``config.yaml`` and earlier resume files are never touched.
    """
    text = yaml.safe_dump(config, sort_keys=False)
    if launch == 0:
        return atomic_write_text(run_dir / CONFIG_FILE, text, "run config"), []
    previous = latest_config_file(run_dir)
    previous_text = read_text(previous, "run config") if previous.is_file() else ""
    changes = config_changes(yaml.safe_load(previous_text) or {}, config)
    path = run_dir / f"config.resume-{launch}.yaml"
    diff = "".join(difflib.unified_diff(previous_text.splitlines(keepends=True), text.splitlines(keepends=True),
                                        fromfile=previous.name, tofile=path.name))
    if not diff:
        diff = f"# {path.name}: no differences from {previous.name}\n"
    # the diff first: a config.resume-<n>.yaml always has its diff beside it
    atomic_write_text(path.with_suffix(".diff"), diff, "resume config diff")
    atomic_write_text(path, text, "resume config")
    return path, changes


# ----------------------------------------------------------------------------- metrics.csv
def _launch_of(row: dict[str, Any]) -> int:
    try:
        return int(float(row.get(LAUNCH_COLUMN) or 0))
    except ValueError:
        return 0


def _epoch_of(row: dict[str, Any]) -> float | None:
    try:
        return float(row["epoch"]) if row.get("epoch") not in (None, "") else None
    except ValueError:
        return None


def current_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``metrics.csv`` that describe the run as it stands, in file order.

    A row of launch ``l`` at epoch ``e`` is dropped when a later launch started at an epoch <= ``e``: it
    was logged after the last checkpoint of a launch that was then killed, and the resume redid that
    epoch. Files without a ``launch`` column (one launch) are returned unchanged.
    """
    starts: dict[int, float] = {}
    for row in rows:
        epoch = _epoch_of(row)
        if epoch is not None:
            launch = _launch_of(row)
            starts[launch] = min(epoch, starts.get(launch, epoch))
    out = []
    for row in rows:
        epoch, launch = _epoch_of(row), _launch_of(row)
        if epoch is not None and any(later > launch and start <= epoch for later, start in starts.items()):
            continue
        out.append(row)
    return out


def _csv_text(keys: Sequence[str], rows: Iterable[dict[str, Any]], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(keys))
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def append_csv_logger(run_dir: Path, launch: int) -> Any:
    """A Lightning ``CSVLogger`` writing ``<run_dir>/metrics.csv`` append-only (see the module docstring)."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class AppendingWriter(ExperimentWriter):
        """Lightning's writer, minus deleting an existing metrics.csv at start and rewriting it per key."""

        def __init__(self, log_dir: str) -> None:  # no super().__init__: it deletes metrics.csv
            self.metrics: list[dict[str, Any]] = []
            self.metrics_keys: list[str] = []
            self.hparams: dict[str, Any] = {}
            self.log_dir = log_dir
            self.metrics_file_path = os.path.join(log_dir, METRICS_FILE)
            os.makedirs(log_dir, exist_ok=True)
            path = Path(self.metrics_file_path)
            if path.is_file() and path.stat().st_size:
                with io.StringIO(read_text(path, "metrics file"), newline="") as handle:
                    self.metrics_keys = next(csv.reader(handle), [])

        def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
            super().log_metrics(metrics_dict, step)
            self.metrics[-1][LAUNCH_COLUMN] = launch

        def log_hparams(self, params: dict[str, Any]) -> None:
            # config.yaml / config.resume-<n>.yaml record the config; hparams.yaml keeps the first launch's
            path = Path(self.log_dir) / self.NAME_HPARAMS_FILE
            if not path.exists():
                atomic_write_text(path, yaml.safe_dump(_plain(params), sort_keys=False), "hparams")

        def save(self) -> None:
            if not self.metrics:
                return
            path = Path(self.metrics_file_path)
            new_keys = set().union(*self.metrics) - set(self.metrics_keys)
            exists = path.is_file() and path.stat().st_size > 0
            if new_keys:
                keys = sorted(set(self.metrics_keys) | new_keys)
                if exists:  # widen the header: every earlier row is kept, the file replaced atomically
                    with io.StringIO(read_text(path, "metrics file"), newline="") as handle:
                        old_rows = list(csv.DictReader(handle))
                    atomic_write_text(path, _csv_text(keys, old_rows), "metrics")
                self.metrics_keys = keys
            size = path.stat().st_size if exists else 0
            try:
                with path.open("a" if exists else "w", newline="") as handle:
                    handle.write(_csv_text(self.metrics_keys, self.metrics, header=not exists))
                    handle.flush()
            except OSError as err:
                # no half row at the end of the history: cut back to the last complete row
                try:
                    os.truncate(path, size)
                except OSError:
                    pass
                raise output_error(err, path, "metrics") from None
            self.metrics = []

    class AppendingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> AppendingWriter:
            if self._experiment is None:
                self._experiment = AppendingWriter(self.log_dir)
            return self._experiment

    # flushed at every logged step: a kill -9 loses at most the step being logged
    return AppendingCSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, str | int | float | bool | type(None)) else str(obj)
