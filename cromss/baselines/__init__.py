"""The paper's comparison baselines (Tables II–IV): ViT-Large scaleMAE, satMAE, satMAE++ and DOFA in
UPerNet / Segmenter heads, and the supervised Satlas ResNet-50.

Modules, in the order data flows through them: ``registry`` (what each baseline is: bands, patch,
published file, licence), ``bands`` (band names -> input indices, DOFA wavelengths), ``vit`` (the
three ViT encoder families on timm blocks), ``heads`` (UPerNet and Segmenter decoders), ``model``
(encoder + head, band selection, freezing), ``checkpoints`` (read each published file, map its keys,
refuse other layouts).
"""

from __future__ import annotations

# only the light registry here: importing cromss.baselines must not import timm (configs use it)
from cromss.baselines.registry import BASELINES, VIT_FRAMEWORKS, BaselineSpec, ViTConfig, baseline_spec

__all__ = ["BASELINES", "VIT_FRAMEWORKS", "BaselineSpec", "ViTConfig", "baseline_spec"]
