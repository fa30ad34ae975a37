"""Host synchronisations of the pretraining step (issue 23): counted in a REAL step (``pretrain()``, a
Lightning fit on CPU) with cromss.training.syncs.HostSyncCounter; <= 1 per step, and 0 made by cromss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cromss.config import from_dict
from cromss.training import PretrainConfig
from cromss.training.syncs import HostSyncCounter


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=6, size=32, dw_train=1, dw_test=1, seed=11, layouts=("geotiff",))
    return out / "nol"


def _config(root: Path, out: Path, **trainer) -> PretrainConfig:
    return from_dict(PretrainConfig, {
        "name": "syncs", "seed": 5, "output_dir": str(out),
        "data": {"kind": "nol", "root": str(root), "crop_size": 32, "batch_size": 2, "val_fraction": 0.34,
                 "eval_seasons": "first", "num_workers": 0},
        "model": {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "method": {"rampup_epochs": 2},  # spatial-temporal smoothing, selection, consistency: the full method
        "trainer": {"max_epochs": 1, "progress_bar": False, "num_sanity_val_steps": 0, "accelerator": "cpu",
                    "devices": 1, **trainer},
    })


def test_counter_sees_each_kind_of_sync():
    """The instrument itself: every kind it claims to count is counted, once, and plain math is not."""
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        y = (x * 2).sum()                      # device math: nothing
        bool(y > 0), float(y), y.item(), x.tolist(), f"{y:g}"      # 5 conversions
        x[x > 2], x.nonzero(), torch.bincount(x.long())            # 3 implicit syncs
        torch.tensor(0.5, device="cpu")                            # 1 upload
        torch.where(x > 2, x, 0.0), x[torch.tensor([0, 1])]         # fixed-shape: nothing
    kinds = [(e.kind, e.name) for e in counter.events]
    assert kinds == [("conversion", "__bool__"), ("conversion", "__float__"), ("conversion", "item"),
                     ("conversion", "tolist"), ("conversion", "__format__"),
                     ("implicit", "__getitem__[bool mask]"), ("implicit", "nonzero"), ("implicit", "bincount"),
                     ("upload", "tensor(device=)")]
    assert {e.origin for e in counter.events} == {"other"}  # called from this test, not from cromss


def test_validate_flags_are_the_only_host_reads_of_the_method():
    """selection_weights / smooth_labels: the public default checks the values (host reads), the training
    step's validate=False reads nothing back."""
    from cromss.selection import selection_weights
    from cromss.smoothing import smooth_labels

    g = torch.Generator().manual_seed(0)
    probs = {m: torch.softmax(torch.randn(2, 4, 8, 8, generator=g), 1) for m in ("s1", "s2")}
    labels_all = torch.randint(0, 4, (2, 3, 8, 8), generator=g)
    season = torch.tensor([0, 2])
    counts = []
    for validate in (True, False):
        with HostSyncCounter() as counter:
            smooth_labels(labels_all, season, 4, 0.05, 0.15, validate=validate)
            selection_weights(probs, labels_all[:, 0], 0.5, 0.5, 4, 255, validate=validate)
        counts.append([e for e in counter.events if e.origin == "cromss"])
    assert len(counts[0]) >= 3 and {e.name for e in counts[0]} == {"__bool__"}
    assert counts[1] == []


@pytest.mark.parametrize("trainer", [{}, {"log_every_n_steps": 1, "precision": "bf16-mixed", "gradient_clip_val": 1.0}],
                         ids=["defaults", "log-every-step-bf16-clip"])
def test_real_training_step_has_at_most_one_host_conversion(demo_root, tmp_path, trainer):
    from cromss.training import pretrain

    torch.set_num_threads(1)
    counter = HostSyncCounter()
    with counter:
        summary = pretrain(_config(demo_root, tmp_path, **trainer), callbacks=[counter.window()])
    assert counter.steps == summary["global_step"] == 2  # 4 training samples, batch 2
    # the windows were observed: preprocessing ran in 'transfer', forward/backward/Adam in 'step'
    assert counter.calls["transfer"] > 20 and counter.calls["step"] > 500
    calls = counter.summary()["calls"]
    assert counter.per_step("cromss") == 0, calls  # preprocessing, smoothing, selection, losses, skip, logging
    assert counter.per_step() <= 1, calls  # the bound, Lightning's own calls in the step included
    # Lightning's logging after each step: nothing with the defaults (log_every_n_steps 50, no progress bar);
    # with log_every_n_steps 1 one item per logged step value (loss, 4 terms, alpha, gamma, lr, selection_ms)
    between = counter.between_per_step()
    assert between == (0 if not trainer else 9), between
