"""Cost of CromSS sample selection + label smoothing relative to one training step (CPU).

Times, on the same batch (default B=4, 128 x 128, S1 2 bands + S2 13 bands, 9 classes):
  * the model step: forward + backward of a ResNet-50 U-Net pair (smp, random init), and
  * the method overhead: softmax, ``selection_weights`` (eqs. 8-12, enhancement on) and
    ``smooth_labels`` (eqs. 13-15, sigma 3, 4 seasons),
then prints the ratio. The brief's budget is <= 5 %.

Usage::

    .venv/bin/python benchmarks/selection.py                 # defaults, ~1-2 min on one core
    .venv/bin/python benchmarks/selection.py --size 256 --model-repeats 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _time(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-repeats", type=int, default=2)
    parser.add_argument("--method-repeats", type=int, default=10)
    args = parser.parse_args()

    import segmentation_models_pytorch as smp

    from cromss.selection import alpha_at, gamma_at, selection_weights
    from cromss.smoothing import smooth_labels

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch, size, classes = args.batch, args.size, args.classes
    nets = {
        modality: smp.Unet("resnet50", encoder_weights=None, in_channels=bands, classes=classes)
        for modality, bands in (("s1", 2), ("s2", 13))
    }
    inputs = {"s1": torch.rand(batch, 2, size, size), "s2": torch.rand(batch, 13, size, size)}
    labels_all = torch.randint(0, classes, (batch, 4, size, size))
    labels_all[:, :, :8] = 255  # some unlabelled rows, as real DW masks have
    season = torch.randint(0, 4, (batch,))
    labels = labels_all[torch.arange(batch), season]
    alpha, gamma = alpha_at(40, 0.5, 80), gamma_at(40, 80)

    def model_step() -> None:
        for net in nets.values():
            net.zero_grad(set_to_none=True)
        loss = sum(net(inputs[m]).logsumexp(1).mean() for m, net in nets.items())
        loss.backward()

    with torch.no_grad():
        logits = {m: net(inputs[m]) for m, net in nets.items()}

    def method_overhead() -> None:
        probs = {m: x.softmax(1) for m, x in logits.items()}
        selection_weights(probs, labels, alpha, gamma, classes, 255)
        smooth_labels(labels_all, season, classes, beta=0.05, mu=0.15, sigma=3.0)

    def selection_only() -> None:
        selection_weights({m: x.softmax(1) for m, x in logits.items()}, labels, alpha, gamma, classes, 255)

    def smoothing_only() -> None:
        smooth_labels(labels_all, season, classes, beta=0.05, mu=0.15, sigma=3.0)

    model_times = _time(model_step, args.model_repeats)
    method_times = _time(method_overhead, args.method_repeats)
    selection_times = _time(selection_only, args.method_repeats)
    smoothing_times = _time(smoothing_only, args.method_repeats)
    model = statistics.median(model_times)
    method = statistics.median(method_times)
    print(f"batch {batch} x {size}^2, {classes} classes, {args.threads} thread(s), torch {torch.__version__}")
    print(f"model step (ResNet-50 U-Net pair fwd+bwd): {model * 1e3:9.1f} ms  (runs: "
          + ", ".join(f"{t * 1e3:.0f}" for t in model_times) + ")")
    print(f"selection_weights (softmax included):     {statistics.median(selection_times) * 1e3:9.1f} ms")
    print(f"smooth_labels:                            {statistics.median(smoothing_times) * 1e3:9.1f} ms")
    print(f"selection + smoothing:                    {method * 1e3:9.1f} ms")
    print(f"ratio (selection + smoothing) / model step: {100 * method / model:.2f} %")


if __name__ == "__main__":
    main()
