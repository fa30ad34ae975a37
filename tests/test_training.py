"""Pretraining: configs, the loss wiring of CromSSModule, run folders, resume and the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures import TINY_ENCODER

from cromss.config import load_config, read_yaml
from cromss.errors import ConfigError
from cromss.schema import IGNORE_INDEX
from cromss.training import MethodConfig, PretrainConfig

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))
DEMO_CONFIGS = sorted((ROOT / "configs" / "demo").glob("pretrain-*.yaml"))
TINY_MODEL = {"encoder": TINY_ENCODER, "decoder_channels": [16, 16, 8, 8, 8]}


@pytest.fixture(autouse=True)
def _one_thread():
    # the test machine is shared: one thread is faster than two under contention
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- configs
def test_every_paper_row_has_a_config():
    names = {p.stem for p in PAPER_CONFIGS}
    assert names >= {"cromss-midf-13b", "cromss-latef-13b", "cromss-midf-9b", "cromss-latef-9b", "midf-13b",
                     "latef-13b", "single-s1", "single-s2-13b"}
    assert {p.stem for p in DEMO_CONFIGS} >= {"pretrain-cromss-midf", "pretrain-cromss-latef"}


@pytest.mark.parametrize("path", PAPER_CONFIGS + DEMO_CONFIGS, ids=lambda p: p.stem)
def test_configs_load_and_match_their_row(path):
    cfg = load_config(PretrainConfig, path)
    assert cfg.name == (path.stem if path in PAPER_CONFIGS else "demo-" + path.stem.removeprefix("pretrain-"))
    stem = path.stem.removeprefix("pretrain-")
    assert cfg.method.selection == stem.startswith("cromss")
    if "single" in stem:
        assert cfg.model.fusion == "single" and len(cfg.model.modalities) == 1
        assert not cfg.method.consistency
    else:
        assert cfg.model.fusion == ("mid" if "midf" in stem else "late")
        assert cfg.method.consistency
    assert cfg.model.s2_bands == (9 if stem.endswith("9b") else 13)
    if path in PAPER_CONFIGS:
        assert (cfg.model.encoder, cfg.data.crop_size, cfg.data.batch_size) == ("resnet50", 256, 128)
        assert (cfg.trainer.max_epochs, cfg.trainer.devices, cfg.optim.lr) == (200, 4, 5e-3)
        assert (cfg.method.alpha0, cfg.method.rampup_epochs, cfg.method.mu, cfg.method.beta) == (0.5, 80, 0.15, 0.05)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["method.beta=0.9", "method.mu=0.2"], "method.beta"),
        (["method.alpha0=0"], "method.alpha0"),
        (["method.alpha0=1.5"], "method.alpha0"),
        (["method.smoothing=gaussian"], "method.smoothing"),
        (["method.dice=jaccard"], "method.dice"),
        (["model.num_classes=13"], "model.num_classes"),
        (["model.fusion=single"], "model."),
        (["model.fusion=single", "model.modalities=[s2]"], "data.modalities"),
        (["data.s2_bands=9"], "s2_bands"),
        (["optim.factor=2"], "optim.factor"),
        (["trainer.max_epochs=0"], "trainer.max_epochs"),
        (["method.selectoin=false"], "method.selectoin"),
        (["name=a/b"], "name"),
    ],
)
def test_impossible_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PretrainConfig, PAPER_CONFIGS[0], overrides)


def test_uniform_smoothing_forces_mu_to_zero():
    # beta + mu > 1 would be impossible for spatial_temporal, but uniform ignores mu
    method = MethodConfig(smoothing="uniform", mu=0.99, beta=0.05)
    method.validate()
    assert (method.effective_mu, method.effective_beta) == (0.0, 0.05)
    assert (MethodConfig(smoothing="none").effective_beta, MethodConfig(smoothing="none").effective_mu) == (0, 0)
    with pytest.raises(ConfigError, match="method.beta"):
        MethodConfig(smoothing="spatial_temporal", mu=0.99, beta=0.05).validate()


def test_one_hot_targets_by_hand():
    from cromss.training.module import one_hot_targets

    labels = torch.tensor([[[2, IGNORE_INDEX]]])  # [1, 1, 2]
    z = one_hot_targets(labels, num_classes=4, beta=0.2)
    # labelled pixel: 0.8 * one-hot + 0.2 / 4 = 0.85 at class 2, 0.05 elsewhere; ignored pixel: zeros
    assert torch.allclose(z[0, :, 0, 0], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    assert torch.equal(z[0, :, 0, 1], torch.zeros(4))


# ----------------------------------------------------------------------------- loss wiring
def _module(**overrides):
    from cromss.training.module import CromSSModule

    data = {"modalities": ["s1", "s2"]}
    model = dict(TINY_MODEL)
    if overrides.pop("single", False):
        data["modalities"] = model["modalities"] = ["s2"]
        model["fusion"] = "single"
    cfg = {"data": data, "model": model, "method": overrides}
    return CromSSModule(cfg)


def _fake_step(num_classes=9, batch=2, size=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = {m: torch.randn(batch, num_classes, size, size, generator=generator) for m in ("s1", "s2")}
    labels = torch.randint(0, num_classes, (batch, size, size), generator=generator)
    labels[0, 0, :2] = IGNORE_INDEX
    return logits, {m: v.softmax(1) for m, v in logits.items()}, labels


def test_consistency_term_uses_target_modality_entity_weights(monkeypatch):
    import cromss.training.module as module_mod

    module = _module(selection=True)
    logits, probs, labels = _fake_step()
    weights = module.weights(probs, labels, alpha=0.5, gamma=1.0, selection=True)
    calls = []

    def recording(student_logits, target_probs, w):
        calls.append((student_logits, target_probs, w))
        return torch.tensor(0.25)

    monkeypatch.setattr(module_mod, "consistency_loss", recording)
    total, terms = module.objective(logits, probs, module_mod.one_hot_targets(labels, 9), weights)
    assert len(calls) == 2
    for (student_logits, target_probs, w), (student, target) in zip(calls, [("s1", "s2"), ("s2", "s1")]):
        assert student_logits is logits[student]
        assert target_probs is probs[target]
        assert w is weights[target]["w_e"]  # Fig. 5: W_e of the TARGET modality
    assert set(terms) == {"seg_s1", "seg_s2", "cons_s1", "cons_s2"}
    assert torch.isclose(total, sum(terms.values()))


def test_ignored_pixels_get_zero_weight_everywhere():
    module = _module(selection=True)
    _, probs, labels = _fake_step()
    ignored = labels == IGNORE_INDEX
    for selection in (True, False):
        weights = module.weights(probs, labels, alpha=0.5, gamma=0.7, selection=selection)
        for m in ("s1", "s2"):
            assert torch.all(weights[m]["w_l"][ignored] == 0) and torch.all(weights[m]["w_e"][ignored] == 0)
            assert torch.all(weights[m]["w_l"][~ignored] > 0)
    plain = module.weights(probs, labels, alpha=0.5, gamma=0.7, selection=False)
    assert torch.equal(plain["s1"]["w_l"], (~ignored).float())


def test_plain_single_modal_loss_equals_cross_entropy_plus_dice():
    """selection off, smoothing none, one modality: L = CE (ignore_index) + 1 - 2 sum zq / sum (z + q)."""
    from cromss.training.module import one_hot_targets

    module = _module(single=True, selection=False, consistency=False, smoothing="none")
    logits, probs, labels = _fake_step()
    logits, probs = {"s2": logits["s2"]}, {"s2": probs["s2"]}
    weights = module.weights(probs, labels, 1.0, 0.0, selection=False)
    total, terms = module.objective(logits, probs, one_hot_targets(labels, 9), weights)
    assert set(terms) == {"seg_s2"}  # no consistency for a single modality
    cross_entropy = F.cross_entropy(logits["s2"], labels, ignore_index=IGNORE_INDEX)
    keep = labels != IGNORE_INDEX
    q = probs["s2"].permute(0, 2, 3, 1)[keep]  # [N, C]
    z = F.one_hot(labels[keep], 9).float()
    dice = 1 - 2 * (z * q).sum() / (z + q).sum()
    assert torch.allclose(total, cross_entropy + dice, atol=1e-5)


def test_selection_off_keeps_consistency_unweighted():
    module = _module(selection=False, consistency=True)
    logits, probs, labels = _fake_step()
    weights = module.weights(probs, labels, 0.5, 1.0, selection=False)
    _, terms = module.objective(logits, probs, probs["s1"], weights)
    keep = labels != IGNORE_INDEX
    # KL(p_s2 || q_s1) averaged over labelled pixels, by the textbook formula
    p, q = probs["s2"].permute(0, 2, 3, 1)[keep], probs["s1"].permute(0, 2, 3, 1)[keep]
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(terms["cons_s1"], expected, atol=1e-5)


def _hand_noise_batch():
    """Two 4 x 4 images, classes 0-2 of the 9: a true map, its noisy copy with 7 labels wrong, one pixel
    unlabelled in each map, and two modalities' softmax that mostly (not always) follow the true class."""
    generator = torch.Generator().manual_seed(5)
    truth = torch.randint(0, 3, (2, 4, 4), generator=generator)
    labels = truth.clone()
    wrong = [(0, 0, 1), (0, 1, 3), (0, 2, 2), (0, 3, 0), (1, 0, 0), (1, 2, 1), (1, 3, 2)]
    for index in wrong:
        labels[index] = (truth[index] + 1) % 3
    labels[0, 0, 0] = IGNORE_INDEX
    truth[1, 1, 1] = IGNORE_INDEX
    probs = {}
    for m, spread in (("s1", 2.0), ("s2", 1.0)):
        logits = spread * torch.randn(2, 9, 4, 4, generator=generator)
        logits += 2.5 * F.one_hot(truth.clamp(max=2), 9).permute(0, 3, 1, 2)
        probs[m] = logits.softmax(1)
    return probs, labels, truth


