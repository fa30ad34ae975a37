"""Reliability round 3 (issue 21): outputs of ``data tile``, ``predict`` and ``report`` are never replaced
silently, never written outside ``--out``, never half-written; predict refuses inputs that do not overlap;
``predict --scenes`` maps every good scene and lists the bad ones.

Each case asserts the one line ``cromss: error: ...``, exit status 2 and byte-identical earlier files.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from torch import nn

from cromss.cli import main
from cromss.config import dump_config, to_dict
from cromss.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def one_error_line(capsys, status: int) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("cromss: error: "), captured.err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_raster(path: Path, data: np.ndarray, x0: float = 600000, y0: float = 5000000, res: float = 10,
                 nodata=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32632", transform=from_origin(x0, y0, res, res),
                       nodata=nodata) as dst:
        dst.write(data)
    return path


def s2_scene(path: Path, size: int = 64, seed: int = 0, **where) -> Path:
    data = np.random.default_rng(seed).integers(100, 4000, size=(13, size, size)).astype(np.int16)
    return write_raster(path, data, **where)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A pretrain run folder with a tiny CromSS checkpoint (resnet18, mid fusion, S1 + S2)."""
    cfg = ModelConfig(encoder="resnet18", decoder_channels=[16, 16, 8, 8, 8])
    holder = nn.Module()
    holder.net = build_model(cfg)
    config = {"model": to_dict(cfg), "data": {"kind": "nol"}, "seed": 0}
    run = tmp_path_factory.mktemp("run") / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": holder.state_dict(), "hyper_parameters": {"config": config}},
               run / "checkpoints" / "last.ckpt")
    dump_config(config, run / "config.yaml")
    return run


def predict(run: Path, *argv: str) -> int:
    return main(["predict", "--checkpoint", str(run), "--tile", "64", "--overlap", "0", *argv])


# ----------------------------------------------------------------------------- predict --out / --probabilities
def test_predict_refuses_an_existing_map_and_probabilities(run, tmp_path, capsys):
    scene = s2_scene(tmp_path / "s2.tif")
    out, probs = tmp_path / "map.tif", tmp_path / "probs.tif"
    out.write_bytes(b"an earlier map")
    line = one_error_line(capsys, predict(run, "--s2", str(scene), "--out", str(out)))
    assert f"class map {out} already exists: pass --overwrite" in line
    assert out.read_bytes() == b"an earlier map"
    out.unlink()
    probs.write_bytes(b"earlier probabilities")
    line = one_error_line(capsys, predict(run, "--s2", str(scene), "--out", str(out), "--probabilities", str(probs)))
    assert f"probability map {probs} already exists" in line
    assert probs.read_bytes() == b"earlier probabilities" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.tif", "s2.tif"]  # no map, no .tmp, no lock


def test_predict_overwrite_replaces_the_map(run, tmp_path, capsys):
    scene = s2_scene(tmp_path / "s2.tif")
    out = tmp_path / "map.tif"
    out.write_bytes(b"an earlier map")
    assert predict(run, "--s2", str(scene), "--out", str(out), "--overwrite") == 0
    with rasterio.open(out) as dataset:
        assert dataset.count == 1 and dataset.shape == (64, 64) and dataset.dtypes[0] == "uint8"


def test_probabilities_equal_to_out_is_one_clear_line(run, tmp_path, capsys):
    scene = s2_scene(tmp_path / "s2.tif")
    out = tmp_path / "map.tif"
    line = one_error_line(capsys, predict(run, "--s2", str(scene), "--out", str(out), "--probabilities",
                                          str(tmp_path / "." / "map.tif")))
    assert "is the same file as --out" in line and "disk full" not in line
    assert not out.exists()


def test_a_second_prediction_to_the_same_map_stops_at_once(run, tmp_path, capsys):
    from cromss.locks import FolderLock

    scene = s2_scene(tmp_path / "s2.tif")
    out = tmp_path / "map.tif"
    with FolderLock(tmp_path / "map.tif.lock", out, "class map"):  # what a running prediction holds
        line = one_error_line(capsys, predict(run, "--s2", str(scene), "--out", str(out)))
    assert f"class map {out} is in use by process {os.getpid()}" in line and "disk full" not in line
    assert not out.exists()


def test_inputs_that_do_not_overlap_are_one_line(run, tmp_path, capsys):
    s2 = s2_scene(tmp_path / "s2.tif")
    s1_data = np.random.default_rng(1).normal(-12, 3, size=(2, 32, 32)).astype(np.float32)
    s1 = write_raster(tmp_path / "s1.tif", s1_data, x0=900000, y0=4000000, res=20)  # 300 km away
    out = tmp_path / "map.tif"
    line = one_error_line(capsys, predict(run, "--s1", str(s1), "--s2", str(s2), "--modality", "mean",
                                          "--out", str(out)))
    assert f"input {s1}" in line and "does not overlap the map grid of" in line and str(s2) in line
    assert not out.exists()
    s1_near = write_raster(tmp_path / "s1n.tif", s1_data, x0=600100, y0=5000000, res=20)  # half overlapping
    assert predict(run, "--s1", str(s1_near), "--s2", str(s2), "--modality", "mean", "--out", str(out)) == 0
    with rasterio.open(out) as dataset:
        labels = dataset.read(1)
    assert (labels != 255).any() and (labels == 255).any()  # mapped where both cover, nodata elsewhere


