"""Output locations (issue 17): export-encoder and predict --out refuse or fail in one line, exit status 2,
earlier files byte-identical; shared files get 0666 & ~umask; non-finite config numbers are refused."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import TINY_ENCODER
from torch import nn

from cromss.cli import main as cli_main
from cromss.config import dump_config, load_config, to_dict
from cromss.errors import ConfigError, OutputError
from cromss.models import ModelConfig, build_model
from cromss.outputs import atomic_write_bytes, prepare_output_dir

ROOT = Path(__file__).resolve().parents[1]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("cromss: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _fake_run(tmp_path: Path) -> Path:
    """A pretrain run folder holding a tiny CromSS checkpoint (the tiny encoder, mid fusion; 1.5 MB per encoder)."""
    cfg = ModelConfig(encoder=TINY_ENCODER, decoder_channels=[16, 16, 8, 8, 8])
    holder = nn.Module()
    holder.net = build_model(cfg)
    config = {"model": to_dict(cfg), "data": {"kind": "nol"}, "seed": 0}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": holder.state_dict(), "hyper_parameters": {"config": config}},
               run / "checkpoints" / "last.ckpt")
    dump_config(config, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _fake_run(tmp_path_factory.mktemp("run"))


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _limited(limit: int, *argv: str, umask: int | None = None) -> subprocess.CompletedProcess:
    """``python -m cromss ARGV`` with RLIMIT_FSIZE = ``limit`` bytes (``ulimit -f``)."""
    code = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            + (f"os.umask({umask}); " if umask is not None else "")
            + "from cromss.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=180,
                          env=_env())


# ----------------------------------------------------------------------------- export-encoder
def test_export_onto_an_existing_file_is_refused_without_overwrite(run, tmp_path, capsys):
    out = tmp_path / "s2.safetensors"
    assert cli_main(["export-encoder", str(run), "--modality", "s2", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli_main(["export-encoder", str(run), "--modality", "s1", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"export {out} already exists" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # --overwrite replaces both files (now the S1 encoder)
    assert cli_main(["export-encoder", str(run), "--modality", "s1", str(out), "--overwrite"]) == 0
    assert '"modality": "s1"' in out.with_suffix(".json").read_text()
    assert out.read_bytes() != before["s2.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_export_files_get_umask_permissions(run, tmp_path, umask, mode):
    """safetensors' own writer makes 0600 files; exports follow the umask like every other file."""
    out = tmp_path / "enc.safetensors"
    result = _limited(1 << 30, "export-encoder", str(run), "--modality", "s2", str(out), umask=umask)
    assert result.returncode == 0, result.stderr[-2000:]
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert stat.S_IMODE(out.with_suffix(".json").stat().st_mode) == mode


def test_export_under_a_file_is_one_line(run, tmp_path, capsys):
    blocker = tmp_path / "weights"
    blocker.write_text("a file")
    assert cli_main(["export-encoder", str(run), "--modality", "s2", str(blocker / "s2.safetensors")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "a file"


def test_export_over_the_file_size_limit_keeps_the_earlier_export(run, tmp_path):
    out = tmp_path / "s2.safetensors"
    assert cli_main(["export-encoder", str(run), "--modality", "s2", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = _limited(1 << 20, "export-encoder", str(run), "--modality", "s1", str(out), "--overwrite")
    line = _one_line(result.stderr)
    assert result.returncode == 2
    assert f"cannot write encoder export {out}" in line and "file too large" in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .tmp left, old export intact


@pytest.mark.parametrize("code, cause", [(errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "no space left on the device")])
def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch, code, cause):
    target = tmp_path / "report.json"
    target.write_text("old")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OutputError, match=rf"cannot write report {target}: {cause}"):
        atomic_write_bytes(target, b"new", "report")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_prepare_output_dir_names_the_file_in_the_way(tmp_path):
    (tmp_path / "a").write_text("x")
    with pytest.raises(OutputError, match=r"a is a file, not a folder"):
        prepare_output_dir(tmp_path / "a" / "b" / "c")
    with pytest.raises(OutputError, match=r"it is a file, not a folder"):
        prepare_output_dir(tmp_path / "a")


# ----------------------------------------------------------------------------- predict --out
def _write_s2(path: Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin

    data = np.random.default_rng(0).integers(100, 4000, size=(13, size, size)).astype(np.int16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=13, dtype="int16",
                       crs="EPSG:32632", transform=from_origin(600000, 5000000, 10, 10)) as dst:
        dst.write(data)


def test_predict_out_under_a_file_is_one_line(run, tmp_path, capsys):
    scene = tmp_path / "s2.tif"
    _write_s2(scene, 64)
    blocker = tmp_path / "maps"
    blocker.write_text("a file")
    status = cli_main(["predict", "--checkpoint", str(run), "--s2", str(scene), "--out", str(blocker / "m.tif")])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and str(blocker) in line and "is a file, not a folder" in line
    assert blocker.read_text() == "a file"


def test_predict_out_over_the_file_size_limit_is_one_line(run, tmp_path):
    scene = tmp_path / "s2.tif"
    _write_s2(scene, 256)
    kept = tmp_path / "earlier.tif"
    kept.write_bytes(b"an earlier map")
    out = tmp_path / "map.tif"
    # the float32 probabilities of 9 classes (2.4 MB raw) do not fit under a 64 kB limit
    result = _limited(64 << 10, "predict", "--checkpoint", str(run), "--s2", str(scene), "--out", str(out),
                      "--probabilities", str(tmp_path / "probs.tif"), "--tile", "128", "--overlap", "32")
    line = _one_line(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    # libtiff only prints its write error: the read-back of the written file turns it into this line
    assert f"cannot write probability map {tmp_path / 'probs.tif'}" in line
    # (the documented outcome: the read-back finds the file incomplete, and says why it may be)
    assert "the written file is incomplete (disk full or a file size limit?" in line
    assert kept.read_bytes() == b"an earlier map"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier.tif", "s2.tif"]  # no partial map left


# ----------------------------------------------------------------------------- non-finite config values
@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=.inf", "method.alpha0=.nan", "method.mu=-.inf",
                                      "method.sigma=.inf", "method.beta=nan", "data.val_fraction=.nan",
                                      "trainer.limit_train_batches=.inf", "trainer.gradient_clip_val=.nan"])
def test_non_finite_numbers_are_refused_in_every_section(override):
    from cromss.training import PretrainConfig

    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{key}': .* is not a finite number"):
        load_config(PretrainConfig, None, [override])


def test_non_finite_lr_on_the_cli_is_one_line_before_any_work(tmp_path, capsys):
    config = ROOT / "configs" / "demo" / "pretrain-cromss-midf.yaml"
    status = cli_main(["pretrain", "--config", str(config), "optim.lr=.inf", f"output_dir={tmp_path / 'runs'}"])
    line = _one_line(capsys.readouterr().err)
    assert status == 2 and "optim.lr" in line and "not a finite number" in line
    assert not (tmp_path / "runs").exists()
