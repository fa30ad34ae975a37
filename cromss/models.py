"""The CromSS pretraining network: a pair of smp U-Nets in middle or late fusion (Sec. III-A, Fig. 4).

* ``late`` fusion: one U-Net per modality (own encoder, decoder and head); the modalities only meet
  in the consistency loss (Fig. 4b).
* ``mid`` (middle) fusion: one encoder per modality, ONE shared decoder and ONE shared head applied
  to each modality's features (Fig. 4c).
* ``single``: one U-Net for one modality (the single-modal baseline, Fig. 4a).

State-dict layout of :class:`CromSSNet` (a Lightning checkpoint of the pretraining module stores the
same keys with the prefix ``net.``):

================  ===========================================================================
key prefix        content
================  ===========================================================================
``encoders.s1.``  smp encoder of Sentinel-1 (keys exactly as ``smp.Unet(...).encoder``)
``encoders.s2.``  smp encoder of Sentinel-2
``decoders.X.``   smp ``UnetDecoder``; ``X`` = ``shared`` (mid) or the modality (late, single)
``heads.X.``      smp ``SegmentationHead``; same ``X`` as the decoder
================  ===========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from cromss.errors import ConfigError, DataError
from cromss.schema import DW_CLASSES, modality_bands

#: The encoder depth of every CromSS U-Net (5 downsamplings → inputs divisible by 32).
ENCODER_DEPTH: int = 5
#: Name of the decoder / head entry shared by all modalities in middle fusion.
SHARED: str = "shared"
FUSIONS: tuple[str, ...] = ("mid", "late", "single")
MODALITIES: tuple[str, ...] = ("s1", "s2")


@dataclass
class ModelConfig:
    """YAML section ``model:`` — architecture of the pretraining network.

    ``encoder`` is any smp encoder name (``resnet50`` as the paper; ``resnet18`` for quick tests),
    ``fusion`` one of ``mid`` | ``late`` | ``single``; ``single`` takes exactly one modality.
    ``modalities`` / ``num_classes`` None = taken from the data when a run resolves its config (the paper's
    ['s1', 's2'] and 9 Dynamic World classes for a model built on its own). ``bands``: band names per
    modality (any sensor); None = the Sentinel-1 (VV, VH) and Sentinel-2 (13 or 9, ``s2_bands``) tables.
    """

    encoder: str = "resnet50"
    fusion: str = "mid"
    modalities: list[str] | None = None
    s2_bands: int = 13
    num_classes: int | None = None
    bands: dict[str, list[str]] | None = None
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    head_kernel: int = 3
    channels_last: bool = False

    def modality_list(self) -> list[str]:
        """The modalities; the paper's ['s1', 's2'] when unresolved."""
        return list(self.modalities) if self.modalities is not None else list(MODALITIES)

    def class_count(self) -> int:
        """The number of classes; the 9 Dynamic World classes when unresolved."""
        return self.num_classes if self.num_classes is not None else DW_CLASSES.num_classes

    def filled(self) -> ModelConfig:
        """A copy with ``modalities`` and ``num_classes`` made concrete (defaults where unresolved)."""
        from dataclasses import replace

        return replace(self, modalities=self.modality_list(), num_classes=self.class_count())

    def validate(self) -> None:
        """Raise ConfigError naming the ``model.*`` key of an impossible value."""
        if self.fusion not in FUSIONS:
            raise ConfigError(f"config key 'model.fusion': {self.fusion!r} is not one of {list(FUSIONS)}")
        modalities = self.modality_list()
        unknown = [m for m in modalities if m not in MODALITIES and m not in (self.bands or {})]
        if unknown:
            raise ConfigError(
                f"config key 'model.modalities': unknown modality {unknown[0]!r} (expected 's1' and/or 's2', "
                "or a modality named in model.bands)"
            )
        if len(set(modalities)) != len(modalities):
            raise ConfigError(f"config key 'model.modalities': duplicate entries in {modalities}")
        if self.fusion == "single" and len(modalities) != 1:
            raise ConfigError(
                f"config key 'model.modalities': fusion 'single' needs exactly one modality, "
                f"got {modalities}"
            )
        if self.fusion in ("mid", "late") and len(modalities) < 2:
            raise ConfigError(
                f"config key 'model.modalities': fusion {self.fusion!r} needs two modalities "
                f"(or more), got {modalities}; use fusion 'single' for one"
            )
        for modality, bands in (self.bands or {}).items():
            if not bands or len(set(bands)) != len(bands):
                raise ConfigError(f"config key 'model.bands.{modality}': {bands!r} must list distinct band names")
        if self.s2_bands not in (13, 9):
            raise ConfigError(f"config key 'model.s2_bands': must be 13 or 9, got {self.s2_bands}")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            # class ids share uint8 label maps with the ignore value 255
            raise ConfigError(f"config key 'model.num_classes': must be in 1..255, got {self.num_classes}")
        if len(self.decoder_channels) != ENCODER_DEPTH or any(c < 1 for c in self.decoder_channels):
            raise ConfigError(
                f"config key 'model.decoder_channels': need {ENCODER_DEPTH} positive channel counts "
                f"(one per decoder block), got {self.decoder_channels}"
            )
        if self.head_kernel < 1 or self.head_kernel % 2 == 0:
            # an even kernel with 'same' padding would shift the output by half a pixel
            raise ConfigError(
                f"config key 'model.head_kernel': must be a positive odd number, got {self.head_kernel}"
            )
        if not is_known_encoder(self.encoder):
            raise ConfigError(
                f"config key 'model.encoder': {self.encoder!r} is not an encoder of "
                "segmentation-models-pytorch (e.g. 'resnet18', 'resnet50', 'tu-convnext_tiny')"
            )

    def band_names(self, modality: str) -> tuple[str, ...]:
        """Band names of ``modality``'s input: ``bands[modality]``, else the S1 / S2 tables."""
        if self.bands and modality in self.bands:
            return tuple(self.bands[modality])
        return modality_bands(modality, self.s2_bands)

    def in_channels(self, modality: str) -> int:
        """Input channels of ``modality``: the number of its band names."""
        return len(self.band_names(modality))


