"""Segmentation models of the transfer step: smp frameworks, encoder weights, input padding."""

from __future__ import annotations

from typing import Any

import torch

from cromss.errors import CheckpointError, ConfigError
from cromss.models import pad_to_multiple  # noqa: F401  (public here since the transfer split)


def build_segmentation_model(framework: str, encoder: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """An smp model with smp's default decoder settings and NO downloaded weights.

    smp defaults kept on purpose (they are what the paper's smp models used): PSPNet
    ``encoder_depth=3`` (layer3/layer4 stay in the encoder, unused, so full ResNet weights still load
    strictly), DeepLabV3+ ``encoder_output_stride=16``.
    """
    import segmentation_models_pytorch as smp

    classes = {
        "pspnet": smp.PSPNet, "deeplabv3plus": smp.DeepLabV3Plus, "fpn": smp.FPN,
        "unet": smp.Unet, "upernet": smp.UPerNet,
    }
    if framework not in classes:
        raise ConfigError(f"framework {framework!r} is not one of {list(classes)}")
    try:
        return classes[framework](
            encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(f"cannot build {framework} with encoder {encoder!r}: {err}") from None


def load_encoder_weights(
    model: torch.nn.Module, source: str, modality: str, in_channels: int, encoder_name: str | None = None,
    bands: list[str] | None = None, init_missing: str | None = None,
) -> dict[str, Any]:
    """Load an encoder source into ``model.encoder`` (strict); returns the source's info dict.

    ``source='random'`` leaves smp's random initialisation. Every other source goes through
    :func:`cromss.weights.encoder_state_dict`, which maps it to smp/timm ResNet keys; with ``bands``
    (the model's input band names) the first-conv channels are selected BY NAME from the weights' bands
    (a band they lack is an error unless ``init_missing`` is 'mean' or 'zero').
    """
    if source == "random":
        return {"source": "random"}
    from cromss.weights import encoder_state_dict

    state_dict, info = encoder_state_dict(
        source, modality=modality, in_channels=in_channels, bands=bands, init_missing=init_missing
    )
    pretrained_name = info.get("encoder") if isinstance(info, dict) else None
    if pretrained_name and encoder_name and pretrained_name != encoder_name:
        raise CheckpointError(
            f"{source} holds a {pretrained_name} encoder but the config asks for {encoder_name}: "
            f"set encoder={pretrained_name}"
        )
    target_keys = set(model.encoder.state_dict())
    missing = sorted(target_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - target_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"encoder weights from {source} do not fit the model's encoder: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); is the config's 'encoder' the pretrained architecture?"
        )
    try:
        model.encoder.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"encoder weights from {source} do not fit the model's encoder: {err}") from None
    if not isinstance(info, dict):
        return {"source": source, "info": str(info)}
    # the pretraining config and export metadata stay in the source; keep what identifies it
    keep = ("source", "layout", "modality", "in_channels", "encoder", "bands", "prefix", "band_selection")
    return {key: info[key] for key in keep if key in info}


def build_model(cfg: Any) -> torch.nn.Module:
    """The segmentation model of a FinetuneConfig: an smp model, or a ViT baseline (``cfg.baseline``)."""
    if cfg.baseline is not None:
        from cromss.baselines.registry import BASELINES

        if BASELINES[cfg.baseline].is_vit:
            from cromss.baselines.model import build_baseline_model

            return build_baseline_model(cfg.baseline, cfg.framework, cfg.modality, cfg.input_bands, cfg.classes, cfg.vit)
    return build_segmentation_model(cfg.framework, cfg.encoder, cfg.in_channels, cfg.classes)


def load_source_weights(model: torch.nn.Module, cfg: Any) -> dict[str, Any]:
    """Load the encoder source of a FinetuneConfig into ``model.encoder``; returns its info dict."""
    if cfg.baseline is not None:
        from cromss.baselines.checkpoints import load_baseline_weights

        return load_baseline_weights(model, cfg.weights, cfg.baseline, cfg.modality, cfg.input_bands, cfg.vit)
    return load_encoder_weights(model, cfg.weights, cfg.modality, cfg.in_channels, encoder_name=cfg.encoder,
                                bands=cfg.band_names, init_missing=cfg.init_missing)
