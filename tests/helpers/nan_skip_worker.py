"""One rank of the 2-process gloo DDP test of the non-finite-loss skip (tests/test_nan_skip_ddp.py).

Launched twice by the test with LOCAL_RANK=0/1 (Lightning then takes the processes as launched
externally, no re-run of this script). A tiny CromSS model trains 3 steps on synthetic samples; a
test-side callback makes rank 1's input NaN at global step 1 (so only rank 1's loss is non-finite),
another records, after every optimizer step, the weights, BatchNorm buffers and Adam step count.
Writes ``<out>/rank<r>.pt``.

    python tests/helpers/nan_skip_worker.py OUT_DIR
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import lightning as L
import torch

POISON_RANK, POISON_STEP, STEPS, SIZE = 1, 1, 3, 32


class Samples(torch.utils.data.Dataset):
    """Already-normalised samples (no ``aug`` key: the batch preprocessing leaves them as they are)."""

    def __len__(self) -> int:
        return 2 * 2 * STEPS  # 2 ranks x batch 2 x STEPS

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        labels = torch.randint(0, 9, (4, SIZE, SIZE), generator=g)
        return {"s1": torch.rand(2, SIZE, SIZE, generator=g), "s2": torch.rand(13, SIZE, SIZE, generator=g),
                "label": labels[0], "labels_all_seasons": labels, "season": torch.tensor(0),
                "valid": torch.ones(SIZE, SIZE, dtype=torch.bool), "id": f"sample{index}"}


class PoisonOneRank(L.Callback):
    """Rank POISON_RANK's input becomes NaN at global step POISON_STEP: only its loss is non-finite."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == POISON_RANK and trainer.global_step == POISON_STEP:
            batch["s1"].fill_(float("nan"))


class Record(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict] = []

    def _snapshot(self, trainer, pl_module) -> dict:
        optimizer = trainer.optimizers[0]
        steps = [float(optimizer.state[p]["step"]) for p in pl_module.parameters() if p in optimizer.state]
        return {"params": {k: v.detach().clone() for k, v in pl_module.net.named_parameters()},
                "buffers": {k: v.detach().clone() for k, v in pl_module.net.named_buffers()},
                "adam_steps": sorted(set(steps)), "global_step": trainer.global_step}

    def on_train_start(self, trainer, pl_module) -> None:
        self.states.append(self._snapshot(trainer, pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.states.append(self._snapshot(trainer, pl_module))


def main(out: Path) -> None:
    from cromss.config import from_dict
    from cromss.training import PretrainConfig
    from cromss.training.module import CromSSModule

    torch.set_num_threads(1)
    rank = int(os.environ["LOCAL_RANK"])
    cfg = from_dict(PretrainConfig, {
        "seed": 3,
        "data": {"kind": "nol", "root": str(out), "crop_size": SIZE, "batch_size": 2},
        "model": {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]},
        "method": {"rampup_epochs": 1},
        "optim": {"lr": 1e-2, "scheduler": "none"},
    })
    L.seed_everything(3, verbose=False)
    module = CromSSModule(cfg)
    record = Record()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[PoisonOneRank(), record],
    )
    loader = torch.utils.data.DataLoader(Samples(), batch_size=2, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=loader)
    torch.save({"states": record.states, "skipped_steps": module.skipped_steps, "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "warnings": [str(w.message) for w in caught if "non-finite loss" in str(w.message)]},
               out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
