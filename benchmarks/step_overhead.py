"""Overhead of one CromSS training step vs two plain U-Net steps (CE + Dice) on the same batch.

CromSS step: forward of the U-Net pair, softmax, spatial-temporal smoothing, cross-modal selection
(eqs. 8-12), eq. (1) losses, backward, Adam step. Baseline: two independent smp U-Nets (S1, S2), each
forward + CE + Dice + backward + Adam step. Same encoder, bands, batch and crop. CPU, median of the
interleaved repeats (the two are alternated so that machine load hits both alike).

    python benchmarks/step_overhead.py                     # ResNet-50, 13+2 bands, 128 px, B=2, late fusion
    python benchmarks/step_overhead.py --fusion mid --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _batch(batch_size: int, size: int, num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels_all = torch.randint(0, num_classes, (batch_size, 4, size, size), generator=g)
    season = torch.randint(0, 4, (batch_size,), generator=g)
    label = labels_all[torch.arange(batch_size), season].clone()
    label[:, :4] = 255  # a few unlabelled pixels, as real data
    return {"s1": torch.rand(batch_size, 2, size, size, generator=g),
            "s2": torch.rand(batch_size, 13, size, size, generator=g),
            "label": label, "labels_all_seasons": labels_all, "season": season}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--fusion", default="late", choices=["late", "mid"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import segmentation_models_pytorch as smp

    from cromss.config import from_dict
    from cromss.selection import alpha_at, gamma_at
    from cromss.training import PretrainConfig
    from cromss.training.module import CromSSModule

    num_classes = 9
    cfg = from_dict(PretrainConfig, {"model": {"encoder": args.encoder, "fusion": args.fusion}})
    module = CromSSModule(cfg)
    cromss_opt = torch.optim.Adam(module.net.parameters(), lr=5e-3)
    plain = {m: smp.Unet(args.encoder, encoder_weights=None, in_channels=c, classes=num_classes)
             for m, c in (("s1", 2), ("s2", 13))}
    plain_opt = {m: torch.optim.Adam(net.parameters(), lr=5e-3) for m, net in plain.items()}
    batch = _batch(args.batch_size, args.size, num_classes)
    selection_ms: list[float] = []

    def cromss_step() -> None:
        logits = module.net({"s1": batch["s1"], "s2": batch["s2"]})
        probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
        alpha, gamma = alpha_at(40.0, 0.5, 80), gamma_at(40.0, 80)
        started = time.perf_counter()
        targets = module.targets(batch)
        weights = module.weights(probs, batch["label"], alpha, gamma, selection=True)
        selection_ms.append(1000 * (time.perf_counter() - started))
        loss, _ = module.objective(logits, probs, targets, weights)
        cromss_opt.zero_grad()
        loss.backward()
        cromss_opt.step()

    def plain_steps() -> None:
        for m, net in plain.items():
            logits = net(batch[m])
            labels = batch["label"]
            ce = F.cross_entropy(logits, labels, ignore_index=255)
            keep = (labels != 255).unsqueeze(1)
            q = logits.softmax(1) * keep
            z = F.one_hot(labels.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2) * keep
            dice = 1 - 2 * (z * q).sum() / (z + q).sum()
            plain_opt[m].zero_grad()
            (ce + dice).backward()
            plain_opt[m].step()

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    timed(cromss_step), timed(plain_steps)  # warm-up (allocator, kernels)
    selection_ms.clear()
    cromss_times, plain_times = [], []
    for _ in range(args.repeats):
        cromss_times.append(timed(cromss_step))
        plain_times.append(timed(plain_steps))
    t_cromss, t_plain = statistics.median(cromss_times), statistics.median(plain_times)
    print(f"{args.encoder} {args.fusion} fusion, B={args.batch_size}, {args.size}px, 13+2 bands, "
          f"{args.threads} thread(s), {args.repeats} repeats")
    print(f"CromSS step        : {t_cromss:.3f} s (runs {', '.join(f'{t:.2f}' for t in cromss_times)})")
    print(f"2 plain U-Net steps: {t_plain:.3f} s (runs {', '.join(f'{t:.2f}' for t in plain_times)})")
    print(f"smoothing + selection inside the CromSS step: {statistics.median(selection_ms):.1f} ms")
    print(f"overhead ratio     : {t_cromss / t_plain:.3f} ({100 * (t_cromss / t_plain - 1):+.1f} %)")


if __name__ == "__main__":
    main()
