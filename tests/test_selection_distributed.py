"""Issue 9: label_weights(sync=True) over 2 gloo ranks equals one process holding the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cromss.losses import segmentation_loss
from cromss.selection import label_weights, selection_weights

IGN = 255
NUM_CLASSES = 5
ALPHAS = (0.3, 0.5, 0.8, 1.0)
#: (name, samples on rank 0) for a batch of 4: equal halves and an uneven split (tests the padding).
SPLITS = (("halves", 2), ("uneven", 3))

_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist

    def make_batch():
        # Defined in the test module too; duplicated here so the worker is self-contained.
        g = torch.Generator().manual_seed(7)
        conf = torch.rand(4, 12, 10, generator=g)
        conf[0, 0, :5] = 0.0
        labels = torch.randint(0, 4, (4, 12, 10), generator=g)
        labels[3] = torch.where(labels[3] == 2, torch.full_like(labels[3], 4), labels[3])  # class 4 only in sample 3
        labels[2, :6] = 255
        labels[3, 0, 0] = 255
        probs = {m: torch.softmax(torch.randn(4, 5, 12, 10, generator=g) * 3, 1) for m in ("s1", "s2")}
        logits = torch.randn(4, 5, 12, 10, generator=g)
        targets = torch.softmax(torch.randn(4, 5, 12, 10, generator=g), 1)
        return conf, labels, probs, logits, targets

    def work(rank, world, init_file, out_dir, alphas, splits):
        dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
        from cromss.losses import segmentation_loss
        from cromss.selection import label_weights, selection_weights
        conf, labels, probs, logits, targets = make_batch()
        result = {}
        for name, first in splits:
            part = slice(0, first) if rank == 0 else slice(first, 4)
            for alpha in alphas:
                w = label_weights(conf[part], labels[part], alpha, 5, 255, sync=True)
                loss = segmentation_loss(logits[part], targets[part], w, dice="none")
                result[(name, alpha)] = (w, loss * w.sum())
            masks = selection_weights({m: p[part] for m, p in probs.items()}, labels[part], 0.6, 0.5, 5,
                                      255, sync=True)
            result[(name, "selection")] = {m: v["w_l"] for m, v in masks.items()}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == "__main__":
        rank, init_file, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        alphas = tuple(float(a) for a in sys.argv[4].split(","))
        splits = tuple((s.split(":")[0], int(s.split(":")[1])) for s in sys.argv[5].split(","))
        torch.set_num_threads(1)
        work(rank, 2, init_file, out_dir, alphas, splits)
    """
)


def _make_batch():
    """Same data as the worker's make_batch."""
    g = torch.Generator().manual_seed(7)
    conf = torch.rand(4, 12, 10, generator=g)
    conf[0, 0, :5] = 0.0
    labels = torch.randint(0, 4, (4, 12, 10), generator=g)
    labels[3] = torch.where(labels[3] == 2, torch.full_like(labels[3], 4), labels[3])
    labels[2, :6] = IGN
    labels[3, 0, 0] = IGN
    probs = {m: torch.softmax(torch.randn(4, 5, 12, 10, generator=g) * 3, 1) for m in ("s1", "s2")}
    logits = torch.randn(4, 5, 12, 10, generator=g)
    targets = torch.softmax(torch.randn(4, 5, 12, 10, generator=g), 1)
    return conf, labels, probs, logits, targets


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    work_dir = tmp_path_factory.mktemp("dist")
    script = work_dir / "worker.py"
    script.write_text(_WORKER)
    repo_root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    # One process per rank, rendezvous through a shared file (no port to pick, no race for one).
    args = [str(work_dir / "init"), str(work_dir), ",".join(str(a) for a in ALPHAS),
            ",".join(f"{n}:{k}" for n, k in SPLITS)]
    ranks = [
        subprocess.Popen([sys.executable, str(script), str(rank), *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    for rank, process in enumerate(ranks):
        try:
            _, stderr = process.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.kill()
            raise
        assert process.returncode == 0, f"rank {rank} failed:\n{stderr[-3000:]}"
    return [torch.load(work_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("split", [name for name, _ in SPLITS])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_synced_weights_equal_whole_batch(rank_results, split: str, alpha: float) -> None:
    conf, labels, _, logits, targets = _make_batch()
    whole = label_weights(conf, labels, alpha, NUM_CLASSES, IGN)
    synced = torch.cat([rank_results[r][(split, alpha)][0] for r in range(2)])
    torch.testing.assert_close(synced, whole, atol=1e-7, rtol=0)
    # local (unsynced) thresholds differ from the whole-batch ones for alpha < 1
    first = dict(SPLITS)[split]
    local = label_weights(conf[:first], labels[:first], alpha, NUM_CLASSES, IGN)
    if alpha < 1:
        assert not torch.allclose(local, whole[:first])
    # weighted sums of the per-pixel CE agree: sum_r loss_r * W_r == loss * W over the whole batch
    whole_sum = segmentation_loss(logits, targets, whole, dice="none") * whole.sum()
    rank_sum = sum(rank_results[r][(split, alpha)][1] for r in range(2))
    assert rank_sum.item() == pytest.approx(whole_sum.item(), rel=1e-5)


@pytest.mark.parametrize("split", [name for name, _ in SPLITS])
def test_synced_selection_weights_equal_whole_batch(rank_results, split: str) -> None:
    _, labels, probs, _, _ = _make_batch()
    whole = selection_weights(probs, labels, 0.6, 0.5, NUM_CLASSES, IGN)
    for modality in ("s1", "s2"):
        synced = torch.cat([rank_results[r][(split, "selection")][modality] for r in range(2)])
        torch.testing.assert_close(synced, whole[modality]["w_l"], atol=1e-7, rtol=0)


def test_sync_without_process_group_is_local() -> None:
    conf, labels, _, _, _ = _make_batch()
    torch.testing.assert_close(
        label_weights(conf, labels, 0.5, NUM_CLASSES, IGN, sync=True),
        label_weights(conf, labels, 0.5, NUM_CLASSES, IGN),
    )
