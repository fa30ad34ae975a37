"""Without a progress bar (not a terminal, or trainer.progress_bar: false): one line per epoch and a summary
with the next commands (issue 23)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cromss.config import from_dict
from cromss.training import PretrainConfig
from cromss.training.console import EpochConsole, finetune_columns, format_duration, pretrain_columns


def test_format_duration():
    assert [format_duration(s) for s in (4.26, 59.94, 445, 7505)] == ["4.3 s", "59.9 s", "7 min 25 s", "2 h 05 min"]


def test_epoch_line_from_hand_values():
    lines: list[str] = []
    console = EpochConsole(pretrain_columns(["s1", "s2"]), ("train/loss", "val/loss"), monitor="val/loss",
                           printer=lines.append)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=40, sanity_checking=False, is_global_zero=True,
                              callback_metrics={})
    epochs = [  # (seconds, metrics)
        (12.0, {"train/loss_epoch": torch.tensor(1.2144), "val/loss": torch.tensor(1.3051),
                "val/miou_noisy_s1": torch.tensor(0.2144), "val/miou_noisy_s2": torch.tensor(0.302),
                "val/noise_auc_s1": torch.tensor(0.7019), "val/noise_auc_s2": torch.tensor(0.78149)}),
        (10.0, {"train/loss_epoch": torch.tensor(1.1), "val/loss": torch.tensor(1.4),
                "val/miou_noisy_s1": torch.tensor(0.25), "val/miou_noisy_s2": torch.tensor(0.31),
                "train/skipped_steps": torch.tensor(2.0)}),
    ]
    for epoch, (seconds, metrics) in enumerate(epochs):
        trainer.current_epoch, trainer.callback_metrics = epoch, metrics
        console.on_validation_end(trainer, None)
        console._epoch_seconds.append(seconds)
        lines.append(console.line(trainer, {k: float(v) for k, v in metrics.items()}, seconds))
    assert lines[0] == ("epoch 1/40  loss 1.214 (val 1.305 *)  mIoU noisy s1 21.4 s2 30.2  "
                        "noise AUC s1 0.702 s2 0.781  12.0 s  ETA 7 min 48 s")  # 39 x 12 s
    # not better: no star; absent groups (true mIoU, AUC) left out; ETA from the mean of the epochs so far
    assert lines[1] == ("epoch 2/40  loss 1.100 (val 1.400)  mIoU noisy s1 25.0 s2 31.0  skipped steps 2  10.0 s  "
                        "ETA 6 min 58 s")  # 38 x 11 s
    assert console.best == (0, pytest.approx(1.3051))


def test_finetune_line_without_validation_this_epoch():
    console = EpochConsole(finetune_columns(), ("train_loss", "val_loss"), monitor="val_miou", mode="max",
                           printer=lambda _: None, prefix="cromss finetuned seed 0: ")
    trainer = SimpleNamespace(current_epoch=4, max_epochs=5, sanity_checking=False)
    line = console.line(trainer, {"train_loss_epoch": 0.5, "val_loss": 0.7, "val_miou": 0.4}, 3.0)
    assert line == "cromss finetuned seed 0: epoch 5/5  loss 0.500  3.0 s"  # no val values: validation did not run


def test_pretrain_prints_one_line_per_epoch_and_the_next_commands(tmp_path, capsys):
    from cromss.cli import main as cli_main
    from cromss.data.demo import make_demo
    from cromss.training import pretrain

    torch.set_num_threads(1)
    make_demo(tmp_path / "demo", locations=6, size=32, dw_train=1, dw_test=1, seed=11, layouts=("geotiff",))
    cfg = from_dict(PretrainConfig, {
        "name": "console", "seed": 5, "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "nol", "root": str(tmp_path / "demo" / "nol"), "crop_size": 32, "batch_size": 2,
                 "val_fraction": 0.34, "eval_seasons": "first"},
        "model": {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 2, "limit_train_batches": 1, "progress_bar": True,  # pytest's stdout: no TTY
                    "num_sanity_val_steps": 0, "accelerator": "cpu", "devices": 1},
    })
    summary = pretrain(cfg)
    out = capsys.readouterr().out.splitlines()
    run = Path(summary["run_dir"])
    epochs = [line for line in out if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    # the printed values are the epoch values of metrics.csv
    with (run / "metrics.csv").open() as handle:
        table = list(csv.DictReader(handle))
    rows = [r for r in table if r.get("val/loss")]
    train = [float(r["train/loss_epoch"]) for r in table if r.get("train/loss_epoch")]
    assert len(rows) == len(train) == 2
    for line, row, loss in zip(epochs, rows, train):
        assert line.split("  ")[1].startswith(f"loss {loss:.3f} (val ")
        assert f"(val {float(row['val/loss']):.3f}" in line
        assert f"true s1 {100 * float(row['val/miou_true_s1']):.1f} s2 {100 * float(row['val/miou_true_s2']):.1f}" in line
        assert f"noise AUC s1 {float(row['val/noise_auc_s1']):.3f}" in line
    assert re.search(r"  \d+\.\d s  ETA \d+\.\d s$", epochs[0]) and "ETA" not in epochs[1]
    best = min(range(2), key=lambda i: float(rows[i]["val/loss"]))
    assert (" *)" in epochs[best]) and (" *)" not in epochs[1 - best] or best == 0)
    tail = out[out.index(epochs[-1]) + 1:]
    assert tail[0].startswith("noise-detection ROC-AUC of 1 - W_l (validation): s1 ")
    assert tail[1].startswith(f"run folder: {run}  (best epoch {best + 1} (val loss ")
    assert summary["best_epoch"] == best
    export = f"  cromss export-encoder {run} --modality s2 {run / 's2-encoder.safetensors'}"
    assert tail[2:] == ["next:", export,
                        f"  cromss finetune --config configs/finetune/dw-deeplabv3plus.yaml --encoder {run} --modality s2"]
    # the printed command works as printed
    assert cli_main(export.split()[1:]) == 0 and (run / "s2-encoder.safetensors").is_file()
