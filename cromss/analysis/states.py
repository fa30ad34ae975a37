"""Model states of runs for the analyses: reading checkpoints, finding the encoder / decoder of a modality,
checkpoint series, and the BN-KL / weight-KL comparisons over them (Figs. 8c, d and 12)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from cromss.analysis.divergence import bn_kl, neg_inv_log, weight_kl, weight_tensors
from cromss.errors import CheckpointError, DataError


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """Tensors of a checkpoint and the epoch it was saved at (None if unknown).

    Accepts a pretrain/fine-tune run folder (its ``checkpoints/last.ckpt`` or ``best.ckpt``), a
    Lightning ``.ckpt`` (read with ``weights_only=True``), a plain ``.pt``/``.pth`` state dict or a
    ``.safetensors`` file. A leading ``net.`` (Lightning module attribute) is removed from the keys.
    """
    from cromss.fetch import resolve_weights  # a published name (cromss/13b-midf) -> its cached file

    path = Path(resolve_weights(path))
    if path.is_dir():
        from cromss.weights import find_run_checkpoint

        path = find_run_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    epoch = None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file for the user
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    else:
        from cromss.checkpoints import safe_torch_load

        raw = safe_torch_load(path)
        if isinstance(raw, dict) and isinstance(raw.get("epoch"), int):
            epoch = int(raw["epoch"])
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
    if not isinstance(raw, dict) or not any(torch.is_tensor(v) for v in raw.values()):
        raise CheckpointError(f"{path} holds no state dict (no tensors found)")
    state = {k: v for k, v in raw.items() if torch.is_tensor(v)}
    if all(k.startswith("net.") for k in state):
        state = {k[len("net."):]: v for k, v in state.items()}
    return state, epoch


#: Key prefixes of the encoder / decoder of ``modality`` in the layouts cromss meets, in search order:
#: CromSSNet (``encoders.s2.``), the authors' mid/late fusion checkpoints (``encoder1.`` = S1,
#: ``encoder.`` = S2, ``model1.``/``model2.``), a fine-tuned smp model (``model.encoder.``) and a bare
#: smp model or an exported encoder (``encoder.`` / no prefix).
def _prefix_candidates(part: str, modality: str) -> list[str]:
    late = "model1." if modality == "s1" else "model2."
    if part == "encoder":
        official = ["encoder1."] if modality == "s1" else ["encoder."]
        return [f"encoders.{modality}.", *official, late + "encoder.", "model.encoder.", "encoder.", ""]
    if part == "decoder":
        return ["decoders.shared.", f"decoders.{modality}.", late + "decoder.", "model.decoder.", "decoder."]
    raise DataError(f"unknown model part {part!r}; expected 'encoder' or 'decoder'")


def part_prefix(state: Mapping[str, torch.Tensor], part: str, modality: str = "s2") -> str:
    """The key prefix of the ``part`` (``'encoder'``/``'decoder'``) of ``modality`` in ``state``."""
    for prefix in _prefix_candidates(part, modality):
        if prefix == "":
            if any(k.startswith(("conv1.", "layer1.", "stem.", "features.")) for k in state):
                return ""  # a bare encoder state dict (e.g. an exported encoder)
            continue
        if any(k.startswith(prefix) for k in state):
            return prefix
    sample = ", ".join(sorted(state)[:5])
    raise DataError(f"no {modality.upper()} {part} found in the state dict (first keys: {sample}); pass "
                    f"the key prefix explicitly")


def sub_state(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_series(run: str | Path) -> dict[int, Path]:
    """Epoch -> checkpoint of a run folder (all ``checkpoints/*.ckpt``) or of one checkpoint file."""
    run = Path(run)
    if run.is_file():
        files = [run]
    elif run.is_dir():
        folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
        files = sorted(folder.glob("*.ckpt"))
    else:
        raise CheckpointError(f"run folder or checkpoint not found: {run}")
    if not files:
        raise CheckpointError(f"{run} holds no *.ckpt checkpoints")
    series: dict[int, Path] = {}
    for file in files:
        match = re.search(r"epoch[=_-]?(\d+)", file.name)
        epoch = int(match.group(1)) if match else read_state_dict(file)[1]
        if epoch is None:
            raise CheckpointError(f"{file}: cannot tell its epoch (no 'epoch' entry, no epoch=N in the name)")
        series.setdefault(epoch, file)
    return dict(sorted(series.items()))


def bn_kl_curve(run_a: str | Path, run_b: str | Path, modality: str = "s2",
                prefixes: Mapping[str, tuple[str, str]] | None = None) -> list[dict[str, float]]:
    """BN-KL of encoder and decoder of ``modality`` between two runs, per common saved epoch (Fig. 8c, d).

    Args:
        run_a, run_b: run folders (every ``checkpoints/*.ckpt``) or single checkpoints.
        modality: which U-Net (its encoder and its — possibly shared — decoder) to compare.
        prefixes: optional ``{"encoder": (prefix_a, prefix_b), "decoder": (...)}`` overriding detection.

    Returns:
        ``[{"epoch": e, "encoder": kl, "decoder": kl}, ...]`` sorted by epoch.
    """
    series_a, series_b = checkpoint_series(run_a), checkpoint_series(run_b)
    if Path(run_a).is_file() and Path(run_b).is_file():
        epochs = [next(iter(series_a))]
        series_b = {epochs[0]: next(iter(series_b.values()))}
    else:
        epochs = sorted(set(series_a) & set(series_b))
    if not epochs:
        raise DataError(f"{run_a} (epochs {sorted(series_a)}) and {run_b} (epochs {sorted(series_b)}) "
                        "have no saved epoch in common")
    curve = []
    for epoch in epochs:
        state_a, _ = read_state_dict(series_a[epoch])
        state_b, _ = read_state_dict(series_b[epoch])
        row: dict[str, float] = {"epoch": float(epoch)}
        for part in ("encoder", "decoder"):
            if prefixes and part in prefixes:
                pa, pb = prefixes[part]
            else:
                pa, pb = part_prefix(state_a, part, modality), part_prefix(state_b, part, modality)
            row[part] = bn_kl(sub_state(state_a, pa), sub_state(state_b, pb))
        curve.append(row)
    return curve


def architecture_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> str | None:
    """Why two weight sets are not one architecture (other tensor names or shapes), else None."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        return (f"{len(a)} vs {len(b)} weight tensors, e.g. {(only_a or only_b)[0]!r} only in the "
                f"{'first' if only_a else 'second'}")
    shapes = [k for k in a if tuple(a[k].shape) != tuple(b[k].shape)]
    if shapes:
        return f"{shapes[0]!r} is {tuple(a[shapes[0]].shape)} vs {tuple(b[shapes[0]].shape)}"
    return None


def weight_kl_parts(before: str | Path, after: str | Path, modality: str = "s2", bins: int = 100,
                    parts: Sequence[str] = ("encoder", "decoder")) -> dict[str, dict[str, Any]]:
    """Weight KL of encoder and decoder before vs after fine-tuning (Fig. 12).

    Returns ``{part: {"kl": kl, "display": -1/log(kl)}}``; a part missing in either file is left out, and
    a part whose two weight sets are different architectures (a pretraining U-Net decoder vs a fine-tuned
    FPN decoder: no weight of one is a weight of the other) is ``{"skipped": why}``.
    """
    state_before, _ = read_state_dict(before)
    state_after, _ = read_state_dict(after)
    result: dict[str, dict[str, Any]] = {}
    for part in parts:
        try:
            pb, pa = part_prefix(state_before, part, modality), part_prefix(state_after, part, modality)
        except DataError:
            continue
        weights_before = {k[len(pb):]: v for k, v in weight_tensors(state_before, pb).items()}
        weights_after = {k[len(pa):]: v for k, v in weight_tensors(state_after, pa).items()}
        difference = architecture_difference(weights_before, weights_after)
        if difference is not None:
            result[part] = {"skipped": f"different {part} architectures ({difference})"}
            continue
        kl = weight_kl(weights_before, weights_after, bins=bins)
        result[part] = {"kl": kl, "display": neg_inv_log(kl)}
    if not result:
        raise DataError(f"neither an encoder nor a decoder was found in both {before} and {after}")
    return result


def run_labels(paths: Sequence[str | Path]) -> list[str]:
    """Distinct short labels of runs for figures and JSON: the last folder names, with as many parent
    folders as it takes to tell them apart (every seed folder is ``seed0``)."""
    parts = [Path(p).absolute().parts for p in paths]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label} ({i})" for i, label in enumerate(labels)]
