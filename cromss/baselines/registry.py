"""What each comparison baseline of the paper is: input bands (by name), patch size, published file.

The band lists are the bands each published model was pretrained on, in the order its first layer
expects them; cromss picks them by name from the task's input (``cromss.baselines.bands``), so a
13-band or 9-band Sentinel-2 input feeds every baseline that its bands cover.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cromss import bands as band_ids
from cromss.baselines.bands import band_indices
from cromss.errors import ConfigError
from cromss.schema import S1_BANDS, S2_9BANDS

#: Segmentation frameworks for ViT encoders (the ResNet baselines use the smp frameworks).
VIT_FRAMEWORKS: tuple[str, ...] = ("upernet", "segmenter")


@dataclass(frozen=True)
class BaselineSpec:
    """One comparison baseline: architecture family, input bands, and the published file it reads."""

    name: str
    #: Row name in the paper's tables (the band count is appended for Sentinel-2, e.g. "satMAE (10B)").
    title: str
    family: Literal["plain_vit", "group_vit", "dofa_vit", "resnet"]
    #: modality -> band names in the order the pretrained first layer takes them
    bands: dict[str, tuple[str, ...]]
    #: ViT patch size of the published model (None for the ResNet)
    patch_size: int | None
    #: satMAE-style channel groups (band names), each embedded by its own patch embedding
    channel_groups: tuple[tuple[str, ...], ...] = ()
    file: str = ""
    source: str = ""
    licence: str = ""
    #: the published model's own input normalisation (cromss feeds its standard input, see docs)
    normalisation: str = ""
    #: key layout of the published file, as named in error messages
    layout: str = ""
    pretraining: str = ""

    @property
    def is_vit(self) -> bool:
        return self.family != "resnet"

    def bands_for(self, modality: str) -> tuple[str, ...]:
        if modality not in self.bands:
            raise ConfigError(
                f"baseline '{self.name}' has no {modality.upper()} model (it takes: {', '.join(self.bands)})"
            )
        return self.bands[modality]

    def encoder_bands(self, modality: str) -> tuple[str, ...]:
        """The bands the encoder takes, in its order (satMAE: its channel groups, concatenated)."""
        if self.channel_groups:
            return tuple(band for group in self.channel_groups for band in group)
        return self.bands_for(modality)

    def check_input(self, modality: str, input_bands: Sequence[str]) -> None:
        """Raise ConfigError unless the input holds the bands this baseline takes (ResNet: exactly those)."""
        wanted = self.bands_for(modality)
        if self.is_vit:
            band_indices(input_bands, self.encoder_bands(modality), f"baseline '{self.name}'", modality)
        elif len(input_bands) != len(wanted) or band_ids.missing_bands(input_bands, wanted, modality):
            raise ConfigError(
                f"baseline '{self.name}' takes exactly the bands {list(wanted)} (its first conv has one slice per "
                f"band); the input has {list(input_bands)} (set s2_bands: {len(wanted)})"
            )

    def row_title(self, modality: str) -> str:
        """The paper's row name: Sentinel-2 rows carry the band count, e.g. ``satMAE++ (10B)``."""
        return f"{self.title} ({len(self.bands_for(modality))}B)" if modality == "s2" else self.title

    def folder_label(self, modality: str) -> str:
        """A folder-safe run label, e.g. ``satMAE++_10B``."""
        return f"{self.title}_{len(self.bands_for(modality))}B" if modality == "s2" else self.title


_SATMAE_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
_SATMAE_GROUPS = (("B2", "B3", "B4", "B8"), ("B5", "B6", "B7", "B8A"), ("B11", "B12"))
_SATMAE_NORM = "per band mean ± 2σ (fMoW-Sentinel statistics) scaled to [0, 1]"
_GROUP_LAYOUT = (
    "SatMAE group-channel ViT: {'model': {cls_token, pos_embed [1, 1+N, D-256], channel_embed [1, 3, 256], "
    "patch_embed.<g>.proj.weight [D, |group g|, 8, 8] for g = 0, 1, 2, blocks.<i>.* }}"
)

