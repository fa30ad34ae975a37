"""Where the encoder sits in each known weight layout (CromSS ours / official, torchgeo SSL4EO-S12, timm,
smp) and :func:`encoder_state_dict`, which returns it in smp/timm ResNet keys with a description."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from cromss.errors import CheckpointError
from cromss.schema import modality_bands
from cromss.weights.bands import known_bands, select_input_channels
from cromss.weights.sources import FORMAT_NAME, _key_list, _read_source

#: Layouts whose input normalisation is the CromSS one (SSL4EO-S12 mean ± 2σ → [0, 1]).
CROMSS_LAYOUTS = (
    "cromss-export",
    "cromss-checkpoint",
    "cromss-net",
    "cromss-official-mid",
    "cromss-official-late",
)

# prefix → (layout, modality) of the official CromSS layouts, most specific first
_CROMSS_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("net.model1.encoder.", "cromss-official-late", "s1"),
    ("net.model2.encoder.", "cromss-official-late", "s2"),
    ("net.encoder1.", "cromss-official-mid", "s1"),
    ("net.encoder.", "cromss-official-mid", "s2"),
)
# our own layouts: encoders.<modality>. (CromSSNet) and net.encoders.<modality>. (Lightning checkpoint);
# modality names are any dataset's (s1, s2, optical, ...)
_OWN_PREFIX = re.compile(r"^((?:net\.)?)encoders\.([A-Za-z0-9_-]+)\.")
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
    if found is None or (in_channels is None and modality not in ("s1", "s2")):
        return  # nothing to check against (a generic modality is checked by band name)
    ok = found == in_channels if in_channels is not None else found in ((2,) if modality == "s1" else (13, 9))
    if not ok:
        raise CheckpointError(
            f"{where} has {found} input bands, "
            f"the model expects {_expected_channels_text(modality, in_channels)}"
        )


def _modality_for_channels(channels: int | None) -> str | None:
    return {2: "s1", 13: "s2", 9: "s2"}.get(channels) if channels is not None else None


def _cromss_prefixes(flat: Mapping[str, Tensor]) -> list[tuple[str, str, str]]:
    """(prefix, layout, modality) of every encoder of a CromSS layout in ``flat``, in key order."""
    present: dict[str, tuple[str, str, str]] = {}
    for key in flat:
        match = _OWN_PREFIX.match(key)
        if match and match.group(0) not in present:
            layout = "cromss-checkpoint" if match.group(1) else "cromss-net"
            present[match.group(0)] = (match.group(0), layout, match.group(2))
    if present:
        return list(present.values())
    return [(p, layout, m) for p, layout, m in _CROMSS_PREFIXES if any(k.startswith(p) for k in flat)]


def _run_bands(config: Any, modality: str, channels: int | None) -> list[str] | None:
    """Band names of ``modality``'s input as a pretraining run's resolved config records them
    (``model.bands``, else the S1/S2 tables of ``model.s2_bands``); None when the config has no model."""
    model = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(model, Mapping):
        return None
    bands = (model.get("bands") or {}).get(modality) if isinstance(model.get("bands"), Mapping) else None
    if bands is None:
        try:
            bands = modality_bands(modality, int(model.get("s2_bands", 13)))
        except (ValueError, TypeError):
            return None
    bands = [str(b) for b in bands]
    return bands if channels is None or len(bands) == channels else None


def _num_classes(flat: Mapping[str, Tensor]) -> int | None:
    for key, value in flat.items():
        if re.search(r"(heads\.[^.]+|segmentation_head)\.0\.weight$", key) and value.ndim == 4:
            return int(value.shape[0])
    return None


def encoder_state_dict(
    source: str | Path,
    modality: str | None = None,
    in_channels: int | None = None,
    bands: Sequence[str] | None = None,
    init_missing: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The encoder weights of ``source`` in smp/timm key layout, plus a description.

    Args:
        source: a cromss ``.safetensors`` export; a ``cromss pretrain`` run folder or its Lightning
            checkpoint; an official CromSS checkpoint (``weights-cromss-13B-midFusion-epoch=199.ckpt``
            and siblings); a torchgeo / SSL4EO-S12 ResNet file (plain timm state dict, or full MoCo /
            DINO / DeCUR checkpoints).
        modality: the modality name (``'s1'``, ``'s2'``, or a generic run's, e.g. ``'optical'``); picks
            the encoder of a several-encoder file (may be left out when ``in_channels`` decides it).
        in_channels: input channels of the model the weights are meant for; a mismatch raises (unless
            ``bands`` is given).
        bands: band names of the model's input. The first-conv channels are then selected BY NAME from
            the weights' band names (:func:`cromss.weights.bands.select_input_channels`); a band the
            weights lack raises, naming it, unless ``init_missing`` ('mean' | 'zero') initialises it.
            Weights that record no band names load only into as many bands (not checkable by name).
        init_missing: see ``bands``.

    Returns:
        ``(state_dict, info)`` — keys like ``conv1.weight``, ``bn1.*``, ``layer1.0.*`` (no ``fc``);
        ``info`` has ``source``, ``layout``, ``modality``, ``in_channels``, ``encoder`` (name or None),
        ``bands`` (the weights' band names, or None), ``config`` (pretraining config or None),
        ``num_classes``, ``prefix``; with ``bands``, also ``band_selection`` (what was selected / initialised).

    Raises:
        CheckpointError: unreadable / unsafe file, unknown layout, ambiguous or mismatched modality or
            band count.
    """
    if modality is not None and not isinstance(modality, str):
        raise CheckpointError(f"modality must be a modality name such as 's1' or 's2', got {modality!r}")
    if bands is None:
        return _encoder_state_dict(source, modality, in_channels)
    state, info = _encoder_state_dict(source, modality, None, pick_channels=in_channels)
    where = str(source)
    if info["bands"] is None:
        if info["in_channels"] != len(bands):
            raise CheckpointError(
                f"{where} records no band names and has {info['in_channels']} input channels; the model is fed "
                f"{len(bands)} bands {list(bands)}, so its channels cannot be selected by name"
            )
        info["band_selection"] = {"model_bands": list(bands), "checked": False}
        return state, info
    state, report = select_input_channels(state, info["bands"], bands, init_missing, where,
                                          modality=info.get("modality") or modality)
    info["band_selection"] = {**report, "checked": True}
    return state, info


