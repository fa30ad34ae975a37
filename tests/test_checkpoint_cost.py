"""Checkpoint cost: best.ckpt only on improvement, last.ckpt on its configured interval (atomic writes kept)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from fixtures import TINY_ENCODER

from cromss.checkpoints import AtomicCheckpointIO
from cromss.config import from_dict
from cromss.errors import ConfigError
from cromss.training import PretrainConfig


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=6, size=48, dw_train=1, dw_test=1, seed=3)
    return out / "nol"


def _config(root: Path, out: Path, **trainer) -> PretrainConfig:
    return from_dict(PretrainConfig, {
        "name": "ckpt", "seed": 5, "output_dir": str(out),
        "data": {"kind": "nol", "root": str(root), "crop_size": 32, "batch_size": 2, "val_fraction": 0.2,
                 "eval_seasons": "first", "eval_crop": 32},
        "model": {"encoder": TINY_ENCODER, "decoder_channels": [16, 16, 8, 8, 8]},
        "method": {"rampup_epochs": 2},
        "optim": {"scheduler": "none"},
        "trainer": {"max_epochs": 5, "limit_train_batches": 2, "progress_bar": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, **trainer},
    })


def test_best_only_on_improvement_and_last_interval(demo_root, tmp_path, monkeypatch):
    from cromss.training import pretrain

    torch.set_num_threads(1)
    writes: list[tuple[int, str]] = []
    original = AtomicCheckpointIO.save_checkpoint

    def recording(self, checkpoint, path, storage_options=None):
        writes.append((int(checkpoint["epoch"]), Path(path).name))
        original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", recording)
    # the validation loss of odd epochs is raised, so some epochs improve and some do not
    from cromss.training.module import CromSSModule

    log = CromSSModule.log

    def bumped(self, name, value, *args, **kwargs):
        if name == "val/loss":
            value = value + (10.0 if self.current_epoch % 2 else 0.0)
        return log(self, name, value, *args, **kwargs)

    monkeypatch.setattr(CromSSModule, "log", bumped)
    summary = pretrain(_config(demo_root, tmp_path, last_checkpoint_every_n_epochs=2))
    with (Path(summary["run_dir"]) / "metrics.csv").open() as handle:
        losses = {int(float(r["epoch"])): float(r["val/loss"]) for r in csv.DictReader(handle) if r.get("val/loss")}
    assert sorted(losses) == [0, 1, 2, 3, 4]
    improved, best = [], float("inf")
    for epoch in range(5):
        if losses[epoch] < best:
            improved.append(epoch)
            best = losses[epoch]
    assert len(improved) < 5, "the run should have an epoch without improvement"
    assert [e for e, name in writes if name == "best.ckpt"] == improved
    # every 2 epochs (0-based epochs 1, 3) and after the final epoch 4
    assert [e for e, name in writes if name == "last.ckpt"] == [1, 3, 4]
    assert not list((Path(summary["run_dir"]) / "checkpoints").glob("*.tmp"))


def test_last_interval_keys_are_checked(demo_root, tmp_path):
    for key, value in (("last_checkpoint_every_n_epochs", 0), ("last_checkpoint_every_n_steps", 0)):
        with pytest.raises(ConfigError, match=f"trainer.{key}"):
            _config(demo_root, tmp_path, **{key: value}).trainer.validate()
