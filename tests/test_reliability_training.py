"""Training-loop reliability (issue 7): non-finite steps are skipped, checkpoints are atomic and resumable
after ``kill -9``, periodic epoch checkpoints, and a failing DDP rank fails the whole job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from fixtures import TINY_ENCODER

from cromss.checkpoints import safe_torch_load
from cromss.config import from_dict
from cromss.errors import ConfigError
from cromss.training import PretrainConfig

TINY_MODEL = {"encoder": TINY_ENCODER, "decoder_channels": [8, 8, 8, 8, 8]}
#: `cromss pretrain` with test-side fault-injection callbacks (nothing in cromss/ reads a test hook)
HOOKS = Path(__file__).resolve().parent / "helpers" / "pretrain_with_hooks.py"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo_root(nol_demo_32) -> Path:
    return nol_demo_32  # read-only, shared with other files (tests/fixtures.py)


def _config_dict(demo_root: Path, out: Path, **trainer) -> dict:
    return {
        "name": "tiny",
        "seed": 5,
        "output_dir": str(out),
        "data": {
            "kind": "nol",
            "root": str(demo_root),
            "crop_size": 32,
            "batch_size": 2,
            "val_fraction": 0.34,
            "eval_seasons": "first",
            "num_workers": 0,
        },
        "model": TINY_MODEL,
        "method": {"rampup_epochs": 2},
        "optim": {"lr": 1e-2, "patience": 0},
        "trainer": {
            "max_epochs": 3,
            "limit_train_batches": 2,
            "progress_bar": False,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "accelerator": "cpu",
            "devices": 1,
            **trainer,
        },
    }


# ----------------------------------------------------------------------------- non-finite steps
class _PoisonedBatches(torch.utils.data.Dataset):
    """Wraps a dataset: sample ``poison`` gets NaN S1 input (bypassing the readers' masking)."""

    def __init__(self, base, poison: set[int]) -> None:
        self.base, self.poison = base, poison

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        sample = dict(self.base[index])
        if index in self.poison:
            sample["s1"] = torch.full_like(sample["s1"], float("nan"))
        return sample


def test_nan_batch_skips_the_optimizer_step_and_keeps_weights(demo_root, tmp_path):
    import lightning as L

    from cromss.data import build_dataset
    from cromss.training.module import CromSSModule

    cfg = from_dict(PretrainConfig, _config_dict(demo_root, tmp_path))
    torch.manual_seed(0)
    module = CromSSModule(cfg)
    base = build_dataset(cfg.data, "train", train=False)
    # batch 0 is clean, batch 1 is poisoned (NaN input -> NaN logits -> NaN loss)
    loader = torch.utils.data.DataLoader(_PoisonedBatches(base, {2, 3}), batch_size=2, shuffle=False)
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[Snapshot()],
        enable_model_summary=False,
    )
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    with pytest.warns(UserWarning, match=r"non-finite loss .*optimizer step skipped"):
        trainer.fit(module, train_dataloaders=loader)
    assert len(snapshots) == 2
    changed = [k for k in before if k.endswith(".weight") and not torch.equal(before[k], snapshots[0][k])]
    assert changed, "the clean batch must update the weights"
    for key, value in snapshots[0].items():  # parameters AND BatchNorm buffers
        assert torch.equal(value, snapshots[1][key]), f"{key} changed by the NaN batch"
    assert all(torch.isfinite(v).all() for v in snapshots[1].values() if v.is_floating_point())
    assert module.skipped_steps == 1
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0


# ----------------------------------------------------------------------------- periodic checkpoints
def test_checkpoint_every_n_epochs_config_is_validated():
    with pytest.raises(ConfigError, match=r"trainer\.checkpoint_every_n_epochs"):
        from_dict(PretrainConfig, {"trainer": {"checkpoint_every_n_epochs": 0}})
    cfg = from_dict(PretrainConfig, {"trainer": {"checkpoint_every_n_epochs": 5}})
    assert cfg.trainer.checkpoint_every_n_epochs == 5
    assert from_dict(PretrainConfig, {}).trainer.checkpoint_every_n_epochs is None


def test_periodic_checkpoints_are_written_atomically(demo_root, tmp_path):
    from cromss.training import pretrain

    cfg = from_dict(
        PretrainConfig, _config_dict(demo_root, tmp_path, max_epochs=4, checkpoint_every_n_epochs=2)
    )
    summary = pretrain(cfg)
    folder = Path(summary["run_dir"]) / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best.ckpt", "epoch=1.ckpt", "epoch=3.ckpt", "last.ckpt"]  # no *.tmp left behind
    assert safe_torch_load(folder / "epoch=1.ckpt")["epoch"] == 1
    assert safe_torch_load(folder / "epoch=3.ckpt")["epoch"] == 3


