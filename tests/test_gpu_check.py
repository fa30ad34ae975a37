"""benchmarks/gpu_check.sh works before a GPU is lent: its python part at toy size on CPU (issue 23)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_toy_run_prints_one_table(tmp_path, capsys):
    status = _gpu_check().main(["--toy", "--fusions", "late", "--precisions", "bf16-mixed", "--workers", "1",
                                "--work", str(tmp_path), "--out", str(tmp_path / "check.json")])
    assert status == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines and all(line.startswith("|") and line.endswith("|") for line in lines), out  # ONE table, nothing else
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert all(len(row) == 8 for row in rows)
    steps = [r for r in rows if r[0] == "CromSS step"]
    assert [r[1] for r in steps] == [f"resnet18 late fusion, 32 px, bf16-mixed, channels_last {cl}" for cl in ("off", "on")]
    for row in steps:
        batch, step_ms, rate = int(row[2]), float(row[3]), float(row[4])
        assert batch == 4  # the search reaches --max-batch of the toy setting
        assert abs(rate - batch / (step_ms / 1000)) < 0.01 * rate  # samples/s = batch / step time
        assert row[6] == "0.00; 0.00"  # host conversions per step: none by cromss, none at all
    loader = [r for r in rows if r[0] == "loader"]
    assert [r[1].split(",")[1].strip() for r in loader] == ["1 workers"] and all(float(r[4]) > 0 for r in loader)
    assert rows[-1][0] == "machine"
    assert (tmp_path / "stream").is_dir() and (tmp_path / "check.json").is_file()


def test_shell_entry_point(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--help"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ONE Markdown table" in done.stdout and "--toy" in done.stdout
