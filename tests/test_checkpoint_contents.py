"""best.ckpt holds weights, config, epoch and metrics, no optimizer state; last.ckpt keeps everything for an
exact resume (issue 23). Every reader of a run folder still works from best.ckpt alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from cromss.checkpoints import METRICS_KEY, safe_torch_load
from cromss.config import from_dict
from cromss.training import PretrainConfig


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo
    from cromss.training import pretrain

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ckpt")
    make_demo(out / "demo", locations=6, size=32, dw_train=1, dw_test=1, seed=11, layouts=("geotiff",))
    cfg = from_dict(PretrainConfig, {
        "name": "ckpt", "seed": 5, "output_dir": str(out / "runs"),
        "data": {"kind": "nol", "root": str(out / "demo" / "nol"), "crop_size": 32, "batch_size": 2,
                 "val_fraction": 0.34, "eval_seasons": "first"},
        "model": {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "progress_bar": False, "num_sanity_val_steps": 0, "accelerator": "cpu",
                    "devices": 1},
    })
    return Path(pretrain(cfg)["run_dir"])


def test_best_holds_weights_config_epoch_metrics_only(run):
    best = safe_torch_load(run / "checkpoints" / "best.ckpt")
    last = safe_torch_load(run / "checkpoints" / "last.ckpt")
    for key in ("optimizer_states", "lr_schedulers", "callbacks"):
        assert key not in best and key in last, key
    assert best["epoch"] == last["epoch"] == 0
    assert best["hyper_parameters"]["config"]["model"]["encoder"] == "resnet18"
    assert best[METRICS_KEY]["val/loss"] == pytest.approx(float(last["callbacks"][next(
        k for k in last["callbacks"] if "val/loss" in k and "min" in k)]["best_model_score"]))
    for key, value in last["state_dict"].items():
        assert torch.equal(value, best["state_dict"][key]), key  # epoch 0 is both the best and the last
    # Adam holds two moments per weight: last.ckpt ~3x the weights, best.ckpt ~1x
    weights = sum(v.numel() * v.element_size() for v in best["state_dict"].values())
    size_best = (run / "checkpoints" / "best.ckpt").stat().st_size
    size_last = (run / "checkpoints" / "last.ckpt").stat().st_size
    assert weights <= size_best < 1.1 * weights
    assert size_last > 2.8 * weights


def test_readers_work_from_best_alone(run, tmp_path):
    from cromss.predictor import load_predictor
    from cromss.weights import load_cromss_net
    from cromss.weights.export import export_encoder
    from cromss.weights.layouts import encoder_state_dict

    only_best = tmp_path / "only-best"
    shutil.copytree(run, only_best)
    (only_best / "checkpoints" / "last.ckpt").unlink()
    state = safe_torch_load(run / "checkpoints" / "best.ckpt")["state_dict"]
    net, info = load_cromss_net(only_best)  # analyze, predict
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[f"net.{key}"]), key
    export_encoder(only_best, "s2", tmp_path / "s2.safetensors")  # export-encoder
    encoder, _ = encoder_state_dict(only_best, "s2")  # what fine-tuning's --encoder RUN reads
    assert encoder and all(torch.equal(v, state[f"net.encoders.s2.{k}"]) for k, v in encoder.items())
    model, classes, kind, _ = load_predictor(only_best)  # predict
    assert kind == "pretrain" and classes.num_classes == 9