# ----------------------------------------------------------------------------- kill -9 and resume
def _run_cli(config: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cromss", "pretrain", "--config", str(config), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for key in ("LOCAL_RANK", "MASTER_PORT"):  # Lightning picks a free port itself
        env.pop(key, None)
    return env


def _checkpoint_epoch(path: Path) -> int:
    try:
        return int(safe_torch_load(path).get("epoch", -1))
    except Exception:  # noqa: BLE001 - not yet written
        return -1


@pytest.mark.over_budget(reason="three `python -m cromss pretrain` processes (killed, resumed, straight)")
@pytest.mark.slow
def test_kill_9_then_resume_equals_uninterrupted_run(demo_root, tmp_path):
    """SIGKILL once last.ckpt of epoch >= 1 exists, rerun with --resume: same summary and weights."""
    # 8 epochs of the tiny network: the kill lands well before the killed launch could finish
    straight_cfg = _config_dict(demo_root, tmp_path / "straight", max_epochs=8)
    killed_cfg = _config_dict(demo_root, tmp_path / "killed", max_epochs=8)
    paths = {}
    for name, data in (("straight", straight_cfg), ("killed", killed_cfg)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(data))

    last = tmp_path / "killed" / "tiny" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "cromss", "pretrain", "--config", str(paths["killed"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 150
        while _checkpoint_epoch(last) < 1:
            assert process.poll() is None, (
                f"run ended before the kill: {process.stderr.read().decode()[-2000:]}"
            )
            assert time.monotonic() < deadline, "no checkpoint of epoch >= 1 in time"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed_at = _checkpoint_epoch(last)
    assert 1 <= killed_at < 7, f"killed after epoch {killed_at}: the resume would have nothing to do"
    assert not (tmp_path / "killed" / "tiny" / "summary.json").exists()

    resumed = _run_cli(paths["killed"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _run_cli(paths["straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    # the CLI keeps third-party noise that is not about the run off the console
    console = straight.stdout + straight.stderr
    assert "litlogger" not in console and "LeafSpec" not in console
    assert "run folder:" in console

    a = json.loads((tmp_path / "straight" / "tiny" / "summary.json").read_text())
    b = json.loads((tmp_path / "killed" / "tiny" / "summary.json").read_text())
    assert (a["epochs"], a["global_step"]) == (b["epochs"], b["global_step"]) == (8, 16)
    for key, value in a["metrics"].items():
        if value is not None and "time" not in key and "_ms" not in key:
            assert b["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert a["best_val_loss"] == pytest.approx(b["best_val_loss"], rel=1e-6)
    weights_a = safe_torch_load(tmp_path / "straight" / "tiny" / "checkpoints" / "last.ckpt")["state_dict"]
    weights_b = safe_torch_load(last)["state_dict"]
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-5, atol=1e-6, msg=key)


# ----------------------------------------------------------------------------- DDP failures
@pytest.mark.over_budget(reason="a 2-rank DDP launch: two interpreters and the gloo start-up")
@pytest.mark.xdist_group("ddp")
@pytest.mark.slow
def test_ddp_rank_failure_fails_the_job_with_its_message(demo_root, tmp_path):
    """2-process gloo DDP; rank 1 raises (test-side callback of tests/helpers/pretrain_with_hooks.py, through
    the CLI's own code path): non-zero exit, message shown."""
    config = _config_dict(demo_root, tmp_path / "runs", max_epochs=2)
    config["trainer"].update(devices=2, strategy="ddp")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(HOOKS), "--fail-rank", "1", "--fail-step", "1", "--", "pretrain", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,  # DDP start-up alone takes a minute on a loaded 2-core machine
        cwd=tmp_path,
        env=_env(),
    )
    elapsed = time.monotonic() - started
    assert (
        result.returncode != 0
    )  # 2 (CromssError on both ranks) unless Lightning's observer kills rank 0 first
    assert "cromss: error: injected failure on rank 1 at step 1" in result.stderr, result.stderr[-3000:]
    assert elapsed < 300
    assert not (tmp_path / "runs" / "tiny" / "summary.json").exists()


@pytest.mark.parametrize("kind", ["truncated", "malicious"])
def test_resume_from_a_bad_last_checkpoint_is_refused(demo_root, tmp_path, capsys, kind):
    """--resume with a truncated or code-pickling last.ckpt: exit 2, one line naming the file, nothing run."""
    from cromss.cli import main as cli_main

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(_config_dict(demo_root, tmp_path / "runs")))
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    if kind == "truncated":
        torch.save({"epoch": 1, "state_dict": {"w": torch.randn(1000)}}, last)
        last.write_bytes(last.read_bytes()[:500])
    else:

        class Payload:
            def __reduce__(self):
                return (Path.touch, (marker,))

        torch.save({"epoch": 1, "loops": Payload()}, last)
    status = cli_main(["pretrain", "--config", str(config), "--resume"])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "last.ckpt" in err and "Traceback" not in err
    assert ("refused to load" in err) == (kind == "malicious")
    assert not marker.exists()
