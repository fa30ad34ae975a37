"""Run folders are append-only history and locked (issue 17): pretraining resume, locks, output I/O errors.

Every case goes through the CLI (``cromss.cli.main`` in-process, or ``python -m cromss`` when a process
must be killed or limited) and asserts the one-line error, exit status 2 and that every file the run
folder held before is byte-identical afterwards.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import TINY_ENCODER

from cromss.checkpoints import safe_torch_load
from cromss.cli import main as cli_main
from cromss.training.history import current_rows

# copied run folders: Lightning notes that the checkpoint's folder moved (expected here)
pytestmark = pytest.mark.filterwarnings("ignore:The dirpath has changed")

TINY_MODEL = {"encoder": TINY_ENCODER, "decoder_channels": [8, 8, 8, 8, 8]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def config_dict(demo_root: Path, out: Path, **trainer) -> dict:
    return {
        "name": "tiny", "seed": 5, "output_dir": str(out),
        "data": {"kind": "nol", "root": str(demo_root), "crop_size": 32, "batch_size": 2, "val_fraction": 0.34,
                 "eval_seasons": "first", "num_workers": 0},
        "model": TINY_MODEL,
        "method": {"rampup_epochs": 2},
        "optim": {"lr": 1e-2, "patience": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "progress_bar": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, "accelerator": "cpu", "devices": 1, **trainer},
    }


@pytest.fixture(scope="module")
def demo_root(nol_demo_32) -> Path:
    return nol_demo_32  # read-only, shared with other files (tests/fixtures.py)


@pytest.fixture(scope="module")
def finished_run(demo_root, tmp_path_factory) -> Path:
    """A finished 1-epoch run folder (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("base")
    config = out / "cfg.yaml"
    config.write_text(yaml.safe_dump(config_dict(demo_root, out / "runs")))
    assert cli_main(["pretrain", "--config", str(config)]) == 0
    return out


def _copy_run(finished_run: Path, tmp_path: Path, **trainer) -> tuple[Path, Path]:
    """Copy the finished run to ``tmp_path``; return (config path, run folder)."""
    shutil.copytree(finished_run / "runs", tmp_path / "runs")
    data = yaml.safe_load((finished_run / "cfg.yaml").read_text())
    data["output_dir"] = str(tmp_path / "runs")
    data["trainer"].update(trainer)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(data))
    return config, tmp_path / "runs" / "tiny"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("cromss: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- resume keeps history
def test_resume_with_changed_alpha_keeps_config_and_continues_metrics(finished_run, tmp_path, capsys):
    config, run = _copy_run(finished_run, tmp_path, max_epochs=2)
    before = snapshot(run)
    assert cli_main(["pretrain", "--config", str(config), "--resume", "method.alpha0=0.4"]) == 0
    out = capsys.readouterr().out
    assert "method.alpha0: 0.5 -> 0.4" in out
    assert (run / "config.yaml").read_bytes() == before["config.yaml"]  # the first config is kept
    assert yaml.safe_load((run / "config.resume-1.yaml").read_text())["method"]["alpha0"] == 0.4
    diff = (run / "config.resume-1.diff").read_text()
    assert "-  alpha0: 0.5\n" in diff and "+  alpha0: 0.4\n" in diff and "max_epochs" in diff
    # metrics.csv continues: the earlier bytes are the start of the file, the new rows carry launch 1
    metrics = (run / "metrics.csv").read_bytes()
    assert metrics.startswith(before["metrics.csv"]) and len(metrics) > len(before["metrics.csv"])
    rows = _rows(run / "metrics.csv")
    assert {r["launch"] for r in rows} == {"0", "1"}
    assert sorted({int(float(r["epoch"])) for r in rows if r.get("val/loss")}) == [0, 1]
    # the summary of the finished first launch stays readable beside the new one
    assert (run / "summary.before-resume-1.json").read_bytes() == before["summary.json"]
    assert not (run / "cromss.lock").exists()


@pytest.mark.parametrize("override, key", [("model.fusion=late", "model.fusion"),
                                           ("model.encoder=resnet34", "model.encoder"),
                                           ("model.num_classes=13", "model.num_classes")])
def test_incompatible_resume_is_refused_before_anything_is_touched(finished_run, tmp_path, capsys, override, key):
    config, run = _copy_run(finished_run, tmp_path, max_epochs=2)
    extra = ["data.kind=osm"] if key == "model.num_classes" else []  # 13 classes need a 13-class label table
    before = snapshot(run)
    status = cli_main(["pretrain", "--config", str(config), "--resume", override, *extra])
    line = _one_line(capsys.readouterr().err)
    assert status == 2
    assert f"cannot resume {run}" in line and key in line and "last.ckpt" in line
    assert snapshot(run) == before  # nothing written, nothing deleted


# ----------------------------------------------------------------------------- locks
def test_second_process_on_a_locked_run_folder_stops_at_once(finished_run, tmp_path, capsys):
    config, run = _copy_run(finished_run, tmp_path, max_epochs=2)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "cromss.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(run)
        started = time.monotonic()
        status = cli_main(["pretrain", "--config", str(config), "--resume"])
        line = _one_line(capsys.readouterr().err)
        assert status == 2 and time.monotonic() - started < 10
        assert f"process {holder.pid} on host {socket.gethostname()}" in line and "cromss.lock" in line
        assert snapshot(run) == before
        # a fresh launch on the same folder is stopped the same way (before its own checks)
        status = cli_main(["pretrain", "--config", str(config)])
        assert status == 2 and f"process {holder.pid}" in _one_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (kill -9 leaves its lock behind): the stale lock is taken over
    assert cli_main(["pretrain", "--config", str(config), "--resume"]) == 0
    assert not (run / "cromss.lock").exists()


def test_lock_of_another_host_names_it(tmp_path):
    from cromss.locks import FolderLock, LockHeld

    lock = tmp_path / "run" / "cromss.lock"
    lock.parent.mkdir()
    lock.write_text("4242 node17.cluster\n")
    with pytest.raises(LockHeld, match=r"process 4242 on host node17\.cluster"):
        FolderLock(lock, lock.parent, "run folder").acquire()
    assert lock.read_text() == "4242 node17.cluster\n"


# ----------------------------------------------------------------------------- I/O errors
def test_output_dir_that_is_a_file_is_one_line(demo_root, tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(config_dict(demo_root, blocker / "sub")))
    status = cli_main(["pretrain", "--config", str(config)])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left on the device")])
def test_failing_checkpoint_write_during_resume_keeps_history(finished_run, tmp_path, capsys, monkeypatch,
                                                              code, cause):
    config, run = _copy_run(finished_run, tmp_path, max_epochs=2)
    before = snapshot(run)

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", refuse)
    status = cli_main(["pretrain", "--config", str(config), "--resume"])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and cause in line and "checkpoints" in line and ".ckpt" in line
    after = snapshot(run)
    for name, data in before.items():  # every earlier file intact; metrics.csv only grew
        if name == "metrics.csv":
            assert after[name].startswith(data)
        else:
            assert after[name] == data, name
    assert not list((run / "checkpoints").glob("*.tmp"))


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for key in ("LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_file_size_limit_during_resume_is_one_line(finished_run, tmp_path):
    """RLIMIT_FSIZE (``ulimit -f``) below a checkpoint's size: exit 2, 'file too large', history kept."""
    config, run = _copy_run(finished_run, tmp_path, max_epochs=2)
    before = snapshot(run)
    # metrics and configs fit, no checkpoint does (the weights-only best.ckpt is the smallest one)
    limit = min(p.stat().st_size for p in (run / "checkpoints").glob("*.ckpt")) // 2
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from cromss.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", code, "pretrain", "--config", str(config), "--resume"],
                            capture_output=True, text=True, timeout=300, env=_env())
    line = _one_line(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "file too large" in line and ".ckpt" in line
    after = snapshot(run)
    for name, data in before.items():
        if name == "metrics.csv":
            assert after[name].startswith(data)
        else:
            assert after[name] == data, name


# ----------------------------------------------------------------------------- kill -9 in a resumed launch
def _epoch_of(path: Path) -> int:
    try:
        return int(safe_torch_load(path).get("epoch", -1))
    except Exception:  # noqa: BLE001 - being written
        return -1


@pytest.mark.over_budget(reason="a `python -m cromss pretrain --resume` process killed mid-run, then resumed")
@pytest.mark.slow
def test_kill_9_during_a_resumed_run_keeps_every_metrics_row(finished_run, tmp_path):
    # 8 epochs of the tiny network: the kill lands well before the launch could finish
    config, run = _copy_run(finished_run, tmp_path, max_epochs=8)
    before = snapshot(run)
    last = run / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, "-m", "cromss", "pretrain", "--config", str(config), "--resume"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 200
        while _epoch_of(last) < 1:  # the resumed launch finished epoch 1
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    killed = (run / "metrics.csv").read_bytes()
    assert killed.startswith(before["metrics.csv"])  # the first launch's rows survive the kill
    rows = list(csv.DictReader(io.StringIO(killed.decode())))
    assert {int(float(r["epoch"])) for r in rows if r.get("val/loss") and r["launch"] == "1"} >= {1}
    assert (run / "config.yaml").read_bytes() == before["config.yaml"]

    # resume the killed resume: the file continues again, one current value per epoch
    assert cli_main(["pretrain", "--config", str(config), "--resume"]) == 0
    final = (run / "metrics.csv").read_bytes()
    assert final.startswith(killed)
    current = current_rows(_rows(run / "metrics.csv"))
    val_epochs = [int(float(r["epoch"])) for r in current if r.get("val/loss")]
    assert val_epochs == list(range(8))
    assert sorted(p.name for p in run.glob("config.resume-*")) == [
        "config.resume-1.diff", "config.resume-1.yaml", "config.resume-2.diff", "config.resume-2.yaml"]


def test_current_rows_drops_rows_a_later_launch_redid():
    rows = [{"epoch": "0", "launch": "0", "v": "a"}, {"epoch": "1", "launch": "0", "v": "b"},
            {"epoch": "1", "launch": "1", "v": "c"}, {"epoch": "2", "launch": "1", "v": "d"},
            {"epoch": "2", "launch": "2", "v": "e"}, {"epoch": "", "launch": "0", "v": "f"}]
    assert [r["v"] for r in current_rows(rows)] == ["a", "c", "e", "f"]
    assert current_rows([{"epoch": "0", "v": "x"}]) == [{"epoch": "0", "v": "x"}]  # files before the column


def test_report_reads_only_current_rows(tmp_path):
    from cromss.report import per_epoch, read_metrics_csv

    path = tmp_path / "metrics.csv"
    path.write_text("epoch,launch,step,val/loss\n0,0,1,0.9\n1,0,3,0.8\n1,1,3,0.5\n2,1,5,0.4\n")
    series = read_metrics_csv(path)
    assert "launch" not in series
    # epoch 1 of launch 0 (logged after the last checkpoint, then killed) is replaced by launch 1's
    assert per_epoch(series["val/loss"]) == ([0.0, 1.0, 2.0], [0.9, 0.5, 0.4])
