"""Shared test settings: deterministic torch with one thread per xdist worker, the path of ../shared,
the per-test time budget (tests over it are named at the end of the run) and the session fixtures that
several test files share (tests/fixtures.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _threads_per_worker() -> int:
    """CPU threads for torch in this pytest process: the cores divided among the xdist workers."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers))


TORCH_THREADS = _threads_per_worker()
os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
#: Default per-test budget in seconds (setup + call + teardown); ``--budget`` changes it.
BUDGET_SECONDS = 10.0

from fixtures import *  # noqa: E402,F403 - the session fixtures shared by several test files


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(TORCH_THREADS)
    yield


@pytest.fixture(autouse=True)
def _keep_multiprocessing_start_method():
    """litdata's ``optimize`` forces the global start method to 'spawn'; later tests get it back."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    yield
    if multiprocessing.get_start_method(allow_none=True) != before:
        multiprocessing.set_start_method(before, force=True)


@pytest.fixture
def shared_dir() -> Path:
    """The read-only ../shared folder; tests that need it skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}: real-data tests need it")
    return SHARED_DIR


# ----------------------------------------------------------------------------- the per-test budget
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--budget", type=float, default=BUDGET_SECONDS, metavar="SECONDS",
                     help=f"per-test time budget (setup + call + teardown); tests over it are listed at the "
                          f"end of the run (default {BUDGET_SECONDS:g} s)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "over_budget(reason): a test allowed to take longer than the per-test "
                                       "budget, and why (listed in docs/architecture.md, 'Tests')")
    # pytest-xdist's marker (`make test` runs `-n 2 --dist loadgroup`): tests of one group run one at a time
    # on one worker (the multi-process DDP jobs); registered here too for runs without xdist
    config.addinivalue_line("markers", "xdist_group(name): run with the other tests of this group on one worker")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The long tests start first: with xdist the short ones then fill the other worker around them.
    # A stable sort keeps every file's own order (and module fixtures built once per worker).
    items.sort(key=lambda item: item.get_closest_marker("over_budget") is None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("over_budget")
    if marker is not None:  # travels with the reports to the xdist controller
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        item.user_properties.append(("over_budget", reason))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    budget = config.getoption("budget")
    totals: dict[str, float] = {}
    allowed: dict[str, str] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            totals[report.nodeid] = totals.get(report.nodeid, 0.0) + report.duration
            for key, value in getattr(report, "user_properties", ()):
                if key == "over_budget":
                    allowed[report.nodeid] = value
    over = sorted(((t, n) for n, t in totals.items() if t > budget), reverse=True)
    if not over:
        return
    terminalreporter.section(f"over the {budget:g} s per-test budget")
    for seconds, nodeid in over:
        if nodeid in allowed:
            terminalreporter.write_line(f"{seconds:7.1f}s  {nodeid}  (allowed: {allowed[nodeid]})")
        else:
            terminalreporter.write_line(f"{seconds:7.1f}s  {nodeid}  OVER BUDGET: make it smaller or mark it "
                                        "over_budget(reason=...)")
