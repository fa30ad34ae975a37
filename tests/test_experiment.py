"""Tests of cromss.experiments: controlled-noise data, resumable cells, one tiny study end to end."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures import TINY_ENCODER

from cromss.config import from_dict
from cromss.errors import ConfigError
from cromss.experiments import (
    DemoDataSpec,
    ExperimentConfig,
    noise_tag,
    run_cell,
    run_experiment,
    write_controlled_data,
)

TINY_DATA = {"locations": 4, "size": 32, "dw_train": 5, "dw_test": 2, "seed": 3}


def tiny_experiment(tmp_path, **changes) -> ExperimentConfig:
    """One CromSS-midF pretraining (1 epoch, 32 px) and one frozen fine-tune seed of its S2 encoder."""
    data = {
        "name": "tiny", "layout": "ablation", "output_dir": str(tmp_path / "exp"), "noise_rates": [0.4],
        "threads": 1, "data": TINY_DATA,
        "pretrain": {"base": "configs/demo/pretrain-cromss-midf.yaml", "overrides": [
            "data.crop_size=32", "data.batch_size=2", "data.val_fraction=0.25", "trainer.max_epochs=1",
            "trainer.limit_train_batches=1", "method.rampup_epochs=1", "model.decoder_channels=[16,16,8,8,8]",
            f"model.encoder={TINY_ENCODER}",
        ]},
        "finetune": {"base": "configs/demo/finetune-dw.yaml", "overrides": [
            "epochs=1", "data.batch_size=2", "data.crop_size=32", f"encoder={TINY_ENCODER}",
            "trainer.enable_progress_bar=false", "trainer.limit_train_batches=1",
        ], "seeds": 1, "modes": ["frozen"], "random": False},
        "variants": [{"name": "CromSS-midF", "overrides": ["model.fusion=mid"], "transfer": ["s2"]}],
    }
    data.update(changes)
    return from_dict(ExperimentConfig, data)


@pytest.fixture(autouse=True)
def _run_in_repo(monkeypatch):
    # the experiment configs name base configs relative to the repository root
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_noise_tag():
    assert noise_tag(0.0) == "noise00"
    assert noise_tag(0.4) == "noise40"
    assert noise_tag(0.6) == "noise60"


@pytest.mark.parametrize("change, key", [
    ({"noise_rates": [1.0]}, "noise_rates"),
    ({"noise_rates": []}, "noise_rates"),
    ({"variants": []}, "variants"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "variants"),
    ({"variants": [{"name": "random"}]}, "name"),
    ({"finetune": {"modes": ["thawed"]}}, "finetune.modes"),
    ({"data": {"size": 16}}, "data.size"),
])
def test_config_errors_name_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError, match=key):
        tiny_experiment(tmp_path, **change)


def test_unknown_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="noise_rate"):
        tiny_experiment(tmp_path, noise_rate=0.4)


def test_shipped_configs_load_and_share_cells():
    from cromss.experiments import load_experiment_config, pretrain_config

    studies = {name: load_experiment_config(f"configs/experiments/{name}-demo.yaml")
               for name in ("ablation", "smoothing", "noise-sweep")}
    # CromSS-midF at 40 % noise must be the same cell (same resolved config) in all three studies
    configs = []
    for exp in studies.values():
        variant = next(v for v in exp.variants if v.name == "CromSS-midF")
        configs.append(pretrain_config(exp, variant, 0.4))
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].method.selection and configs[0].model.fusion == "mid"
    assert (configs[0].method.mu, configs[0].method.beta) == (0.15, 0.05)
    smoothing = {(pretrain_config(studies["smoothing"], v, 0.4).method.effective_mu,
                  pretrain_config(studies["smoothing"], v, 0.4).method.effective_beta)
                 for v in studies["smoothing"].variants}
    assert smoothing == {(0.0, 0.0), (0.0, 0.2), (0.2, 0.0), (0.15, 0.05)}
    assert studies["noise-sweep"].noise_rates == [0.0, 0.2, 0.4, 0.6]


def test_run_cell_skips_finished_and_takes_over_stale_lock(tmp_path):
    cell = tmp_path / "cell"
    calls = []

    def work():
        calls.append(1)
        cell.mkdir(exist_ok=True)
        (cell / "done.json").write_text("{}")

    # a lock left by a process that no longer exists must not block the cell
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "cell.lock").write_text(str(dead.pid))
    assert run_cell(cell, cell / "done.json", {"a": 1}, work, log=lambda _: None) == "ran"
    assert run_cell(cell, cell / "done.json", {"a": 1}, work, log=lambda _: None) == "skipped"
    assert calls == [1]
    assert not (tmp_path / "cell.lock").exists()
    with pytest.raises(ConfigError, match="another config"):
        run_cell(cell, cell / "done.json", {"a": 2}, work, log=lambda _: None)


def test_controlled_data_changes_only_the_noise(tmp_path):
    from cromss.data import DataConfig, build_dataset

    spec = DemoDataSpec(**TINY_DATA)
    samples = {}
    for rate in (0.0, 0.4):
        out = write_controlled_data(tmp_path, spec, rate)
        info = json.loads((out / "info.json").read_text())
        cfg = DataConfig(kind="nol", root=str(out), format="lmdb", crop_size=None, val_fraction=0.25)
        samples[rate] = [build_dataset(cfg, "train", train=False)[i] for i in range(3)]
        measured = np.mean([(s["label"] != s["label_true"]).float().mean().item() for s in samples[rate]])
        assert abs(info["noise_rate_measured"] - rate) < 0.12
        if rate == 0.0:
            assert measured == 0.0
        else:
            assert measured > 0.2
    for clean, noisy in zip(samples[0.0], samples[0.4]):
        assert clean["id"] == noisy["id"]
        assert torch.equal(clean["s2"], noisy["s2"]) and torch.equal(clean["s1"], noisy["s1"])
        assert torch.equal(clean["label_true"], noisy["label_true"])
    assert sorted(p.name for p in (tmp_path / "dw" / "train" / "label").iterdir()) != []


def _hand_samples(count: int, seed: int) -> list[dict]:
    """``count`` samples of 4 x 4 px whose 'images' are logits over the 9 classes (the fake net passes
    them through): labels 0-2 with about a third wrong, unlabelled pixels in the noisy and the true map."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(count):
        truth = torch.randint(0, 3, (4, 4), generator=generator)
        wrong = torch.rand(4, 4, generator=generator) < 0.35
        label = torch.where(wrong, (truth + 1) % 3, truth)
        label[0, 0], truth[3, 3] = 255, 255
        sample = {"label": label, "label_true": truth}
        for m, spread in (("s1", 2.0), ("s2", 1.0)):
            logits = spread * torch.randn(9, 4, 4, generator=generator)
            sample[m] = logits + 2.5 * torch.nn.functional.one_hot(truth.clamp(max=2), 9).permute(2, 0, 1)
        samples.append(sample)
    return samples


