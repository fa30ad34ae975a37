"""Read each baseline's published weight file, check its layout, map it to cromss modules' keys.

Every reader returns the encoder's state dict in the key names of the cromss module it fills (the ViT
modules keep the published names, so the mapping is a selection; Satlas drops its ``backbone.resnet.``
prefix and has its first conv permuted to the task's band order). A file of another layout is refused
with a :class:`~cromss.errors.CheckpointError` naming the expected file and layout.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cromss.baselines.registry import BaselineSpec, ViTConfig, baseline_spec
from cromss.errors import CheckpointError


def _read_file(path: Path, spec: BaselineSpec) -> dict[str, Tensor]:
    """The tensors of a ``.pth`` (MAE-style ``{'model': ...}``, ``{'state_dict': ...}`` or plain) or ``.safetensors``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"{spec.title} weights not found: {path}")
        return dict(load_file(str(path)))
    from cromss.checkpoints import safe_torch_load

    obj = safe_torch_load(path, what=f"{spec.title} weights")
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict; expected {spec.layout}")
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _refuse(path: Path, spec: BaselineSpec, state: Mapping[str, Tensor], why: str) -> CheckpointError:
    keys = ", ".join(sorted(state)[:5]) or "none"
    return CheckpointError(
        f"{path} is not a {spec.title} checkpoint ({why}); expected the published {spec.file} with layout "
        f"{spec.layout}; found keys: {keys}{' ...' if len(state) > 5 else ''}"
    )


def _need(path: Path, spec: BaselineSpec, state: Mapping[str, Tensor], *keys: str) -> None:
    missing = [key for key in keys if key not in state]
    if missing:
        raise _refuse(path, spec, state, f"no key {missing[0]!r}")


def _blocks(path: Path, spec: BaselineSpec, state: Mapping[str, Tensor], vit: ViTConfig) -> dict[str, Tensor]:
    """The transformer blocks, checked against the configured width and depth."""
    _need(path, spec, state, "cls_token", "blocks.0.attn.qkv.weight")
    width = state["cls_token"].shape[-1]
    depth = len({int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))})
    if (width, depth) != (vit.embed_dim, vit.depth):
        raise CheckpointError(
            f"{path} holds a ViT with embed_dim {width} and depth {depth}, the config asks for "
            f"{vit.embed_dim} / {vit.depth} (set vit.embed_dim={width} vit.depth={depth} vit.num_heads=...)"
        )
    return {key: value for key, value in state.items() if key.startswith("blocks.") or key == "cls_token"}


def _check_patch(path: Path, spec: BaselineSpec, found: int) -> None:
    if found != spec.patch_size:
        raise CheckpointError(f"{path} has patch size {found}; {spec.title} is published with patch {spec.patch_size}")


def _resampled_pos_embed(pos_embed: Tensor, grid: int) -> Tensor:
    """A ``[1, 1 + n*n, C]`` position embedding resampled to a ``grid x grid`` patch grid (bicubic)."""
    from timm.layers import resample_abs_pos_embed

    side = math.isqrt(pos_embed.shape[1] - 1)
    if side == grid:
        return pos_embed
    return resample_abs_pos_embed(pos_embed, new_size=[grid, grid], old_size=[side, side], num_prefix_tokens=1)


def _plain_vit(path: Path, spec: BaselineSpec, state: dict[str, Tensor], vit: ViTConfig, modality: str,
               target: nn.Module | None) -> dict[str, Tensor]:
    if "patch_embed.0.proj.weight" in state or "patch_embed.weight_generator.fc_weight.weight" in state:
        raise _refuse(path, spec, state, "it has a multi-group or wavelength-conditioned patch embedding")
    _need(path, spec, state, "patch_embed.proj.weight", "patch_embed.proj.bias")
    out = _blocks(path, spec, state, vit)
    proj = state["patch_embed.proj.weight"]
    _check_patch(path, spec, proj.shape[-1])
    bands = spec.bands_for(modality)
    if proj.shape[1] != len(bands):
        raise _refuse(path, spec, state, f"its patch embedding takes {proj.shape[1]} bands, not {len(bands)} ({', '.join(bands)})")
    out.update({key: state[key] for key in ("patch_embed.proj.weight", "patch_embed.proj.bias")})
    return out


