"""Whole pretraining networks: our run folders / checkpoints and the official CromSS checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cromss.errors import CheckpointError, ConfigError
from cromss.schema import DW_CLASSES
from cromss.weights.layouts import _first_conv_in_channels, _num_classes, _sub_state_dict, infer_resnet_name
from cromss.weights.loading import _load_strict
from cromss.weights.sources import _key_list, _plain, _read_source


def _official_to_cromss_keys(flat: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Official CromSS checkpoint keys → CromSSNet keys; returns (state, fusion)."""
    if any(k.startswith("net.model1.") for k in flat):
        rename = {
            "net.model1.encoder.": "encoders.s1.",
            "net.model1.decoder.": "decoders.s1.",
            "net.model1.segmentation_head.": "heads.s1.",
            "net.model2.encoder.": "encoders.s2.",
            "net.model2.decoder.": "decoders.s2.",
            "net.model2.segmentation_head.": "heads.s2.",
        }
        fusion = "late"
    else:
        rename = {
            "net.encoder1.": "encoders.s1.",
            "net.encoder.": "encoders.s2.",
            "net.decoder.": "decoders.shared.",
            "net.segmentation_head.": "heads.shared.",
        }
        fusion = "mid"
    state = {}
    for key, value in flat.items():
        for old, new in rename.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = value
                break
    return state, fusion


def load_cromss_net(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a whole pretraining network (our run folder/checkpoint or an official CromSS checkpoint).

    Returns ``(net, config)``: a :class:`cromss.models.CromSSNet` in eval mode with the weights loaded
    strictly, and the config dict it was built from (the run's resolved config, or the settings read
    off an official checkpoint).
    """
    from cromss.config import from_dict
    from cromss.models import ModelConfig, build_model

    flat, hyper, config, _ = _read_source(source)
    if any(k.startswith("net.encoders.") for k in flat):
        state = _sub_state_dict(flat, "net.")
        if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
            raise CheckpointError(
                f"{source}: no model section in its config.yaml / hyper_parameters['config']"
            )
        try:
            model_cfg = from_dict(ModelConfig, dict(config["model"]), prefix="model.")
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}") from None
    elif any(k.startswith(("net.encoder1.", "net.model1.")) for k in flat):
        state, fusion = _official_to_cromss_keys(flat)
        s2_in = _first_conv_in_channels(_sub_state_dict(state, "encoders.s2."))
        encoder_name = infer_resnet_name(_sub_state_dict(state, "encoders.s2."))
        if encoder_name is None or s2_in not in (13, 9):
            raise CheckpointError(f"{source}: official CromSS layout but not a ResNet with 13/9 S2 bands")
        model_cfg = ModelConfig(
            encoder=encoder_name,
            fusion=fusion,
            modalities=["s1", "s2"],
            s2_bands=s2_in,
            num_classes=_num_classes(state) or DW_CLASSES.num_classes,
        )
        config = {
            "model": {
                "encoder": encoder_name,
                "fusion": fusion,
                "modalities": ["s1", "s2"],
                "s2_bands": s2_in,
                "num_classes": model_cfg.num_classes,
            },
            "official_hyper_parameters": _plain(hyper),
        }
    else:
        raise CheckpointError(
            f"{source} is not a CromSS pretraining checkpoint (no net.encoders.*, net.encoder1.* or "
            f"net.model1.* keys). First keys: {_key_list(list(flat))}"
        )
    net = build_model(model_cfg)
    _load_strict(net, state, str(source))
    return net.eval(), dict(config)
