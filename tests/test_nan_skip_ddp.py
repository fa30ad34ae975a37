"""The non-finite-loss skip across 2 gloo DDP ranks (issue 24): one rank's loss is NaN at a known step;
every rank skips that optimizer step (weights, Adam step count and BatchNorm statistics unchanged, weights
equal across ranks), the warning names the step and the rank, and training continues."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

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
