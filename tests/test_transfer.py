"""Tests of cromss.transfer: frozen encoders, configs, tables, evaluation and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cromss.config import from_dict
from cromss.errors import CheckpointError, ConfigError, DataError
from cromss.transfer import (
    FinetuneConfig,
    build_module,
    build_segmentation_model,
    load_finetune_config,
    pad_to_multiple,
    table_rows,
    write_table,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tiny_cfg(**overrides) -> FinetuneConfig:
    base = {
        "name": "t", "framework": "deeplabv3plus", "encoder": "resnet18", "modality": "s2",
        "data": {"kind": "dw", "root": "unused", "val_fraction": 0.25},
        "seeds": 1, "epochs": 1,
    }
    base.update(overrides)
    return from_dict(FinetuneConfig, base)


class _Batches(torch.utils.data.Dataset):
    """Random 13-band 64 px samples with DW labels and an unlabeled corner."""

    def __init__(self, count: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.rand(count, 13, 64, 64, generator=generator)
        self.labels = torch.randint(0, 9, (count, 64, 64), generator=generator)
        self.labels[:, :8, :8] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"s2": self.images[index], "label": self.labels[index]}


def _fit_two_steps(frozen: bool) -> tuple[dict, dict, dict, dict]:
    """Encoder and decoder state before and after 2 training steps (validation run in between)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = build_module(_tiny_cfg(frozen=frozen, framework="pspnet"))  # the cheapest decoder
    encoder_before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in module.model.decoder.state_dict().items()}
    loader = torch.utils.data.DataLoader(_Batches(4, seed=1), batch_size=2)
    trainer = pl.Trainer(
        max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, val_check_interval=1,
        limit_val_batches=1, num_sanity_val_steps=1,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 2
    return (encoder_before, module.model.encoder.state_dict(),
            decoder_before, module.model.decoder.state_dict())


def test_frozen_encoder_is_bitwise_unchanged_and_finetuned_changes() -> None:
    enc_before, enc_after, dec_before, dec_after = _fit_two_steps(frozen=True)
    assert enc_before.keys() == enc_after.keys()
    assert any("running_mean" in k for k in enc_before)  # BN buffers are part of the check
    for key, value in enc_before.items():
        assert torch.equal(value, enc_after[key]), f"frozen encoder tensor {key} changed"
    assert any(not torch.equal(v, dec_after[k]) for k, v in dec_before.items()), "decoder did not train"

    enc_before, enc_after, _, _ = _fit_two_steps(frozen=False)
    changed = [k for k, v in enc_before.items() if not torch.equal(v, enc_after[k])]
    assert "conv1.weight" in changed
    assert "bn1.running_mean" in changed  # fine-tuning updates BN statistics too


@pytest.mark.parametrize("framework", ["pspnet", "deeplabv3plus", "fpn", "unet", "upernet"])
def test_frameworks_take_full_resnet_encoder_weights_and_odd_sizes(framework: str) -> None:
    torch.manual_seed(0)
    module = build_module(_tiny_cfg(framework=framework, modality="s1"))
    donor = build_segmentation_model("unet", "resnet18", in_channels=2, num_classes=4)
    module.model.encoder.load_state_dict(donor.encoder.state_dict(), strict=True)  # PSPNet depth 3 too
    module.eval()
    with torch.no_grad():
        logits = module(torch.rand(1, 2, 50, 70))  # not a multiple of 32: padded then cropped
    assert logits.shape == (1, 9, 50, 70)


def test_pad_to_multiple() -> None:
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(1, 2, 5, 6)
    padded, size = pad_to_multiple(x, 4)
    assert padded.shape == (1, 2, 8, 8) and size == (5, 6)
    assert torch.equal(padded[..., :5, :6], x)
    same, _ = pad_to_multiple(padded, 4)
    assert same is padded


def test_config_validation_names_keys() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        _tiny_cfg(num_classes=5)
    with pytest.raises(ConfigError, match="data.kind"):
        _tiny_cfg(data={"kind": "nol", "root": "x"})
    with pytest.raises(ConfigError, match="framework"):
        _tiny_cfg(framework="segformer")
    with pytest.raises(ConfigError, match="seeds"):
        _tiny_cfg(seeds=[1, 1])
    cfg = _tiny_cfg(seeds=3, seed=5)
    assert cfg.seed_list == [5, 6, 7] and cfg.classes == 9 and cfg.in_channels == 13
    assert _tiny_cfg(seeds=[2, 9]).seed_list == [2, 9]
    assert _tiny_cfg(modality="s1").in_channels == 2


@pytest.mark.parametrize("name", ["dfc2020-pspnet", "dw-deeplabv3plus", "osm-fpn"])
def test_paper_configs_load(name: str) -> None:
    cfg = load_finetune_config(CONFIGS / "finetune" / f"{name}.yaml")
    assert cfg.lr == pytest.approx(5e-4) and cfg.epochs == 50 and cfg.encoder == "resnet50"
    expected = {"dfc2020-pspnet": ("pspnet", 32, None, 8), "dw-deeplabv3plus": ("deeplabv3plus", 56, 496, 9),
                "osm-fpn": ("fpn", 32, 480, 13)}[name]
    assert (cfg.framework, cfg.data.batch_size, cfg.data.crop_size, cfg.classes) == expected
    assert cfg.data.flip_p == 0.5 and cfg.data.rotate_p == 0.2


def test_pretrained_file_loads_into_encoder_and_mismatches_fail(tmp_path: Path) -> None:
    torch.manual_seed(3)
    donor = build_segmentation_model("unet", "resnet18", in_channels=13, num_classes=9).encoder
    state = {k: v for k, v in donor.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a timm/torchgeo-style file still has its classifier
    torch.save(state, tmp_path / "ssl4eo_resnet18_s2.pth")
    module = build_module(_tiny_cfg(weights=str(tmp_path / "ssl4eo_resnet18_s2.pth"), framework="pspnet"))
    for key, value in donor.state_dict().items():
        assert torch.equal(module.model.encoder.state_dict()[key], value), key
    assert module.cfg.label == "ssl4eo_resnet18_s2"

    with pytest.raises(CheckpointError, match="13"):  # 13-band weights, 2-band S1 model
        build_module(_tiny_cfg(weights=str(tmp_path / "ssl4eo_resnet18_s2.pth"), modality="s1"))
    with pytest.raises(CheckpointError, match="resnet"):  # resnet18 weights, resnet34 model
        build_module(_tiny_cfg(weights=str(tmp_path / "ssl4eo_resnet18_s2.pth"), encoder="resnet34"))
    bogus = tmp_path / "nothing.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        build_module(_tiny_cfg(weights=str(bogus)))


# ----------------------------------------------------------------------------- tables
def _write_metrics(root: Path, label: str, mode: str, seed: int, oa: float, aa: float, miou: float, mf1: float):
    run = root / "task" / label / mode / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(
        {"task": "task", "encoder_label": label, "mode": mode, "seed": seed,
         "oa": oa, "aa": aa, "miou": miou, "mf1": mf1}
    ))


def test_table_from_hand_made_runs(tmp_path: Path) -> None:
    # random / frozen: OA 0.50, 0.52, 0.54 -> mean 52.00, sample std 2.00 (in %)
    #                  AA 0.40, 0.40, 0.43 -> mean 41.00, std sqrt(((-1)^2+(-1)^2+2^2)/2)=sqrt(3)=1.73
    #                  mIoU 0.30, 0.31, 0.32 -> 31.00±1.00; mF1 0.40 x3 -> 40.00±0.00
    for seed, (oa, aa, miou) in enumerate([(0.50, 0.40, 0.30), (0.52, 0.40, 0.31), (0.54, 0.43, 0.32)]):
        _write_metrics(tmp_path, "random", "frozen", seed, oa, aa, miou, 0.40)
    # CromSS / finetuned: two seeds, OA 0.70 and 0.71 -> 70.50±0.71 (std = 0.01/sqrt(2) = 0.7071 %)
    _write_metrics(tmp_path, "CromSS", "finetuned", 0, 0.70, 0.60, 0.45, 0.55)
    _write_metrics(tmp_path, "CromSS", "finetuned", 1, 0.71, 0.60, 0.45, 0.56)

    header, rows = table_rows([str(tmp_path / "task" / "*")])
    assert header == ["Weights", "Frozen OA", "Frozen AA", "Frozen mIoU", "Frozen mF1",
                      "Fine-tuned OA", "Fine-tuned AA", "Fine-tuned mIoU", "Fine-tuned mF1"]
    rows_by_label = {row[0]: row[1:] for row in rows}
    assert rows_by_label["random"] == ["52.00±2.00", "41.00±1.73", "31.00±1.00", "40.00±0.00", "–", "–", "–", "–"]
    assert rows_by_label["CromSS"] == ["–", "–", "–", "–", "70.50±0.71", "60.00±0.00", "45.00±0.00", "55.50±0.71"]

    markdown = write_table([str(tmp_path)], tmp_path / "out" / "table")
    assert "| random | 52.00±2.00 | 41.00±1.73 |" in markdown
    assert (tmp_path / "out" / "table.md").read_text() == markdown
    csv_lines = (tmp_path / "out" / "table.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0].startswith("Weights,Frozen OA")
    assert "CromSS,–,–,–,–,70.50±0.71,60.00±0.00,45.00±0.00,55.50±0.71" in csv_lines


def test_table_cli_and_errors(tmp_path: Path, capsys) -> None:
    from cromss.cli import main

    _write_metrics(tmp_path, "random", "frozen", 0, 0.5, 0.5, 0.5, 0.5)
    assert main(["table", str(tmp_path / "task" / "random"), "--out", str(tmp_path / "t")]) == 0
    assert "50.00±0.00" in capsys.readouterr().out
    assert (tmp_path / "t.csv").is_file()
    assert main(["table", str(tmp_path / "missing*")]) == 2
    assert "no metrics.json" in capsys.readouterr().err
    with pytest.raises(DataError, match="no metrics.json"):
        table_rows([str(tmp_path / "nothing")])
    _write_metrics(tmp_path / "other", "random", "frozen", 0, 0.6, 0.6, 0.6, 0.6)
    with pytest.raises(DataError, match="appears twice"):  # two experiments must not be averaged
        table_rows([str(tmp_path / "task"), str(tmp_path / "other")])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def demo_dw(dw_demo_64) -> Path:
    return dw_demo_64  # read-only, shared with other files (tests/fixtures.py)


def test_end_to_end_finetune_evaluate_table(demo_dw: Path, tmp_path: Path, capsys) -> None:
    from cromss.cli import main

    torch.manual_seed(0)
    code = main([
        "finetune", "--config", str(CONFIGS / "demo" / "finetune-dw.yaml"), "--encoder", "random",
        "--seeds", "1", "--frozen", f"output_dir={tmp_path}", f"data.root={demo_dw}", "epochs=1",
        "encoder=resnet18", "trainer.enable_progress_bar=false", "data.batch_size=4",
    ])
    assert code == 0
    run = tmp_path / "demo-dw" / "random" / "frozen" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["oa"] <= 1.0 and metrics["frozen"] is True
    confusion = torch.tensor(metrics["confusion"])
    assert confusion.shape == (9, 9)
    assert math.isclose(metrics["oa"], int(confusion.trace()) / int(confusion.sum()), rel_tol=1e-12)
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    aggregate = json.loads((run.parent / "aggregate.json").read_text())
    assert aggregate["metrics"]["oa"]["mean"] == pytest.approx(metrics["oa"])

    out_json = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--data", str(demo_dw), "--out", str(out_json)]) == 0
    evaluated = json.loads(out_json.read_text())
    assert evaluated["confusion"] == metrics["confusion"]  # same checkpoint, same test set
    assert "mIoU" in capsys.readouterr().out

    assert main(["evaluate", str(tmp_path), "--data", str(demo_dw)]) == 2


def test_run_comparison_writes_table(demo_dw: Path, tmp_path: Path) -> None:
    from cromss.transfer import run_comparison

    torch.manual_seed(0)
    donor = build_segmentation_model("unet", "resnet18", in_channels=13, num_classes=9).encoder
    torch.save(donor.state_dict(), tmp_path / "donor.pth")
    cfg = load_finetune_config(CONFIGS / "demo" / "finetune-dw.yaml", [
        f"data.root={demo_dw}", "epochs=1", "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false",
    ])
    markdown = run_comparison(cfg, {"random": "random", "pre": str(tmp_path / "donor.pth")}, modality="s2",
                              seeds=1, out_dir=tmp_path / "cmp", modes=("frozen",))
    lines = markdown.splitlines()
    assert lines[0].startswith("| Weights | Frozen OA")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| random", "| pre"]
    assert (tmp_path / "cmp" / "demo-dw" / "table.csv").is_file()
    frozen_run = json.loads((tmp_path / "cmp" / "demo-dw" / "pre" / "frozen" / "seed0" / "metrics.json").read_text())
    assert frozen_run["weights_info"]["encoder"] == "resnet18"