def test_noise_auc_of_validation_is_sklearns_roc_auc_of_one_minus_w_l(monkeypatch):
    """``val/noise_auc_*`` = sklearn's ROC-AUC of 1 - W_l (eqs. 8, 10, 11 at the ramped alpha, numpy
    reference) with the WRONG labels as positives: a sign flip or swapped classes gives 1 - AUC."""
    from types import SimpleNamespace

    from noise_reference import noise_scores, ramp_alpha
    from sklearn.metrics import roc_auc_score

    module = _module(selection=True, alpha0=0.5, rampup_epochs=4)
    module.trainer = SimpleNamespace(sanity_checking=False, current_epoch=1, world_size=1)  # 2nd epoch
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    probs, labels, truth = _hand_noise_batch()
    module._update_noise_auc(probs, labels, truth, batch_size=2)
    alpha = ramp_alpha(2.0, 0.5, 4)  # W_l at the end of the 2nd epoch: 1 - exp(-5 (1 - 2/4)^2) / 2
    assert alpha == pytest.approx(0.856747602, abs=1e-9)
    known = ((labels != IGNORE_INDEX) & (truth != IGNORE_INDEX)).numpy()
    noisy = (labels != truth).numpy()[known]
    assert int(known.sum()) == 30 and int(noisy.sum()) == 7
    scores = noise_scores({m: p.numpy() for m, p in probs.items()}, labels.numpy(), alpha)
    for m in ("s1", "s2"):
        expected = roc_auc_score(noisy, scores[m][known])
        assert expected > 0.75, (m, expected)  # so the flipped score (1 - AUC < 0.25) cannot pass
        assert float(module.val_noise_auc[m].compute()) == pytest.approx(expected, abs=1e-6), m


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=6, size=64, dw_train=1, dw_test=1, seed=3)
    return out / "nol"


