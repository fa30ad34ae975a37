"""Two-process DDP pretraining on CPU (gloo), end to end through the CLI, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import TINY_ENCODER


@pytest.mark.over_budget(reason="a 2-rank DDP launch: two interpreters and the gloo start-up")
@pytest.mark.xdist_group("ddp")
@pytest.mark.slow
def test_two_process_ddp_pretraining(tmp_path: Path):
    from cromss.data.demo import make_demo

    make_demo(tmp_path / "demo", locations=6, size=64, dw_train=1, dw_test=1, seed=5, layouts=("geotiff",))
    config = {
        "name": "ddp", "seed": 1, "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "nol", "root": str(tmp_path / "demo" / "nol"), "crop_size": 32, "batch_size": 2,
                 "val_fraction": 0.34, "eval_seasons": "first"},
        "model": {"encoder": TINY_ENCODER, "decoder_channels": [16, 16, 8, 8, 8]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "progress_bar": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")  # Lightning picks a free MASTER_PORT
    env.pop("LOCAL_RANK", None)
    result = subprocess.run(
        [sys.executable, "-m", "cromss", "pretrain", "--config", str(path), "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.strategy=ddp"],
        capture_output=True, text=True, timeout=480, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["sync_selection"] is True  # default None -> on with more than one rank (issue 9)
    assert summary["epochs"] == 1 and summary["global_step"] == 1  # 4 train samples: 2 per rank = 1 batch
    assert set(summary["noise_auc"]) == {"s1", "s2"}
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert "noise-detection ROC-AUC" in result.stdout
