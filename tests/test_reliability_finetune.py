"""Fine-tuning folders (issue 17): a re-run validates first and never deletes first, one process per seed
folder, output I/O errors and bad batch sizes in one line, SIGINT during a save without a traceback.

Each case runs ``cromss finetune`` (in-process CLI, or a subprocess when a limit or a signal is needed) and
asserts the one-line error, exit status and that every earlier file is byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cromss.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo" / "finetune-dw.yaml"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo_dw(dw_demo_64) -> Path:
    return dw_demo_64  # read-only, shared with other files (tests/fixtures.py)


def _args(demo_dw: Path, out: Path, *extra: str) -> list[str]:
    flags = [e for e in extra if e.startswith("--")]  # options before the KEY=VALUE overrides
    return ["finetune", "--config", str(CONFIG), "--encoder", "random", "--seeds", "1", "--frozen", *flags,
            f"output_dir={out}", f"data.root={demo_dw}", "epochs=1", "trainer.limit_train_batches=1",
            "trainer.enable_progress_bar=false", "data.batch_size=2", *(e for e in extra if e not in flags)]


@pytest.fixture(scope="module")
def finished(demo_dw, tmp_path_factory) -> Path:
    """Output folder of a finished fine-tuning run (one seed)."""
    out = tmp_path_factory.mktemp("ft")
    assert cli_main(_args(demo_dw, out / "runs")) == 0
    return out / "runs"


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    shutil.copytree(finished, tmp_path / "runs")
    return tmp_path / "runs", tmp_path / "runs" / "demo-dw" / "random" / "frozen" / "seed0"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("cromss: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


# ----------------------------------------------------------------------------- re-runs
def test_rerun_into_an_existing_folder_is_refused_and_keeps_everything(demo_dw, finished, tmp_path, capsys):
    out, seed_dir = _copy(finished, tmp_path)
    before = snapshot(out)
    assert cli_main(_args(demo_dw, out)) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(seed_dir) in line and "--overwrite" in line
    assert snapshot(out) == before


def test_overwrite_that_fails_validation_deletes_nothing(demo_dw, finished, tmp_path, capsys):
    out, seed_dir = _copy(finished, tmp_path)
    before = snapshot(out)
    # the data root does not exist: found before anything is written, the old results stay
    assert cli_main(_args(demo_dw, out, "--overwrite", f"data.root={tmp_path / 'missing'}")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "missing" in line
    assert snapshot(out) == before
    # an encoder file that does not exist: the same
    args = _args(demo_dw, out, "--overwrite")
    args[args.index("--encoder") + 1] = str(tmp_path / "no.safetensors")
    assert cli_main(args) == 2
    assert "no.safetensors" in _one_line(capsys.readouterr().err)
    assert snapshot(out) == before


def test_overwrite_replaces_the_results_only_after_the_new_run_finished(demo_dw, finished, tmp_path):
    out, seed_dir = _copy(finished, tmp_path)
    before = snapshot(out)
    assert cli_main(_args(demo_dw, out, "--overwrite", "lr=1e-3")) == 0
    after = snapshot(out)
    assert "lr: 0.001" in (seed_dir / "config.yaml").read_text()
    assert json.loads((seed_dir / "metrics.json").read_text())["checkpoint"] in ("best.ckpt", "last.ckpt")
    assert (seed_dir / "checkpoints" / "best.ckpt").is_file()
    assert after.keys() == before.keys()  # the same files, no staging folder or lock left behind


# ----------------------------------------------------------------------------- locks
def test_a_locked_seed_folder_stops_a_second_process(demo_dw, finished, tmp_path, capsys):
    out, seed_dir = _copy(finished, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (seed_dir / "cromss.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(out)
        assert cli_main(_args(demo_dw, out, "--overwrite")) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"process {holder.pid} on host {socket.gethostname()}" in line and str(seed_dir) in line
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- I/O errors
def test_output_dir_that_is_a_file(demo_dw, tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    assert cli_main(_args(demo_dw, blocker / "x")) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left on the device")])
def test_failing_checkpoint_write_keeps_the_earlier_results(demo_dw, finished, tmp_path, monkeypatch, capsys,
                                                            code, cause):
    out, _ = _copy(finished, tmp_path)
    before = snapshot(out)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", refuse)
    assert cli_main(_args(demo_dw, out, "--overwrite")) == 2
    line = _one_line(capsys.readouterr().err)
    assert cause in line and ".ckpt" in line
    assert snapshot(out) == before


def test_file_size_limit_is_one_line(demo_dw, finished, tmp_path):
    out, _ = _copy(finished, tmp_path)
    before = snapshot(out)
    limit = 1 << 20  # a checkpoint of the ResNet-18 DeepLabV3+ does not fit
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from cromss.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, *_args(demo_dw, out, "--overwrite")],
                            capture_output=True, text=True, timeout=300, env=_env())
    line = _one_line(result.stderr)
    assert result.returncode == 2 and "file too large" in line
    assert snapshot(out) == before


# ----------------------------------------------------------------------------- batch size, numbers, SIGINT
def test_batch_size_one_is_refused_before_any_work(demo_dw, tmp_path, capsys):
    assert cli_main(_args(demo_dw, tmp_path / "runs")[:-1] + ["data.batch_size=1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "data.batch_size" in line and "BatchNorm" in line
    assert not (tmp_path / "runs").exists()


def test_non_finite_lr_is_refused(demo_dw, tmp_path, capsys):
    assert cli_main(_args(demo_dw, tmp_path / "runs", "lr=.inf")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'lr'" in line and "not a finite number" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("target", ["torch.save", "metrics"])
def test_sigint_during_a_save_leaves_no_traceback(demo_dw, finished, tmp_path, target):
    """SIGINT arriving while a checkpoint or metrics.json is written (a KeyboardInterrupt raised inside
    the write): exit status 130, 'cromss: interrupted', no traceback, the earlier results intact."""
    out, _ = _copy(finished, tmp_path)
    before = snapshot(out)
    if target == "torch.save":
        patch = "import torch; torch.save = interrupt"
    else:
        patch = "import cromss.outputs as o; o.atomic_write_bytes = interrupt"
    code = ("import sys\n"
            "def interrupt(*a, **k):\n    raise KeyboardInterrupt\n"
            f"{patch}\n"
            "from cromss.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, *_args(demo_dw, out, "--overwrite")],
                            capture_output=True, text=True, timeout=300, env=_env())
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 130 and "cromss: interrupted" in result.stderr
    assert snapshot(out) == before
