"""litdata streams: conversion from every kind keeps samples and metadata; DDP reading and kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cromss.data import DataConfig, build_dataset
from cromss.data.demo import make_demo
from cromss.data.stream import META_FILE
from cromss.data.stream_convert import convert_to_stream
from tests.generic_data import make_synthetic

# litdata.optimize starts its worker and that worker's helper in fresh (spawned) interpreters that import torch:
# about 5 s per converted split, whatever the data size
LITDATA_SPAWNS = "litdata's optimize spawns two fresh interpreters (torch imported) for every split it converts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"), locations=5, size=32, noise_rate=0.3, seed=4,
                     dw_train=3, dw_test=2)


def _same_eval_samples(stream_cfg: DataConfig, source_cfg: DataConfig, split: str) -> int:
    streamed = build_dataset(stream_cfg, split, train=False)
    source = build_dataset(source_cfg, split, train=False)
    assert len(streamed) == len(source)
    for i in range(len(source)):
        a, b = streamed[i], source[i]
        assert a["id"] == b["id"]
        assert set(a) == set(b)
        for key, value in b.items():
            if torch.is_tensor(value):
                assert torch.equal(a[key], value), (split, i, key)
    return len(source)


@pytest.mark.over_budget(reason=LITDATA_SPAWNS)
@pytest.mark.parametrize(("kind", "fmt"), [("nol", "lmdb"), ("nol", "geotiff"), ("dw", "auto")])
def test_convert_builtin_kinds(demo, tmp_path, kind, fmt):
    source = DataConfig(kind=kind, root=str(demo), format=fmt, val_fraction=0.3, seed=2)
    meta = convert_to_stream(source, tmp_path / "st", chunk_bytes="256KB", num_workers=1)
    stored = json.loads((tmp_path / "st" / META_FILE).read_text())
    assert stored["kind"] == kind and stored["prescaled"] == (fmt == "lmdb")
    assert stored["modalities"]["s1"] == ["VV", "VH"] and len(stored["modalities"]["s2"]) == 13
    assert stored["classes"][0] == "water" and stored["class_colors"][0].startswith("#")
    if fmt != "lmdb":
        assert len(stored["stats"]["s2"]["mean"]) == 13
    stream = DataConfig(kind=kind, root=str(tmp_path / "st"), format="stream")
    for split in meta["splits"]:
        if split != "train":
            assert _same_eval_samples(stream, source, split) == meta["splits"][split]
    # training items: locations; the compact training sample keeps the stored dtype
    train = build_dataset(DataConfig(kind=kind, root=str(tmp_path / "st"), format="stream", crop_size=16), "train",
                          train=True, compact=True)
    sample = train[0]
    assert sample["s2"].dtype == (torch.uint8 if fmt == "lmdb" else torch.uint16) and sample["s2"].shape[-1] == 16
    assert sample["label"].dtype == torch.uint8


@pytest.mark.over_budget(reason=LITDATA_SPAWNS)
def test_convert_generic_keeps_description(tmp_path):
    root = make_synthetic(tmp_path / "g", {"opt": ["red", "nir"], "sar": ["vv"]}, ["a", "b", "c"], [2, 1, 3, 2],
                          size=16, seed=3, splits=["train", "train", "val", "test"])
    source = DataConfig(kind="generic", root=str(root))
    meta = convert_to_stream(source, tmp_path / "st", chunk_bytes="256KB", num_workers=1)
    assert meta["modalities"] == {"opt": ["red", "nir"], "sar": ["vv"]} and meta["classes"] == ["a", "b", "c"]
    assert meta["variable_timestamps"] and meta["num_seasons"] == 3
    stream = DataConfig(kind="generic", root=str(tmp_path / "st"), format="stream")
    assert _same_eval_samples(stream, source, "val") == 3
    assert _same_eval_samples(stream, source, "test") == 2
    from cromss.data.resolution import resolve_data_config

    resolved = resolve_data_config(stream)
    assert resolved.classes == ["a", "b", "c"] and resolved.bands == {"opt": ["red", "nir"], "sar": ["vv"]}


# ----------------------------------------------------------------------------- DDP, kill -9, resume
#: `cromss pretrain` with test-side callbacks (sample log, stall), see tests/helpers/pretrain_with_hooks.py
HOOKS = Path(__file__).resolve().parent / "helpers" / "pretrain_with_hooks.py"


def _launch(config: Path, cwd: Path, env: dict, hooks: list[str], resume: bool = False) -> subprocess.Popen:
    args = [sys.executable, str(HOOKS), *hooks, "--", "pretrain", "--config", str(config), "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp"]
    if resume:
        args.append("--resume")
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _log(path: Path) -> list[tuple[int, int, int, list[str]]]:
    rows = []
    for rank_file in sorted(path.parent.glob(path.name + ".rank*")):
        for line in rank_file.read_text().splitlines():
            epoch, step, rank, *ids = line.split()
            rows.append((int(epoch), int(step), int(rank), ids))
    return sorted(rows)


@pytest.mark.over_budget(reason="three 2-rank DDP launches (straight, killed, resumed), 2 loader workers each")
@pytest.mark.xdist_group("ddp")
@pytest.mark.slow
def test_ddp_stream_every_sample_once_and_kill9_resume(tmp_path):
    demo = make_demo(tmp_path / "demo", locations=20, size=32, dw_train=1, dw_test=1, seed=5, layouts=("lmdb",))
    source = DataConfig(kind="nol", root=str(demo / "nol"), val_fraction=0.2, seed=0)
    meta = convert_to_stream(source, tmp_path / "st", chunk_bytes="64KB", num_workers=1)
    assert meta["splits"]["train"] == 16
    base = {
        "seed": 3, "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "nol", "root": str(tmp_path / "st"), "format": "stream", "crop_size": 32, "batch_size": 2,
                 "num_workers": 2, "eval_seasons": "first"},
        "model": {"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]},
        "method": {"rampup_epochs": 1},
        "optim": {"scheduler": "none"},
        "trainer": {"max_epochs": 2, "progress_bar": False, "num_sanity_val_steps": 0, "log_every_n_steps": 1,
                    "last_checkpoint_every_n_steps": 1},
    }
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    logs, finals = {}, {}
    for name in ("straight", "killed"):
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump({**base, "name": name}))
        logs[name] = tmp_path / f"{name}.log"
        hooks = ["--sample-log", str(logs[name])]
        if name == "killed":
            hooks += ["--stall-step", "2"]  # mid first epoch (4 steps per epoch)
        process = _launch(config, tmp_path, env, hooks)
        if name == "killed":
            deadline = time.time() + 400
            while not list(tmp_path.glob("killed.log.stalled*")):
                assert process.poll() is None, process.communicate()[1][-3000:]
                assert time.time() < deadline, "the job never reached the stall step"
                time.sleep(0.5)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            resumed = _launch(config, tmp_path, env, ["--sample-log", str(logs[name]) + ".resumed"], resume=True)
            out, err = resumed.communicate(timeout=480)
            assert resumed.returncode == 0, err[-3000:]
        else:
            out, err = process.communicate(timeout=480)
            assert process.returncode == 0, err[-3000:]
        finals[name] = torch.load(tmp_path / "runs" / name / "checkpoints" / "last.ckpt", map_location="cpu",
                                  weights_only=True)

    straight = _log(logs["straight"])
    # one epoch reads every training sample exactly once across 2 ranks x 2 workers
    for epoch in (0, 1):
        ids = [i for e, _, _, batch in straight if e == epoch for i in batch]
        assert len(ids) == 16 and len(set(ids)) == 16, (epoch, ids)
    # the killed run's trained batches (steps < 2) plus the resumed run's give the same order
    killed = [row for row in _log(logs["killed"]) if row[1] < 2]
    resumed = _log(Path(str(logs["killed"]) + ".resumed"))
    assert min(row[1] for row in resumed) == 2
    assert killed + resumed == straight
    for key, value in finals["straight"]["state_dict"].items():
        assert torch.equal(value, finals["killed"]["state_dict"][key]), key