def test_predict_scenes_maps_every_good_scene_and_lists_the_bad(run, tmp_path, capsys):
    scenes = tmp_path / "scenes"
    s2_scene(scenes / "a" / "s2.tif", seed=1)
    (scenes / "b").mkdir()
    (scenes / "b" / "notes.txt").write_text("no raster here")  # no s2 input
    (scenes / "c").mkdir()
    (scenes / "c" / "s2.tif").write_bytes(b"not a GeoTIFF")  # unreadable
    s2_scene(scenes / "d" / "s2.tif", seed=2)
    out = tmp_path / "maps"
    status = main(["predict", "--checkpoint", str(run), "--tile", "64", "--overlap", "0", "--modality", "s2",
                   "--scenes", str(scenes), "--out", str(out)])
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2 and len(lines) == 1, captured.err
    assert lines[0].startswith(f"cromss: error: 2 of 4 scene(s) of {scenes} could not be mapped (the other 2 were)")
    assert "b: scene" in lines[0] and "c: cannot read s2 raster" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "d.tif"]
    report = json.loads(captured.out)["scenes"]
    assert [s["scene"] for s in report] == ["a", "b", "c", "d"]
    assert "error" in report[1] and "error" in report[2] and report[0]["out"] == str(out / "a.tif")
    for name in ("a", "d"):
        with rasterio.open(out / f"{name}.tif") as dataset:
            assert dataset.shape == (64, 64)


# ----------------------------------------------------------------------------- report --out
def test_report_refuses_an_existing_file(run, tmp_path, capsys):
    out = tmp_path / "report.html"
    out.write_text("an earlier report")
    line = one_error_line(capsys, main(["report", str(run), "--out", str(out)]))
    assert f"report {out} already exists: pass --overwrite" in line
    assert out.read_text() == "an earlier report"
    assert main(["report", str(run), "--out", str(out), "--overwrite"]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------------- data tile
@pytest.fixture
def rasters(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    image = write_raster(tmp_path / "in" / "S2.tif", rng.integers(1, 3000, size=(3, 64, 64)).astype(np.uint16))
    label = write_raster(tmp_path / "in" / "L.tif", rng.integers(0, 3, size=(1, 64, 64)).astype(np.uint8))
    return {"s2": image, "label": label}


def tile(rasters: dict[str, Path], out: Path, *extra: str) -> int:
    return main(["data", "tile", *(a for name, path in rasters.items() for a in ("--input", f"{name}={path}")),
                 "--out", str(out), *extra])


@pytest.mark.parametrize("prefix", ["../../x", "a/b", "..", ".", "/abs"])
def test_tile_prefix_with_path_parts_is_refused(rasters, tmp_path, capsys, prefix):
    unrelated = tmp_path / "x_r00000_c00000.tif"
    unrelated.write_bytes(b"someone else's file")
    out = tmp_path / "deep" / "er" / "tiles"
    line = one_error_line(capsys, tile(rasters, out, "--size", "32", "--prefix", prefix))
    assert f"--prefix {prefix!r}: must be a plain name" in line
    assert unrelated.read_bytes() == b"someone else's file" and not (tmp_path / "deep").exists()


def test_tile_never_overwrites_existing_tiles_without_overwrite(rasters, tmp_path, capsys):
    out = tmp_path / "tiles"
    assert tile(rasters, out, "--size", "32", "--prefix", "scene") == 0
    first = snapshot(out)
    assert len(first) == 8  # 4 tiles x 2 inputs
    for size in ("32", "16"):  # the same tiles, or another size that would leave a mix
        line = one_error_line(capsys, tile(rasters, out, "--size", size, "--prefix", "scene"))
        assert f"{out} already holds 8 tile(s) of prefix 'scene'" in line and "--overwrite" in line
        assert snapshot(out) == first
    assert tile(rasters, out, "--size", "16", "--prefix", "other") == 0  # another prefix: beside them
    assert tile(rasters, out, "--size", "16", "--prefix", "scene", "--overwrite") == 0
    names = sorted(p.name for p in (out / "s2").iterdir() if p.name.startswith("scene_"))
    assert len(names) == 16
    for path in (out / "s2").glob("scene_*.tif"):
        with rasterio.open(path) as dataset:
            assert dataset.shape == (16, 16)  # no 32 px tile of the earlier tiling left: no mix
    assert len(list((out / "s2").glob("other_*.tif"))) == 16


@contextlib.contextmanager
def small_mount(path: Path, options: str):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); the RLIMIT_FSIZE case runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_tile_onto_a_full_disk_names_the_tile_and_leaves_no_partial_tile(rasters, tmp_path, capsys):
    with small_mount(tmp_path / "mnt", "size=40k") as mount:
        out = mount / "tiles"
        line = one_error_line(capsys, tile(rasters, out, "--size", "32", "--prefix", "scene"))
        assert line.startswith(f"cromss: error: cannot write tile {out}/") and "no space left on the device" in line
        assert "Write failed" not in line
        assert [p for p in mount.rglob("*") if p.is_file()] == []  # no tile, no partial tile, no .tmp


def test_tile_over_a_file_size_limit_names_the_tile_and_leaves_nothing(rasters, tmp_path):
    out = tmp_path / "tiles"
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
            "from cromss.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = ["data", "tile", "--input", f"s2={rasters['s2']}", "--size", "32", "--prefix", "scene", "--out", str(out)]
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cromss: error: cannot write tile {out}/s2/scene_r00000_c00000.tif")
    assert [p for p in out.rglob("*") if p.is_file()] == []