def tiny_config(demo_root: Path, out: Path, **trainer) -> PretrainConfig:
    """A run that takes seconds: the tiny encoder at 32 px, 2 train batches per epoch."""
    from cromss.config import from_dict

    return from_dict(PretrainConfig, {
        "name": "tiny", "seed": 7, "output_dir": str(out),
        "data": {"kind": "nol", "root": str(demo_root), "crop_size": 32, "batch_size": 2, "val_fraction": 0.2,
                 "eval_seasons": "first"},
        "model": TINY_MODEL,
        "method": {"rampup_epochs": 2},
        # patience 0: the plateau scheduler halves the lr after every epoch whose val loss does not improve
        "optim": {"patience": 0, "lr": 1e-2},
        "trainer": {"max_epochs": 3, "limit_train_batches": 2, "progress_bar": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, **trainer},
    })


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def _lr_per_epoch(run: Path) -> list[tuple[int, float]]:
    """Every (epoch, train/lr) pair of metrics.csv, sorted: one lr per epoch when the scheduler steps at its end.
    Lightning logs the lr as a float32 tensor, so the values are the float32 numbers nearest 1e-2, 5e-3."""
    return sorted({(int(float(r["epoch"])), float(r["train/lr"])) for r in _rows(run) if r.get("train/lr")})


LR_PER_EPOCH = [(0, float(np.float32(1e-2))), (1, float(np.float32(1e-2))), (2, float(np.float32(5e-3)))]


def _epoch_values(run: Path, key: str) -> dict[int, float]:
    return {int(float(r["epoch"])): float(r[key]) for r in _rows(run) if r.get(key)}


