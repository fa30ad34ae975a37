"""Where the encoder sits in each known weight layout (CromSS ours / official, torchgeo SSL4EO-S12, timm,
smp) and :func:`encoder_state_dict`, which returns it in smp/timm ResNet keys with a description."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from cromss.errors import CheckpointError
from cromss.schema import modality_bands
from cromss.weights.sources import FORMAT_NAME, _key_list, _read_source

#: Layouts whose input normalisation is the CromSS one (SSL4EO-S12 mean ± 2σ → [0, 1]).
CROMSS_LAYOUTS = (
    "cromss-export",
    "cromss-checkpoint",
    "cromss-net",
    "cromss-official-mid",
    "cromss-official-late",
)

# prefix → (layout, modality) of the CromSS layouts, most specific first
_CROMSS_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("net.encoders.s1.", "cromss-checkpoint", "s1"),
    ("net.encoders.s2.", "cromss-checkpoint", "s2"),
    ("encoders.s1.", "cromss-net", "s1"),
    ("encoders.s2.", "cromss-net", "s2"),
    ("net.model1.encoder.", "cromss-official-late", "s1"),
    ("net.model2.encoder.", "cromss-official-late", "s2"),
    ("net.encoder1.", "cromss-official-mid", "s1"),
    ("net.encoder.", "cromss-official-mid", "s2"),
)
# block counts per stage → torchvision/timm ResNet name
_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_BLOCK_CONV1 = re.compile(r"layer\d+\.\d+\.$")



def _sub_state_dict(flat: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}


def _first_conv_in_channels(state: Mapping[str, Tensor]) -> int | None:
    """Input channels of an encoder state dict: ``conv1.weight`` or the first 4-D weight."""
    if "conv1.weight" in state:
        return int(state["conv1.weight"].shape[1])
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4:
            return int(value.shape[1])
    return None


def infer_resnet_name(state: Mapping[str, Tensor]) -> str | None:
    """'resnet18' ... 'resnet152' from the block counts of a ResNet state dict, else None."""
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(blocks))
    bottleneck = "layer1.0.conv3.weight" in state
    return _RESNETS.get((bottleneck, tuple(counts)))


def _third_party_candidates(flat: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """prefix → ResNet sub-state-dict for every top-level ``<prefix>conv1.weight`` in ``flat``."""
    prefixes = [k[: -len("conv1.weight")] for k in flat if k.endswith("conv1.weight")]
    prefixes = [p for p in prefixes if not _BLOCK_CONV1.search(p) and f"{p}layer1.0.conv1.weight" in flat]
    # momentum encoders (MoCo) and DINO students are training-time copies: keep the released branch
    prefixes = [p for p in prefixes if "encoder_k." not in p]
    if any("teacher" in p for p in prefixes):
        prefixes = [p for p in prefixes if "student" not in p]
    candidates = {}
    for prefix in prefixes:
        sub = _sub_state_dict(flat, prefix)
        candidates[prefix] = {k: v for k, v in sub.items() if re.match(r"(conv1|bn1|layer\d)\.", k)}
    return candidates


def _third_party_layout(prefix: str) -> str:
    if "encoder_q" in prefix:
        return "ssl4eo-moco"
    if re.search(r"backbone_\d\.$", prefix):
        return "ssl4eo-decur"
    if "backbone." in prefix:
        return "ssl4eo-dino"
    if prefix == "":
        return "resnet"
    if prefix.endswith("encoder."):
        return "smp-model"
    return f"resnet (prefix {prefix!r})"


def _expected_channels_text(modality: str | None, in_channels: int | None) -> str:
    if in_channels is not None:
        implied = _modality_for_channels(in_channels)
        return f"{in_channels}" + (f" ({implied})" if implied else "")
    return "2 (s1)" if modality == "s1" else "13 or 9 (s2)"


def _check_channels(found: int | None, modality: str | None, in_channels: int | None, where: str) -> None:
    if found is None or (modality is None and in_channels is None):
        return
    ok = found == in_channels if in_channels is not None else found in ((2,) if modality == "s1" else (13, 9))
    if not ok:
        raise CheckpointError(
            f"{where} has {found} input bands, "
            f"the model expects {_expected_channels_text(modality, in_channels)}"
        )


def _modality_for_channels(channels: int | None) -> str | None:
    return {2: "s1", 13: "s2", 9: "s2"}.get(channels) if channels is not None else None


def _bands_for(modality: str | None, channels: int | None) -> list[str] | None:
    if modality is None or channels is None:
        return None
    try:
        bands = list(modality_bands(modality, channels if modality == "s2" else 13))
    except ValueError:
        return None
    return bands if len(bands) == channels else None


def _num_classes(flat: Mapping[str, Tensor]) -> int | None:
    for key, value in flat.items():
        if re.search(r"(heads\.[^.]+|segmentation_head)\.0\.weight$", key) and value.ndim == 4:
            return int(value.shape[0])
    return None


def encoder_state_dict(
    source: str | Path, modality: str | None = None, in_channels: int | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The encoder weights of ``source`` in smp/timm key layout, plus a description.

    Args:
        source: a cromss ``.safetensors`` export; a ``cromss pretrain`` run folder or its Lightning
            checkpoint; an official CromSS checkpoint (``weights-cromss-13B-midFusion-epoch=199.ckpt``
            and siblings); a torchgeo / SSL4EO-S12 ResNet file (plain timm state dict, or full MoCo /
            DINO / DeCUR checkpoints).
        modality: ``'s1'`` or ``'s2'``; picks the encoder of a two-encoder file (may be left out when
            ``in_channels`` decides it).
        in_channels: input channels of the model the weights are meant for; a mismatch raises.

    Returns:
        ``(state_dict, info)`` — keys like ``conv1.weight``, ``bn1.*``, ``layer1.0.*`` (no ``fc``);
        ``info`` has ``source``, ``layout``, ``modality``, ``in_channels``, ``encoder`` (name or None),
        ``bands`` (list or None), ``config`` (pretraining config or None), ``num_classes``, ``prefix``.

    Raises:
        CheckpointError: unreadable / unsafe file, unknown layout, ambiguous or mismatched modality or
            band count.
    """
    if modality not in (None, "s1", "s2"):
        raise CheckpointError(f"modality must be 's1' or 's2', got {modality!r}")
    flat, hyper, config, ckpt_path = _read_source(source)
    where = str(source)
    if not flat:
        raise CheckpointError(f"{where} holds no tensors")

    # ---- our own export
    if isinstance(hyper, Mapping) and hyper.get("format") == FORMAT_NAME:
        meta = dict(hyper)
        if modality is not None and meta.get("modality") != modality:
            raise CheckpointError(f"{where} holds the {meta.get('modality')} encoder, not {modality}")
        found = int(meta["architecture"]["in_channels"])
        _check_channels(found, meta.get("modality"), in_channels, where)
        info = {
            "source": where,
            "layout": "cromss-export",
            "modality": meta.get("modality"),
            "in_channels": found,
            "encoder": meta["architecture"]["encoder"],
            "depth": int(meta["architecture"].get("depth", 5)),
            "bands": list(meta.get("bands") or []) or None,
            "config": meta.get("pretraining_config"),
            "num_classes": len(meta.get("classes", {}).get("names", [])) or None,
            "prefix": "",
            "metadata": meta,
        }
        return dict(flat), info

    # ---- CromSS layouts (ours and the official release)
    present = [(p, layout, m) for p, layout, m in _CROMSS_PREFIXES if any(k.startswith(p) for k in flat)]
    if present:
        available = [m for _, _, m in present]
        if modality is None:
            by_channels = _modality_for_channels(in_channels)
            if len(available) == 1:
                modality = available[0]
            elif by_channels in available:
                modality = by_channels
            else:
                raise CheckpointError(
                    f"{where} holds encoders for {available}: pass modality='s1' or 's2' (--modality)"
                )
        chosen = [(p, layout) for p, layout, m in present if m == modality]
        if not chosen:
            raise CheckpointError(f"{where} has no {modality} encoder (it holds {available})")
        prefix, layout = chosen[0]
        state = _sub_state_dict(flat, prefix)
        found = _first_conv_in_channels(state)
        _check_channels(found, modality, in_channels, f"{where} ({modality} encoder)")
        model_cfg = (config or {}).get("model", {}) if isinstance(config, Mapping) else {}
        encoder_name = model_cfg.get("encoder") if isinstance(model_cfg, Mapping) else None
        info = {
            "source": where,
            "layout": layout,
            "modality": modality,
            "in_channels": found,
            "encoder": encoder_name or infer_resnet_name(state),
            "depth": 5,
            "bands": _bands_for(modality, found),
            "config": config,
            "num_classes": _num_classes(flat),
            "prefix": prefix,
            "checkpoint": str(ckpt_path),
        }
        return state, info

    # ---- third-party ResNets (torchgeo / SSL4EO-S12 / timm / torchvision / smp models)
    candidates = _third_party_candidates(flat)
    if not candidates:
        raise CheckpointError(
            f"unknown weight layout in {where}: no CromSS, smp/timm ResNet, MoCo, DINO or DeCUR encoder "
            f"found. First keys: {_key_list(list(flat))}"
        )
    if len(candidates) > 1:
        wanted = in_channels
        matching = {
            p: s
            for p, s in candidates.items()
            if (
                _first_conv_in_channels(s) == wanted
                if wanted is not None
                else _modality_for_channels(_first_conv_in_channels(s)) == modality
            )
        }
        if len(matching) != 1:
            described = ", ".join(
                f"{p or '<root>'} ({_first_conv_in_channels(s)} bands)" for p, s in candidates.items()
            )
            raise CheckpointError(
                f"{where} holds several encoders: {described}; "
                "pass the modality or in_channels that picks one"
            )
        candidates = matching
    prefix, state = next(iter(candidates.items()))
    found = _first_conv_in_channels(state)
    _check_channels(found, modality, in_channels, where)
    info = {
        "source": where,
        "layout": _third_party_layout(prefix),
        "modality": modality or _modality_for_channels(found),
        "in_channels": found,
        "encoder": infer_resnet_name(state),
        "depth": 5,
        "bands": _bands_for(modality or _modality_for_channels(found), found),
        "config": None,
        "num_classes": None,
        "prefix": prefix,
    }
    return state, info

