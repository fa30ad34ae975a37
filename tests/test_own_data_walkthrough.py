"""The walkthrough of docs/data.md ("Your own data", docs/examples/own-data.sh), command by command, on the
REAL Sen1Floods11 chip: tiles -> index -> pretrain -> export -> fine-tune -> evaluate -> map."""

from __future__ import annotations

import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from cromss.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "examples" / "own-data.sh"


def _commands(chip: Path) -> list[list[str]]:
    lines = []
    for line in SCRIPT.read_text().splitlines():
        if line.startswith(("cromss ", "python ")):
            line = line.replace("${CHIP}", str(chip)).replace("configs/", f"{REPO}/configs/")
            line = line.replace("docs/examples/", f"{REPO}/docs/examples/")
            lines.append(shlex.split(line))
    return lines


@pytest.mark.over_budget(reason="every command of docs/examples/own-data.sh on the real chip: tiles, index, "
                                "pretrain, export, fine-tune, evaluate, map")
def test_walkthrough_runs_on_the_real_chip(shared_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own-data").mkdir()
    chip = shared_dir / "data" / "sen1floods11" / "Spain_7370579"
    commands = _commands(chip)
    assert [c[1] for c in commands if c[0] == "cromss"][:4] == ["data", "data", "data", "pretrain"]
    for command in commands:
        if command[0] == "python":
            monkeypatch.setattr(sys, "argv", command[1:])
            runpy.run_path(command[1], run_name="__main__")
            continue
        assert main(command[1:]) == 0, command
    out = capsys.readouterr().out
    # the pretraining run scored its flagging of the NDWI label against the hand label
    summary = json.loads(Path("runs/own-data/floods-midf/summary.json").read_text())
    assert set(summary["noise_auc"]) == {"s1", "s2"}
    assert re.search(r"noise-detection ROC-AUC .*s2 0\.\d{3}", out)
    # the fine-tuned model was tested on the 4 test tiles with the user's 2 classes
    metrics = json.loads(Path("runs/own-data/finetune/floods-hand/cromss/finetuned/seed0/metrics.json").read_text())
    assert metrics["class_names"] == ["not_water", "water"]
    config = yaml.safe_load(Path("runs/own-data/finetune/floods-hand/cromss/finetuned/seed0/config.yaml").read_text())
    assert config["num_classes"] == 2
    # the map lies exactly on the chip's grid and uses the run's classes and colours
    with rasterio.open(f"{chip}_S2Hand.tif") as src, rasterio.open("own-data/floods-map.tif") as out_map:
        assert (out_map.crs, out_map.transform, out_map.shape) == (src.crs, src.transform, src.shape)
        values = np.unique(out_map.read(1))
        assert set(values.tolist()) <= {0, 1, 255}
        assert out_map.tags()["classes"] == "not_water,water"
        assert out_map.colormap(1)[1][:3] == (0x41, 0x9B, 0xDF)