def is_known_encoder(name: str) -> bool:
    """True if smp knows encoder ``name`` (``tu-*`` names are passed on to timm)."""
    import segmentation_models_pytorch as smp

    if name.startswith("tu-"):
        import timm

        return bool(timm.list_models(name[3:])) or bool(timm.list_models(name[3:].split(".")[0]))
    return name in smp.encoders.get_encoder_names()


def _make_encoder(name: str, in_channels: int) -> nn.Module:
    """An smp encoder with random weights (no download ever)."""
    import segmentation_models_pytorch as smp

    return smp.encoders.get_encoder(name, in_channels=in_channels, depth=ENCODER_DEPTH, weights=None)


def _make_unet(cfg: ModelConfig, modality: str) -> nn.Module:
    """An smp.Unet for ``modality`` with the configured decoder and head (random weights)."""
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.base import SegmentationHead
    from segmentation_models_pytorch.base import initialization as smp_init

    unet = smp.Unet(
        encoder_name=cfg.encoder,
        encoder_depth=ENCODER_DEPTH,
        encoder_weights=None,
        decoder_channels=tuple(cfg.decoder_channels),
        in_channels=cfg.in_channels(modality),
        classes=cfg.num_classes,
    )
    if cfg.head_kernel != 3:  # smp 0.6 fixes the U-Net head kernel at 3
        unet.segmentation_head = SegmentationHead(
            in_channels=cfg.decoder_channels[-1], out_channels=cfg.num_classes, kernel_size=cfg.head_kernel
        )
        smp_init.initialize_head(unet.segmentation_head)
    return unet


