"""ViT encoders of the baselines, built on timm ``Block``s with the published models' module names.

Three patch-embedding families feed the same transformer trunk:

* :class:`PlainViT` (scaleMAE): one convolutional patch embedding, sin-cos position embedding computed
  for the input grid (scaleMAE's GSD-scaled embedding at resolution ratio 1);
* :class:`GroupChannelViT` (satMAE, satMAE++): one patch embedding per channel group, a stored position
  embedding (resampled to the input grid) concatenated with a per-group channel embedding;
* :class:`DOFAViT`: a wavelength-conditioned dynamic patch embedding whose kernel a small transformer
  generates from the input bands' wavelengths.

Each returns the outputs of 4 chosen blocks as maps ``[B, D, H/p, W/p]`` (satMAE: averaged over its
channel groups, as the authors' code). Block outputs are used before any final norm (the authors
replace the ViT's final norm by the identity).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """MAE's 1-D sin-cos embedding ``[M, dim]`` of positions ``[M]``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    angles = positions.double().reshape(-1, 1) * omega.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int, device: torch.device | None = None) -> Tensor:
    """MAE's 2-D sin-cos embedding ``[height * width, dim]`` (half the channels per axis, x first)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64, device=device),
        torch.arange(width, dtype=torch.float64, device=device), indexing="ij",
    )
    return torch.cat([sincos_1d(dim // 2, xs.flatten()), sincos_1d(dim // 2, ys.flatten())], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding (a strided conv named ``proj`` as in timm / MAE)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, L, D]


class ViTBackbone(nn.Module):
    """The transformer trunk shared by the three families; subclasses embed the patches."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        #: input sides must divide by this (the transfer module pads to it)
        self.output_stride = patch_size
        self.out_indices = tuple(out_indices)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        )
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        """Tokens ``[B, 1 + G*L, D]`` (class token first) and the number of token groups G."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens, groups = self.embed(x)
        features = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.out_indices:
                patches = tokens[:, 1:]
                batch, _, dim = patches.shape
                # satMAE: G token groups per location -> their mean (the authors' reduction)
                patches = patches.reshape(batch, groups, height * width, dim).mean(1)
                features.append(patches.transpose(1, 2).reshape(batch, dim, height, width))
            if len(features) == len(self.out_indices):
                break  # later blocks cannot change the returned features
        return features


class PlainViT(ViTBackbone):
    """scaleMAE: ViT with one patch embedding and a sin-cos position embedding computed per input size."""

    def __init__(self, in_chans: int, embed_dim: int, depth: int, num_heads: int, patch_size: int,
                 out_indices: Sequence[int]) -> None:
        super().__init__(embed_dim, depth, num_heads, patch_size, out_indices)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)

    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = self.patch_embed(x)
        pos = sincos_2d(self.embed_dim, height, width, device=x.device).to(patches.dtype)
        # the class token gets a zero position embedding (MAE / scaleMAE)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches + pos.unsqueeze(0)], dim=1), 1


def _resample_grid(pos_embed: Tensor, height: int, width: int) -> Tensor:
    """Patch part of a stored ``[1, 1 + n*n, C]`` position embedding, resampled to ``[1, H*W, C]`` (bicubic)."""
    grid = pos_embed[:, 1:]
    side = math.isqrt(grid.shape[1])
    if (side, side) == (height, width):
        return grid
    return resample_abs_pos_embed(grid, new_size=[height, width], old_size=[side, side], num_prefix_tokens=0)


class GroupChannelViT(ViTBackbone):
    """satMAE / satMAE++: one patch embedding per band group; tokens carry position + group embeddings."""

    def __init__(self, group_sizes: Sequence[int], embed_dim: int, depth: int, num_heads: int, patch_size: int,
                 out_indices: Sequence[int], channel_embed: int, grid: int) -> None:
        super().__init__(embed_dim, depth, num_heads, patch_size, out_indices)
        self.group_sizes = tuple(group_sizes)
        self.patch_embed = nn.ModuleList([PatchEmbed(size, embed_dim, patch_size) for size in group_sizes])
        # fixed sin-cos initialisation as SatMAE (loaded weights overwrite it)
        pos = sincos_2d(embed_dim - channel_embed, grid, grid)
        self.pos_embed = nn.Parameter(torch.cat([torch.zeros(1, pos.shape[1]), pos]).unsqueeze(0))
        chan = sincos_1d(channel_embed, torch.arange(len(group_sizes)))
        self.channel_embed = nn.Parameter(chan.unsqueeze(0))

    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        groups = torch.split(x, list(self.group_sizes), dim=1)  # input arrives group-ordered
        tokens = torch.stack([embed(group) for embed, group in zip(self.patch_embed, groups)], dim=1)  # [B,G,L,D]
        batch, num_groups, length, _ = tokens.shape
        pos = _resample_grid(self.pos_embed, height, width).unsqueeze(1).expand(-1, num_groups, -1, -1)
        chan = self.channel_embed.unsqueeze(2).expand(-1, -1, length, -1)
        tokens = tokens + torch.cat([pos, chan], dim=-1)
        # the class token without position/channel embedding, as the authors' code
        cls = self.cls_token.expand(batch, -1, -1)
        return torch.cat([cls, tokens.reshape(batch, num_groups * length, -1)], dim=1), num_groups


class _FCResLayer(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(size, size)
        self.w2 = nn.Linear(size, size)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.relu(self.w2(F.relu(self.w1(x))))


class _WeightGenerator(nn.Module):
    """Generates the patch-embedding kernel (one slice per input band) and bias from wavelength tokens."""

    def __init__(self, wv_planes: int, kernel_numel: int, embed_dim: int, num_tokens: int = 128,
                 ff_dim: int = 2048) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=wv_planes, nhead=4, dim_feedforward=ff_dim, dropout=0.0, activation="gelu",
            batch_first=False, norm_first=False,
        )
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)
        self.fc_weight = nn.Linear(wv_planes, kernel_numel)
        self.fc_bias = nn.Linear(wv_planes, embed_dim)
        self.weight_tokens = nn.Parameter(torch.randn(num_tokens, wv_planes) * 0.02)
        self.bias_token = nn.Parameter(torch.randn(1, wv_planes) * 0.02)

    def forward(self, waves: Tensor) -> tuple[Tensor, Tensor]:
        count = self.weight_tokens.shape[0]
        out = self.transformer_encoder(torch.cat([self.weight_tokens, waves, self.bias_token], dim=0))
        return self.fc_weight(out[count:-1] + waves), self.fc_bias(out[-1])


class DynamicPatchEmbed(nn.Module):
    """DOFA's patch embedding: kernel and bias generated from the band wavelengths (micrometres)."""

    def __init__(self, embed_dim: int, patch_size: int, wv_planes: int = 128, num_tokens: int = 128,
                 ff_dim: int = 2048) -> None:
        super().__init__()
        self.embed_dim, self.kernel_size, self.wv_planes = embed_dim, patch_size, wv_planes
        self.weight_generator = _WeightGenerator(wv_planes, patch_size * patch_size * embed_dim, embed_dim,
                                                 num_tokens, ff_dim)
        self.fclayer = _FCResLayer(wv_planes)
        self.scaler = 0.01

    def forward(self, x: Tensor, wavelengths: Tensor) -> Tensor:
        waves = self.fclayer(sincos_1d(self.wv_planes, wavelengths * 1000))
        weight, bias = self.weight_generator(waves)
        k = self.kernel_size
        kernel = weight.view(len(wavelengths), k, k, self.embed_dim).permute(3, 0, 1, 2) * self.scaler
        out = F.conv2d(x, kernel.to(x.dtype), bias=(bias * self.scaler).to(x.dtype), stride=k, padding=1)
        return out.flatten(2).transpose(1, 2)


class DOFAViT(ViTBackbone):
    """DOFA: any set of bands, embedded by a kernel generated from their wavelengths."""

    def __init__(self, wavelengths: Sequence[float], embed_dim: int, depth: int, num_heads: int, patch_size: int,
                 out_indices: Sequence[int], grid: int, wv_planes: int = 128, num_tokens: int = 128,
                 ff_dim: int = 2048) -> None:
        super().__init__(embed_dim, depth, num_heads, patch_size, out_indices)
        self.patch_embed = DynamicPatchEmbed(embed_dim, patch_size, wv_planes, num_tokens, ff_dim)
        pos = sincos_2d(embed_dim, grid, grid)
        self.pos_embed = nn.Parameter(torch.cat([torch.zeros(1, embed_dim), pos]).unsqueeze(0), requires_grad=False)
        # which bands the input holds is part of the task, not of the weights: not saved
        self.register_buffer("wavelengths", torch.tensor(list(wavelengths), dtype=torch.float32), persistent=False)

    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        height, width = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        patches = self.patch_embed(x, self.wavelengths)
        patches = patches + _resample_grid(self.pos_embed, height, width)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1), 1