def _encoder_state_dict(
    source: str | Path, modality: str | None, in_channels: int | None, pick_channels: int | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """:func:`encoder_state_dict` without band selection; ``in_channels`` is checked, ``pick_channels``
    (or ``in_channels``) only picks the encoder of a several-encoder file."""
    pick_channels = pick_channels if pick_channels is not None else in_channels
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
        if not meta.get("bands") or in_channels is not None:
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
    present = _cromss_prefixes(flat)
    if present:
        available = [m for _, _, m in present]
        if modality is None:
            by_channels = _modality_for_channels(pick_channels)
            if len(available) == 1:
                modality = available[0]
            elif by_channels in available:
                modality = by_channels
            else:
                raise CheckpointError(
                    f"{where} holds encoders for {available}: pass modality=<one of them> (--modality)"
                )
        chosen = [(p, layout) for p, layout, m in present if m == modality]
        if not chosen:
            raise CheckpointError(f"{where} has no {modality} encoder (it holds {available})")
        prefix, layout = chosen[0]
        state = _sub_state_dict(flat, prefix)
        found = _first_conv_in_channels(state)
        model_cfg = (config or {}).get("model", {}) if isinstance(config, Mapping) else {}
        encoder_name = model_cfg.get("encoder") if isinstance(model_cfg, Mapping) else None
        # our runs record their bands in the resolved config; the official release has known tables
        # our runs record their bands in the resolved config (a bare CromSSNet state dict without one has
        # the model defaults, the S1/S2 tables); the official release has known tables
        weight_bands = None if layout.startswith("cromss-official") else _run_bands(config, modality, found)
        weight_bands = weight_bands or known_bands(modality, found)
        if weight_bands is None or in_channels is not None:
            _check_channels(found, modality, in_channels, f"{where} ({modality} encoder)")
        info = {
            "source": where,
            "layout": layout,
            "modality": modality,
            "in_channels": found,
            "encoder": encoder_name or infer_resnet_name(state),
            "depth": 5,
            "bands": weight_bands,
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
        wanted = pick_channels
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
    weight_bands = known_bands(modality or _modality_for_channels(found), found)
    if weight_bands is None or in_channels is not None:
        _check_channels(found, modality, in_channels, where)
    info = {
        "source": where,
        "layout": _third_party_layout(prefix),
        "modality": modality or _modality_for_channels(found),
        "in_channels": found,
        "encoder": infer_resnet_name(state),
        "depth": 5,
        "bands": weight_bands,
        "config": None,
        "num_classes": None,
        "prefix": prefix,
    }
    return state, info