class CromSSNet(nn.Module):
    """U-Net pair (or single U-Net) of CromSS; see the module docstring for the key layout.

    Attributes:
        cfg: the :class:`ModelConfig` it was built from.
        fusion: ``'mid'``, ``'late'`` or ``'single'``.
        modalities: configured modalities, in order.
        encoders: modality → smp encoder.
        decoders: ``'shared'`` (mid) or modality → smp ``UnetDecoder``.
        heads: same keys as ``decoders`` → smp ``SegmentationHead``.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        cfg = cfg.filled()
        self.cfg = cfg
        self.fusion = cfg.fusion
        self.modalities: tuple[str, ...] = tuple(cfg.modalities)
        self.encoders = nn.ModuleDict()
        self.decoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        if cfg.fusion == "mid":
            # the reference U-Net gives the shared decoder/head; S2 as in the authors' release
            reference = "s2" if "s2" in self.modalities else self.modalities[0]
            unet = _make_unet(cfg, reference)
            for modality in self.modalities:
                self.encoders[modality] = (
                    unet.encoder
                    if modality == reference
                    else _make_encoder(cfg.encoder, cfg.in_channels(modality))
                )
            self.decoders[SHARED] = unet.decoder
            self.heads[SHARED] = unet.segmentation_head
        else:
            for modality in self.modalities:
                unet = _make_unet(cfg, modality)
                self.encoders[modality] = unet.encoder
                self.decoders[modality] = unet.decoder
                self.heads[modality] = unet.segmentation_head

    def branch_key(self, modality: str) -> str:
        """Key into ``decoders``/``heads`` used by ``modality``."""
        return SHARED if self.fusion == "mid" else modality

    def _check_input(self, modality: str, x: Any) -> None:
        if not isinstance(x, Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DataError(f"input '{modality}' must be a tensor [B, C, H, W], got {shape}")
        expected = self.cfg.in_channels(modality)
        if x.shape[1] != expected:
            bands = ", ".join(self.cfg.band_names(modality))
            raise DataError(
                f"input '{modality}' has {x.shape[1]} bands, the model expects {expected} ({bands})"
            )
        height, width = x.shape[-2:]
        divisor = 2**ENCODER_DEPTH
        if height % divisor or width % divisor:
            raise DataError(
                f"input '{modality}' is {height}x{width} px; the U-Net needs height and width divisible by "
                f"{divisor} (e.g. crop or pad to {_round_up(height, divisor)}x{_round_up(width, divisor)})"
            )

    def forward_modality(self, modality: str, x: Tensor) -> Tensor:
        """Logits [B, num_classes, H, W] of one modality's U-Net for input x [B, C_m, H, W]."""
        if modality not in self.encoders:
            raise DataError(f"modality {modality!r} is not part of this model (has {list(self.modalities)})")
        self._check_input(modality, x)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features = self.encoders[modality](x)
        key = self.branch_key(modality)
        return self.heads[key](self.decoders[key](features))

    def forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """{'s1': [B,2,H,W], 's2': [B,C2,H,W]} → {'s1': logits [B,C,H,W], 's2': logits [B,C,H,W]}.

        Only the configured modalities are used (other keys, e.g. labels of a batch, are ignored);
        a configured modality missing from ``inputs`` raises DataError.
        """
        missing = [m for m in self.modalities if m not in inputs]
        if missing:
            raise DataError(
                f"model input lacks modality {missing[0]!r}; got keys {sorted(inputs)}, "
                f"the model needs {list(self.modalities)}"
            )
        return {m: self.forward_modality(m, inputs[m]) for m in self.modalities}

    def as_smp_unet(self, modality: str) -> nn.Module:
        """A plain ``smp.Unet`` for ``modality`` that SHARES this net's modules (no copy).

        Handy for inference/prediction and for smp utilities; changes to one are seen by the other.
        """
        if modality not in self.encoders:
            raise DataError(f"modality {modality!r} is not part of this model (has {list(self.modalities)})")
        import segmentation_models_pytorch as smp

        # a depth-1 tiny shell avoids building a throw-away full-size encoder/decoder
        unet = smp.Unet(
            encoder_name="resnet18",
            encoder_depth=1,
            encoder_weights=None,
            decoder_channels=(16,),
            in_channels=self.cfg.in_channels(modality),
            classes=self.cfg.num_classes,
        )
        key = self.branch_key(modality)
        unet.encoder = self.encoders[modality]
        unet.decoder = self.decoders[key]
        unet.segmentation_head = self.heads[key]
        unet.name = f"u-{self.cfg.encoder}"
        return unet


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def build_model(cfg: ModelConfig) -> CromSSNet:
    """Build the CromSS network described by ``cfg`` (random init, no downloads)."""
    net = CromSSNet(cfg)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters' elements (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())