def _group_vit(path: Path, spec: BaselineSpec, state: dict[str, Tensor], vit: ViTConfig, modality: str,
               target: nn.Module | None) -> dict[str, Tensor]:
    groups = spec.channel_groups
    weights = [f"patch_embed.{g}.proj.weight" for g in range(len(groups))]
    _need(path, spec, state, *weights, "pos_embed", "channel_embed")
    if f"patch_embed.{len(groups)}.proj.weight" in state:
        raise _refuse(path, spec, state, f"it has more than {len(groups)} channel groups")
    out = _blocks(path, spec, state, vit)
    for weight, group in zip(weights, groups):
        if state[weight].shape[1] != len(group):
            raise _refuse(path, spec, state, f"{weight} takes {state[weight].shape[1]} bands, group {group} has {len(group)}")
        _check_patch(path, spec, state[weight].shape[-1])
    if state["channel_embed"].shape[-1] != vit.channel_embed:
        raise CheckpointError(
            f"{path} has a channel embedding of width {state['channel_embed'].shape[-1]}, the config asks for "
            f"vit.channel_embed={vit.channel_embed}"
        )
    _check_satmae_release(path, spec, state)
    out.update({key: value for key, value in state.items() if key.startswith("patch_embed.")})
    out["channel_embed"] = state["channel_embed"]
    grid = math.isqrt(target.pos_embed.shape[1] - 1) if target is not None else math.isqrt(state["pos_embed"].shape[1] - 1)
    out["pos_embed"] = _resampled_pos_embed(state["pos_embed"], grid)
    return out


#: Keys only SatMAE++'s multi-scale MAE has (its upsampling decoder): they tell the two releases apart.
_SATMAE_PP_KEYS: tuple[str, ...] = ("proj_up_conv.", "up_block1.", "up_block2.")


def _check_satmae_release(path: Path, spec: BaselineSpec, state: Mapping[str, Tensor]) -> None:
    """SatMAE and SatMAE++ publish the same encoder layout; their full pretraining files differ in the
    decoder: SatMAE++'s holds the upsampling blocks of its multi-scale reconstruction. An encoder-only
    file cannot be told apart (and is accepted)."""
    upsampling = any(key.startswith(_SATMAE_PP_KEYS) for key in state)
    mae_decoder = any(key.startswith("decoder_embed.") for key in state)
    if spec.name == "satmae" and upsampling:
        raise _refuse(path, spec, state, "it holds SatMAE++'s multi-scale upsampling decoder (proj_up_conv, "
                      "up_block1/2): it is the satMAE++ release, use baseline satmae++")
    if spec.name == "satmae++" and mae_decoder and not upsampling:
        raise _refuse(path, spec, state, "it holds an MAE decoder without SatMAE++'s upsampling blocks "
                      "(proj_up_conv, up_block1/2): it is SatMAE's release pretrain-vit-large-e199.pth, use "
                      "baseline satmae")