BASELINES: dict[str, BaselineSpec] = {
    "scalemae": BaselineSpec(
        name="scalemae", title="scaleMAE", family="plain_vit",
        bands={"s2": ("B4", "B3", "B2")}, patch_size=16,
        file="scalemae-vitlarge-800.pth",
        source="github.com/bair-climate-initiative/scale-mae (release 'base-800')",
        licence="CC BY-NC 4.0 (repository licence; check before redistribution)",
        normalisation="RGB / 255, then ImageNet mean/std",
        layout="ViT with one patch embedding: {'model': {cls_token, patch_embed.proj.weight [D, 3, 16, 16], "
        "blocks.<i>.* }} (the position embedding is computed, GSD-scaled sin-cos)",
        pretraining="fMoW RGB, MAE with scale-aware masking",
    ),
    "satmae": BaselineSpec(
        name="satmae", title="satMAE", family="group_vit",
        bands={"s2": _SATMAE_BANDS}, patch_size=8, channel_groups=_SATMAE_GROUPS,
        file="pretrain-vit-large-e199.pth",
        source="github.com/sustainlab-group/SatMAE (README: fMoW-Sentinel pretrained ViT-Large, zenodo record 7338613)",
        licence="CC BY-NC 4.0 (repository licence; check before redistribution)",
        normalisation=_SATMAE_NORM, layout=_GROUP_LAYOUT,
        pretraining="fMoW-Sentinel (13 S2 bands, B1/B9/B10 dropped), group-channel MAE",
    ),
    "satmae++": BaselineSpec(
        name="satmae++", title="satMAE++", family="group_vit",
        bands={"s2": _SATMAE_BANDS}, patch_size=8, channel_groups=_SATMAE_GROUPS,
        file="checkpoint_ViT-L_pretrain_fmow_sentinel.pth",
        source="github.com/techmn/satmae_pp (README: ViT-Large fMoW-Sentinel pretraining weights)",
        licence="see the satmae_pp repository (derived from MAE / SatMAE code, CC BY-NC 4.0)",
        normalisation=_SATMAE_NORM, layout=_GROUP_LAYOUT,
        pretraining="fMoW-Sentinel, multi-scale group-channel MAE",
    ),
    "dofa": BaselineSpec(
        name="dofa", title="DOFA", family="dofa_vit",
        bands={"s2": S2_9BANDS, "s1": S1_BANDS}, patch_size=16,
        file="DOFA_ViT_large_e100.pth",
        source="huggingface.co/XShadow/DOFA (code: github.com/zhu-xlab/DOFA)",
        licence="MIT (github.com/zhu-xlab/DOFA LICENSE.txt); weights: see the model card",
        normalisation="per band (x - mean) / std of its pretraining data",
        layout="DOFA ViT, a plain state dict {cls_token, pos_embed, patch_embed.weight_generator.*, "
        "patch_embed.fclayer.*, blocks.<i>.* } (wavelength-conditioned patch embedding)",
        pretraining="SatlasPretrain, SSL4EO-S12 S1/S2, hyperspectral, NAIP (multi-modal MAE + distillation)",
    ),
    "satlas": BaselineSpec(
        name="satlas", title="Satlas", family="resnet",
        bands={"s2": ("B4", "B3", "B2", "B5", "B6", "B7", "B8", "B11", "B12")}, patch_size=None,
        file="sentinel2_resnet50_si_ms.pth",
        source="huggingface.co/allenai/satlas-pretrain (code: github.com/allenai/satlaspretrain_models)",
        licence="ODC-BY (SatlasPretrain weights; code Apache-2.0) — check the model card",
        normalisation="TCI (B4, B3, B2) 0–255 / 255; B5–B12 raw / 8160, clipped to [0, 1]",
        layout="SatlasPretrain model state dict {backbone.resnet.conv1.weight [64, 9, 7, 7], "
        "backbone.resnet.layer<k>.*, intermediates.*, heads.* }",
        pretraining="SatlasPretrain, supervised multi-task (single image, multispectral)",
    ),
}