@pytest.mark.parametrize("enhance", [True, False])
def test_measure_noise_detection_is_sklearns_auc_and_ap_of_one_minus_w_l(monkeypatch, enhance):
    """Every pixel of train + val, W_l per batch of the run's batch size at alpha0 (numpy reference of eqs.
    8, 10, 11), wrong labels as positives: the AUC and AP are sklearn's on those scores."""
    from noise_reference import noise_auc

    import cromss.data
    import cromss.weights
    from cromss.experiments import measure_noise_detection

    splits = {"train": _hand_samples(3, seed=1), "val": _hand_samples(1, seed=2)}
    config = {"name": "hand", "data": {"kind": "nol", "root": "unused", "batch_size": 2},
              "model": {"encoder": "resnet18", "fusion": "mid", "modalities": ["s1", "s2"], "num_classes": 9},
              "method": {"alpha0": 0.4, "enhance": True}}
    monkeypatch.setattr(cromss.weights, "load_cromss_net", lambda run: (lambda inputs: dict(inputs), config))
    monkeypatch.setattr(cromss.data, "build_dataset", lambda cfg, split, train: splits[split])
    result = measure_noise_detection("unused-run", enhance=enhance)

    def batches():  # the run's batch size 2: train [2 + 1 samples], val [1]
        for samples in (splits["train"][:2], splits["train"][2:], splits["val"]):
            probs = {m: torch.stack([s[m] for s in samples]).softmax(1).numpy() for m in ("s1", "s2")}
            yield (probs, torch.stack([s["label"] for s in samples]).numpy(),
                   torch.stack([s["label_true"] for s in samples]).numpy())

    expected = noise_auc(batches(), alpha=0.4, enhance=enhance)
    assert result["alpha"] == 0.4 and result["enhance"] is enhance
    assert result["pixels"] == expected["s1"]["pixels"] == 4 * (16 - 2)
    assert result["noise_rate"] == pytest.approx(expected["s1"]["noise_rate"], abs=1e-12)
    for m in ("s1", "s2"):
        assert expected[m]["auc"] > 0.75, expected  # the flipped score (1 - AUC) cannot pass
        assert result["modalities"][m]["auc"] == pytest.approx(expected[m]["auc"], abs=1e-9), m
        assert result["modalities"][m]["ap"] == pytest.approx(expected[m]["ap"], abs=1e-9), m


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    torch.manual_seed(0)
    exp = tiny_experiment(tmp_path)
    result = run_experiment(exp, log=lambda _: None)
    assert result["cells"] == {"ran": 3, "skipped": 0}  # data, pretrain, one fine-tune seed
    root = tmp_path / "exp"
    noise = json.loads((root / "pretrain" / "noise40" / "CromSS-midF" / "noise_detection.json").read_text())
    info = json.loads((root / "data" / "noise40" / "info.json").read_text())
    # every pixel of every location and season is measured; its noise rate is the data's
    assert noise["pixels"] == 4 * 4 * 32 * 32
    assert noise["noise_rate"] == pytest.approx(info["noise_rate_measured"], abs=1e-9)
    # the AUC / AP of the run's final network, recomputed here (numpy W_l per batch of 2, sklearn)
    from noise_reference import noise_auc, run_batches

    run = root / "pretrain" / "noise40" / "CromSS-midF"
    expected = noise_auc(run_batches(run, ("train", "val"), 2, crop_size=None, eval_crop=None, eval_seasons="all",
                                     max_samples=None), alpha=noise["alpha"], enhance=True)
    assert noise["alpha"] == 0.5 and noise["enhance"] is True
    for modality in ("s1", "s2"):
        assert expected[modality]["pixels"] == noise["pixels"]
        assert noise["modalities"][modality]["auc"] == pytest.approx(expected[modality]["auc"], abs=1e-6)
        assert noise["modalities"][modality]["ap"] == pytest.approx(expected[modality]["ap"], abs=1e-6)

    # the table files exist and parse
    with open(root / "tiny.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["Inputs", "Weights", "Frozen OA"] and rows[0][-2:] == ["AUC(1−W_l)", "AP(1−W_l)"]
    assert rows[1][:2] == ["S2", "CromSS-midF"]
    oa = float(rows[1][2].split("±")[0])
    assert 0.0 <= oa <= 100.0
    assert float(rows[1][-2]) == pytest.approx(noise["modalities"]["s2"]["auc"], abs=5e-4)
    table = json.loads((root / "tiny.json").read_text())
    assert table["config"]["finetune"]["seeds"] == 1 and table["rows"][0]["frozen"]["seeds"] == [0]
    assert (root / "tiny.md").read_text().startswith("| Inputs | Weights |")

    # a second run skips every finished cell
    again = run_experiment(exp, log=lambda _: None)
    assert again["cells"] == {"ran": 0, "skipped": 3}

    # the CLI writes the table from finished cells
    from cromss.cli import experiment

    parser = argparse.ArgumentParser()
    experiment.register(parser.add_subparsers())
    config = tmp_path / "tiny.yaml"
    import yaml

    from cromss.config import to_dict
    config.write_text(yaml.safe_dump(to_dict(exp)))
    args = parser.parse_args(["experiment", "ablation", "--config", str(config), "--table-only"])
    assert args.func(args) == 0
    assert "CromSS-midF" in capsys.readouterr().out


def test_record_differences_tolerates_new_keys_at_none_only():
    from cromss.experiments import record_differences

    assert record_differences({"t": {"x": 1}}, {"t": {"x": 1, "added": None}}) == []
    assert record_differences({"t": {"x": 1}}, {"t": {"x": 2, "added": 3}}) == ["t.x", "t.added"]
    assert record_differences({"a": [1, 2]}, {"a": [1, 3]}) == ["a"]


@pytest.mark.over_budget(reason="`--workers 2`: two worker processes (each imports torch and Lightning) share "
                                "the data, pretraining and two fine-tuning cells")
def test_workers_run_each_cell_once(tmp_path, capfd):
    """--workers 2: two processes share one cell store; every cell runs exactly once, the table is whole."""
    import re

    import yaml

    from cromss.cli import experiment
    from cromss.config import to_dict

    exp = tiny_experiment(tmp_path)
    exp.finetune.seeds = 2
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(exp)))
    parser = argparse.ArgumentParser()
    experiment.register(parser.add_subparsers())
    args = parser.parse_args(["experiment", "ablation", "--config", str(config), "--workers", "2"])
    assert args.func(args) == 0
    out = capfd.readouterr().out
    ran = [int(n) for n in re.findall(r"cells: (\d+) run", out)]
    assert len(ran) == 2  # both workers finished
    assert sum(ran) == 4  # data, pretrain and two fine-tune seeds, each by one worker only
    assert "2 thread(s)" not in out and "1 thread(s)" in out  # threads=1 of the config wins
    table = json.loads((tmp_path / "exp" / "tiny.json").read_text())
    assert table["rows"][0]["frozen"]["seeds"] == [0, 1]
    assert not list((tmp_path / "exp").glob(".*.tmp"))

    from cromss.cli import main

    assert main(["experiment", "ablation", "--config", str(config), "--workers", "0"]) == 2
    assert "cromss: error: --workers 0: must be >= 1" in capfd.readouterr().err
