"""The non-finite-loss skip, decided on the device (issues 23, 24).

* across 2 gloo DDP ranks: one rank's loss is NaN at a known step; every rank skips that optimizer step
  (weights, Adam step count and BatchNorm statistics unchanged, weights equal across ranks), the warning
  names the step and the rank, and training continues;
* in each precision path: fused Adam with ``found_inf`` (bf16-mixed, with gradient clipping), and
  GradScaler (16-mixed) with the fused and, for gradient clipping, the plain Adam.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers.nan_skip_worker import Samples

WORKER = Path(__file__).resolve().parent / "helpers" / "nan_skip_worker.py"
POISON_STEP = 1  # as in the worker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nan_on_one_rank_skips_the_step_on_both(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               NODE_RANK="0", WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path)], env=dict(env, LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [run["rank"] for run in runs] == [0, 1] and runs[0]["world_size"] == 2

    for run in runs:
        states = run["states"]  # [before training, after step 0, after step 1 (poisoned), after step 2]
        assert [s["global_step"] for s in states] == [0, 1, 2, 3]
        before, poisoned = states[POISON_STEP], states[POISON_STEP + 1]
        # the clean step 0 trained: weights moved, Adam counted one step
        assert any(not torch.equal(states[0]["params"][k], before["params"][k]) for k in before["params"])
        assert before["adam_steps"] == [1.0]
        # the poisoned step: no parameter and no Adam step count moved on either rank
        for key, value in before["params"].items():
            assert torch.equal(value, poisoned["params"][key]), (run["rank"], key)
        assert poisoned["adam_steps"] == [1.0]
        # nor the BatchNorm statistics: DDP broadcasts rank 0's buffers at the start of every forward, so
        # after the skipped step every rank holds rank 0's buffers from before it (not NaN, not updated)
        for key, value in runs[0]["states"][POISON_STEP]["buffers"].items():
            assert torch.equal(value, poisoned["buffers"][key]), (run["rank"], key)
        # training continued after it, with finite weights
        after = states[POISON_STEP + 2]
        assert any(not torch.equal(poisoned["params"][k], after["params"][k]) for k in after["params"])
        assert after["adam_steps"] == [2.0]
        assert all(torch.isfinite(v).all() for v in after["params"].values())
        assert run["skipped_steps"] == 1
    # DDP keeps the weights identical on both ranks at every step
    for step in range(4):
        for key, value in runs[0]["states"][step]["params"].items():
            assert torch.equal(value, runs[1]["states"][step]["params"][key]), (step, key)
    # one warning per epoch, on rank 0 only, naming the global step and the rank whose loss was NaN
    assert len(runs[0]["warnings"]) == 1 and runs[1]["warnings"] == []
    assert f"in 1 of 3 training steps of epoch 0 at global step {POISON_STEP} (rank 1)" in runs[0]["warnings"][0]


def _scaler_plugin():
    from lightning.pytorch.plugins import MixedPrecision

    # GradScaler on the CPU: the same skip path as 16-mixed on a GPU
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))


@pytest.mark.parametrize(("precision", "clip", "mode", "fused"), [
    ("bf16-mixed", 1.0, "found_inf", True),
    ("grad-scaler", None, "scaler", True),
    ("grad-scaler", 1.0, "scaler", False),
], ids=["bf16-clip", "16-mixed-scaler-fused", "16-mixed-scaler-clip"])
def test_each_precision_path_skips_a_nan_step(tmp_path, precision, clip, mode, fused):
    from cromss.config import from_dict
    from cromss.training import PretrainConfig
    from cromss.training.module import CromSSModule

    torch.set_num_threads(1)
    cfg = from_dict(PretrainConfig, {
        "data": {"kind": "nol", "root": str(tmp_path), "crop_size": 32, "batch_size": 2},
        "model": {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "method": {"rampup_epochs": 1}, "optim": {"lr": 1e-2, "scheduler": "none"},
    })
    torch.manual_seed(0)
    module = CromSSModule(cfg)
    states = []

    class Poison(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == POISON_STEP:
                batch["s2"][0, 0, 0, 0] = float("inf")  # one pixel of one band: the loss becomes NaN

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            optimizer = trainer.optimizers[0]
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            states.append((
                {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                sorted({float(optimizer.state[p]["step"]) for p in pl_module.parameters() if p in optimizer.state}),
                float(scaler.get_scale()) if scaler is not None else None,
            ))

    kwargs = {"plugins": [_scaler_plugin()]} if precision == "grad-scaler" else {"precision": precision}
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=3, gradient_clip_val=clip,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Poison(), Record()], **kwargs)
    with pytest.warns(UserWarning, match=r"non-finite loss .* at global step 1 \(rank 0\): optimizer step skipped"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(Samples(), batch_size=2))
    assert module.skip_mode == mode and trainer.optimizers[0].param_groups[0]["fused"] is fused
    (clean, steps0, scale0), (poisoned, steps1, scale1), (after, steps2, _) = states
    for key, value in clean.items():  # parameters AND BatchNorm buffers
        assert torch.equal(value, poisoned[key]), key
    assert steps0 == steps1 == [1.0] and steps2 == [2.0]
    assert any(not torch.equal(poisoned[k], after[k]) for k in after if k.endswith(".weight"))
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert module.skipped_steps == 1
    if mode == "scaler":  # GradScaler saw the (poisoned) non-finite gradients: it halved its scale
        assert scale1 == scale0 / 2