def baseline_spec(name: str) -> BaselineSpec:
    """The spec of baseline ``name`` or a ConfigError listing the known ones."""
    if name not in BASELINES:
        raise ConfigError(f"baseline {name!r} is not one of {list(BASELINES)}")
    return BASELINES[name]


@dataclass
class ViTConfig:
    """ViT encoder size and ViT decoder settings (YAML section ``vit:``); defaults are ViT-Large.

    The encoder size must match the weight file (checked when loading); tests use tiny sizes.
    """

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    #: satMAE's channel-group embedding width (the rest of embed_dim holds the position embedding)
    channel_embed: int = 256
    #: blocks whose outputs feed the decoder (None: 4 evenly spaced, ending at the last block;
    #: ViT-Large: 5, 11, 17, 23 as the authors' code)
    out_indices: list[int] | None = None
    #: output strides (w.r.t. the input) the 4 block outputs are resized to for UPerNet. The authors'
    #: code used scale factors (p, p/2, p/4, p/8) = strides [1, 2, 4, 8]; [4, 8, 16, 32] (mmseg's
    #: ViT-UPerNet strides) needs 16x less decoder memory.
    pyramid_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    decoder_channels: int = 256
    segmenter_layers: int = 2
    segmenter_dropout: float = 0.1

    def validate(self) -> None:
        if self.embed_dim < 8 or self.depth < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ConfigError(
                f"config keys 'vit.embed_dim'/'vit.num_heads'/'vit.depth': embed_dim {self.embed_dim} must be a "
                f"multiple of num_heads {self.num_heads}, depth {self.depth} >= 1"
            )
        if self.embed_dim % 4:
            raise ConfigError(f"config key 'vit.embed_dim' must be a multiple of 4 (sin-cos embedding), got {self.embed_dim}")
        if self.channel_embed < 2 or self.channel_embed % 2:
            raise ConfigError(f"config key 'vit.channel_embed' must be even and >= 2, got {self.channel_embed}")
        indices = self.block_indices()
        if len(indices) != 4 or any(not 0 <= i < self.depth for i in indices) or indices != sorted(set(indices)):
            raise ConfigError(f"config key 'vit.out_indices' must be 4 increasing block indices < depth {self.depth}, got {indices}")
        strides = self.pyramid_strides
        if len(strides) != 4 or any(s < 1 for s in strides) or strides != sorted(set(strides)):
            raise ConfigError(f"config key 'vit.pyramid_strides' must be 4 increasing strides >= 1, got {strides}")
        if self.decoder_channels < 1 or self.segmenter_layers < 1 or not 0 <= self.segmenter_dropout < 1:
            raise ConfigError("config keys 'vit.decoder_channels'/'vit.segmenter_layers' must be >= 1, "
                              "'vit.segmenter_dropout' in [0, 1)")

    def check_group_width(self) -> None:
        """satMAE: the position embedding gets embed_dim - channel_embed channels (a 2-D sin-cos: multiple of 4)."""
        if not self.channel_embed < self.embed_dim or (self.embed_dim - self.channel_embed) % 4:
            raise ConfigError(
                f"config key 'vit.channel_embed' must be < vit.embed_dim ({self.embed_dim}) with the difference a "
                f"multiple of 4, got {self.channel_embed}"
            )

    def block_indices(self) -> list[int]:
        if self.out_indices is not None:
            return list(self.out_indices)
        step = self.depth / 4
        return [max(0, round(step * (k + 1)) - 1) for k in range(4)] if self.depth >= 4 else []
