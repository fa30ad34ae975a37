"""Decoders for ViT encoders: UPerNet (smp's decoder on a resized block-output pyramid) and Segmenter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class UPerNetHead(nn.Module):
    """UPerNet on ViT features: 4 block outputs (stride p) resized to ``strides``, then smp's decoder.

    The resize is bilinear without learnt parameters, as the authors' ``models/vit/upernet.py``; smp's
    ``UPerNetDecoder`` (PSP on the coarsest map, FPN, fusion) and ``SegmentationHead`` do the rest.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, strides: Sequence[int],
                 channels: int = 256) -> None:
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

        self.patch_size = patch_size
        self.strides = tuple(strides)
        # smp's decoder skips the first two (stride 1, 2) entries of a 6-level pyramid
        self.decoder = UPerNetDecoder(encoder_channels=[0, 0] + [embed_dim] * 4, encoder_depth=5,
                                      decoder_channels=channels)
        self.head = SegmentationHead(channels, num_classes, kernel_size=1, upsampling=1)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        pyramid = [
            F.interpolate(feature, scale_factor=self.patch_size / stride, mode="bilinear", align_corners=False)
            if stride != self.patch_size else feature
            for feature, stride in zip(features, self.strides)
        ]
        logits = self.head(self.decoder([None, None, *pyramid]))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmenterHead(nn.Module):
    """Segmenter's mask transformer (Strudel et al. 2021) on the last block output.

    Patch tokens and one learnt embedding per class pass ``layers`` transformer blocks; the masks are
    the scalar products of the L2-normalised patch and class embeddings (then LayerNorm over classes).
    Settings as the authors' ``models/vit/segmenter.py``: d_model = encoder width, heads = width / 64,
    2 layers, dropout 0.1.
    """

    def __init__(self, embed_dim: int, num_classes: int, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        heads = max(1, embed_dim // 64)
        while embed_dim % heads:
            heads -= 1
        self.proj_dec = nn.Linear(embed_dim, embed_dim)
        self.cls_emb = nn.Parameter(torch.randn(1, num_classes, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, heads, mlp_ratio=4.0, qkv_bias=True, proj_drop=dropout) for _ in range(layers)]
        )
        self.proj_patch = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim))
        self.proj_classes = nn.Parameter(embed_dim**-0.5 * torch.randn(embed_dim, embed_dim))
        self.decoder_norm = nn.LayerNorm(embed_dim)
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        last = features[-1]  # [B, D, h, w]
        batch, _, height, width = last.shape
        tokens = self.proj_dec(last.flatten(2).transpose(1, 2))
        tokens = torch.cat([tokens, self.cls_emb.expand(batch, -1, -1)], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.decoder_norm(tokens)
        patches = F.normalize(tokens[:, : -self.num_classes] @ self.proj_patch, dim=-1)
        classes = F.normalize(tokens[:, -self.num_classes :] @ self.proj_classes, dim=-1)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))  # [B, h*w, C]
        masks = masks.transpose(1, 2).reshape(batch, self.num_classes, height, width)
        return F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