@pytest.mark.slow
def test_run_folder_and_resume_equal_uninterrupted_run(demo_root, tmp_path, capsys, monkeypatch):
    from noise_reference import noise_auc, ramp_alpha, run_batches

    from cromss.training import pretrain

    # The plateau scheduler is fed a validation loss that never improves (a constant): with patience 0 it
    # halves the lr after the 2nd and the 3rd epoch. The run is interrupted after 2 epochs: the resumed
    # epoch needs the restored optimizer (lr 5e-3) and the restored scheduler (its best, else no halving).
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    real_step = plateau.step
    monkeypatch.setattr(plateau, "step", lambda self, metrics, *args, **kwargs: real_step(self, 1.0))
    straight = pretrain(tiny_config(demo_root, tmp_path / "a"))
    run = Path(straight["run_dir"])
    # run folder layout
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["world_size"] == 1 and summary["sync_selection"] is False
    # the last validation's noise AUC, recomputed from last.ckpt on the validation split (one location, first
    # season: one batch) at alpha(3 epochs) = alpha0 = 0.5 with the numpy W_l: the run logs the AUC binned at
    # 1001 thresholds (torchmetrics here too), within binning of sklearn's exact one
    expected = noise_auc(run_batches(run, ("val",), 2), alpha=ramp_alpha(3, 0.5, 2))
    assert set(summary["noise_auc"]) == {"s1", "s2"}
    for m in ("s1", "s2"):
        assert summary["noise_auc"][m] == pytest.approx(expected[m]["auc_1001"], abs=1e-5), m
        assert summary["noise_auc"][m] == pytest.approx(expected[m]["auc"], abs=5e-3), m
    assert "noise-detection ROC-AUC" in capsys.readouterr().out
    assert read_yaml(run / "config.yaml")["trainer"]["precision"] == "32-true"  # 'auto' resolved on CPU
    checkpoint = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith("net.") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["config"] == read_yaml(run / "config.yaml")
    header = _rows(run)[0].keys()
    for key in ("train/loss_epoch", "train/alpha", "train/gamma", "train/lr", "train/selection_ms_step",
                "val/loss", "val/miou_noisy_s1", "val/miou_true_s2", "val/noise_auc_s2", "train/w_l_s1/water",
                "train/w_e_s2/water"):
        assert key in header, key
    assert _lr_per_epoch(run) == LR_PER_EPOCH

    # interrupted after two epochs, then resumed for the third
    interrupted = tiny_config(demo_root, tmp_path / "b", max_epochs=2)
    pretrain(interrupted)
    with pytest.raises(ConfigError, match="--resume"):
        pretrain(interrupted)  # an existing run is not overwritten silently
    resumed = pretrain(tiny_config(demo_root, tmp_path / "b"), resume=True)
    assert resumed["epochs"] == 3
    final_a = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    final_b = torch.load(tmp_path / "b/tiny/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    for key, value in final_a["state_dict"].items():
        assert torch.equal(value, final_b["state_dict"][key]), key
    assert final_a["cromss_plateau_scheduler"] == final_b["cromss_plateau_scheduler"]
    assert final_a["cromss_plateau_scheduler"]["best"] == 1.0
    for final in (final_a, final_b):  # halved once more after the last epoch
        assert [group["lr"] for group in final["optimizer_states"][0]["param_groups"]] == [2.5e-3]
    assert _lr_per_epoch(tmp_path / "b/tiny") == LR_PER_EPOCH
    assert straight["best_val_loss"] == resumed["best_val_loss"]
    for key in ("val/loss", "val/noise_auc_s1", "train/loss_epoch"):
        assert _epoch_values(run, key) == _epoch_values(tmp_path / "b/tiny", key), key


def test_resume_without_checkpoint_is_refused(tmp_path):
    from cromss.training import pretrain

    with pytest.raises(ConfigError, match="no checkpoint"):
        pretrain(tiny_config(tmp_path, tmp_path / "runs"), resume=True)


# ----------------------------------------------------------------------------- CLI
def test_cli_print_config_resolves_auto(capsys):
    from cromss.cli import main

    code = main(["pretrain", "--config", str(ROOT / "configs/pretrain/cromss-midf-13b.yaml"), "--print-config",
                 "trainer.accelerator=cpu", "method.alpha0=0.4"])
    assert code == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "32-true" and printed["trainer"]["channels_last"] is False
    assert printed["method"]["alpha0"] == 0.4


def test_cli_reports_config_errors(capsys):
    from cromss.cli import main

    code = main(["pretrain", "--config", str(ROOT / "configs/pretrain/cromss-midf-13b.yaml"), "method.beta=2"])
    assert code == 2
    assert "method.beta" in capsys.readouterr().err
