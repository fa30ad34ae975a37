"""Baseline segmentation models: a ViT encoder + UPerNet / Segmenter head, or Satlas's smp ResNet-50."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cromss.baselines.bands import band_indices, wavelengths
from cromss.baselines.registry import VIT_FRAMEWORKS, BaselineSpec, ViTConfig, baseline_spec
from cromss.baselines.vit import DOFAViT, GroupChannelViT, PlainViT, ViTBackbone
from cromss.errors import ConfigError

#: Position-embedding grid side of a randomly initialised satMAE / DOFA encoder (their pretraining
#: grids: 96 px / 8 and 224 px / 16); a loaded file brings its own grid.
_DEFAULT_GRID = {"group_vit": 12, "dofa_vit": 14}


def build_vit_encoder(spec: BaselineSpec, modality: str, vit: ViTConfig, grid: int | None = None) -> ViTBackbone:
    """The ViT encoder of ``spec`` with the size of ``vit`` (no weights loaded)."""
    common = dict(embed_dim=vit.embed_dim, depth=vit.depth, num_heads=vit.num_heads,
                  patch_size=int(spec.patch_size or 16), out_indices=vit.block_indices())
    grid = grid or _DEFAULT_GRID.get(spec.family, 14)
    if spec.family == "plain_vit":
        return PlainViT(in_chans=len(spec.bands_for(modality)), **common)
    if spec.family == "group_vit":
        return GroupChannelViT(group_sizes=[len(g) for g in spec.channel_groups], channel_embed=vit.channel_embed,
                               grid=grid, **common)
    if spec.family == "dofa_vit":
        return DOFAViT(wavelengths=wavelengths(spec.bands_for(modality), modality), grid=grid, **common)
    raise ConfigError(f"baseline '{spec.name}' is not a ViT")


class ViTSegmentationModel(nn.Module):
    """Band selection -> ViT encoder -> UPerNet / Segmenter head, logits at the input size.

    ``freeze_encoder()`` mirrors smp's: no gradients for the encoder and the encoder kept in eval mode
    (ViTs have no BatchNorm, but dropout-free eval keeps it deterministic) even when ``train()`` is called.
    """

    def __init__(self, encoder: ViTBackbone, decoder: nn.Module, input_index: Sequence[int]) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.register_buffer("input_index", torch.tensor(list(input_index), dtype=torch.long), persistent=False)
        self._encoder_frozen = False

    def freeze_encoder(self) -> None:
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self._encoder_frozen = True
        self.encoder.eval()

    def train(self, mode: bool = True) -> ViTSegmentationModel:
        super().train(mode)
        if self._encoder_frozen:
            self.encoder.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        patch = self.encoder.patch_size
        pad_h, pad_w = (-height) % patch, (-width) % patch
        x = x.index_select(1, self.input_index)
        if pad_h or pad_w:  # whole patches only (the transfer module already pads; direct callers may not)
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        logits = self.decoder(self.encoder(x), (height + pad_h, width + pad_w))
        return logits[..., :height, :width]


def build_baseline_model(
    name: str, framework: str, modality: str, input_bands: Sequence[str], num_classes: int,
    vit: ViTConfig | None = None, grid: int | None = None,
) -> nn.Module:
    """The segmentation model of baseline ``name`` for an input with ``input_bands`` (names, in order).

    ``framework``: 'upernet' or 'segmenter'. (Satlas is an smp ResNet-50 model built by
    :mod:`cromss.transfer`.)
    """
    from cromss.baselines.heads import SegmenterHead, UPerNetHead

    spec = baseline_spec(name)
    vit = vit or ViTConfig()
    if not spec.is_vit:
        raise ConfigError(f"baseline '{name}' is a ResNet: build it as an smp model (framework {framework!r})")
    if framework not in VIT_FRAMEWORKS:
        raise ConfigError(f"baseline '{name}' is a ViT: framework must be one of {list(VIT_FRAMEWORKS)}, got {framework!r}")
    index = band_indices(input_bands, spec.encoder_bands(modality), f"baseline '{name}'", modality)
    encoder = build_vit_encoder(spec, modality, vit, grid)
    if framework == "upernet":
        decoder: nn.Module = UPerNetHead(vit.embed_dim, num_classes, encoder.patch_size, vit.pyramid_strides,
                                         vit.decoder_channels)
    else:
        decoder = SegmenterHead(vit.embed_dim, num_classes, vit.segmenter_layers, vit.segmenter_dropout)
    return ViTSegmentationModel(encoder, decoder, index)