def _dofa_vit(path: Path, spec: BaselineSpec, state: dict[str, Tensor], vit: ViTConfig, modality: str,
              target: nn.Module | None) -> dict[str, Tensor]:
    generator = "patch_embed.weight_generator."
    _need(path, spec, state, f"{generator}fc_weight.weight", f"{generator}weight_tokens", "patch_embed.fclayer.w1.weight",
          "pos_embed")
    out = _blocks(path, spec, state, vit)
    rows = state[f"{generator}fc_weight.weight"].shape[0]
    _check_patch(path, spec, math.isqrt(rows // vit.embed_dim))
    out.update({key: value for key, value in state.items() if key.startswith("patch_embed.")})
    grid = math.isqrt(target.pos_embed.shape[1] - 1) if target is not None else math.isqrt(state["pos_embed"].shape[1] - 1)
    out["pos_embed"] = _resampled_pos_embed(state["pos_embed"], grid)
    return out


def _satlas_layout(path: Path, state: Mapping[str, Tensor]) -> str | None:
    """What a SatlasPretrain file is when it is not the single-image ResNet (None: it is).

    Satlas files key the backbone under ``backbone.``: single-image ResNets ``backbone.resnet.*``,
    single-image Swin-v2 ``backbone.backbone.features.*``; multi-image models wrap the backbone in an
    AggregationBackbone, one more ``backbone.``: ``backbone.backbone.resnet.*``,
    ``backbone.backbone.backbone.features.*``. satlaspretrain_models strips these prefixes when it loads a
    ResNet, so a multi-image ResNet may also come keyed ``backbone.resnet.*``: its published file name
    (``*_mi_*``) then says what it is.
    """
    if any(key.startswith("backbone.backbone.backbone.features.") for key in state):
        return "it is a multi-image (MI) Swin-v2 model (keys backbone.backbone.backbone.features.*), not a ResNet-50"
    if any(key.startswith("backbone.backbone.features.") for key in state):
        return "it is a single-image Swin-v2 model (keys backbone.backbone.features.*), not a ResNet-50"
    if any(key.startswith("backbone.backbone.resnet.") for key in state):
        return ("it is a multi-image (MI) ResNet (AggregationBackbone keys backbone.backbone.resnet.*); the "
                "paper's baseline is single-image (SI)")
    if re.search(r"(^|[_\-.])mi([_\-.]|$)", path.stem.lower()):
        return ("its published name says multi-image (MI, '_mi_'); the paper's baseline is the single-image "
                "(SI) file")
    return None


def _satlas_resnet(path: Path, spec: BaselineSpec, state: dict[str, Tensor], modality: str,
                   input_bands: Sequence[str]) -> dict[str, Tensor]:
    from cromss import bands as band_ids

    layout = _satlas_layout(path, state)
    if layout is not None:
        raise _refuse(path, spec, state, layout)
    prefix = "backbone.resnet."
    _need(path, spec, state, f"{prefix}conv1.weight")
    out = {key[len(prefix):]: value for key, value in state.items()
           if key.startswith(prefix) and not key.startswith(f"{prefix}fc.")}
    from cromss.weights import infer_resnet_name

    if infer_resnet_name(out) != "resnet50":
        raise _refuse(path, spec, state, f"its backbone is {infer_resnet_name(out) or 'not a ResNet'}, not a ResNet-50")
    bands = spec.bands_for(modality)
    conv1 = out["conv1.weight"]
    if conv1.shape[1] != len(bands):
        what = " (an RGB model)" if conv1.shape[1] == 3 else ""
        raise _refuse(path, spec, state, f"its first conv takes {conv1.shape[1]} bands{what}, not the {len(bands)} "
                      f"of {bands}")
    # one kernel slice per band: reorder the slices from Satlas's band order to the input's, BY NAME
    out["conv1.weight"] = conv1[:, band_ids.pick(bands, input_bands, modality)].contiguous()
    return out


def read_baseline_checkpoint(
    path: str | Path, name: str, modality: str, input_bands: Sequence[str], vit: ViTConfig | None = None,
    target: nn.Module | None = None,
) -> dict[str, Tensor]:
    """The encoder state dict of baseline ``name`` from its published file, in cromss key names.

    ``target``: the encoder it will be loaded into (its position-embedding grid is matched).
    """
    spec = baseline_spec(name)
    path = Path(path)
    state = _read_file(path, spec)
    if not spec.is_vit:
        return _satlas_resnet(path, spec, state, modality, input_bands)
    readers = {"plain_vit": _plain_vit, "group_vit": _group_vit, "dofa_vit": _dofa_vit}
    return readers[spec.family](path, spec, state, vit or ViTConfig(), modality, target)


def load_baseline_weights(
    model: nn.Module, source: str, name: str, modality: str, input_bands: Sequence[str], vit: ViTConfig | None = None,
) -> dict[str, Any]:
    """Fill ``model.encoder`` (strictly) from baseline ``name``'s file ``source``; returns an info dict."""
    spec = baseline_spec(name)
    if source == "random":
        return {"source": "random", "baseline": name}
    state = read_baseline_checkpoint(source, name, modality, input_bands, vit, target=model.encoder)
    expected = set(model.encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: the {spec.title} weights do not fit the model's encoder: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    try:
        with torch.no_grad():
            model.encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{source}: the {spec.title} weights do not fit the model's encoder: {err}") from None
    return {
        "source": str(source), "layout": spec.name, "baseline": name, "modality": modality,
        "bands": list(spec.encoder_bands(modality)) if spec.is_vit else list(input_bands),
    }
