"""The paper's comparison baselines: tiny checkpoints in each published key layout, loaded through cromss,
trained one step frozen and fine-tuned; band handling by name; wrong layouts refused."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cromss.config import from_dict
from cromss.errors import CheckpointError, ConfigError
from cromss.transfer import FinetuneConfig, build_module, load_finetune_config, table_rows

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune" / "baselines"

# a tiny ViT: width 32, 4 blocks, 2 heads; satMAE's channel embedding 8 wide
D, DEPTH, HEADS, CE = 32, 4, 2, 8
VIT = {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS, "channel_embed": CE}


def _rand(generator: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def _blocks(g: torch.Generator) -> dict[str, torch.Tensor]:
    """timm / MAE ``blocks.<i>.*`` keys (qkv with bias), as every published ViT file holds them."""
    state = {}
    for i in range(DEPTH):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": 1 + _rand(g, D), p + "norm1.bias": _rand(g, D),
            p + "attn.qkv.weight": _rand(g, 3 * D, D), p + "attn.qkv.bias": _rand(g, 3 * D),
            p + "attn.proj.weight": _rand(g, D, D), p + "attn.proj.bias": _rand(g, D),
            p + "norm2.weight": 1 + _rand(g, D), p + "norm2.bias": _rand(g, D),
            p + "mlp.fc1.weight": _rand(g, 4 * D, D), p + "mlp.fc1.bias": _rand(g, 4 * D),
            p + "mlp.fc2.weight": _rand(g, D, 4 * D), p + "mlp.fc2.bias": _rand(g, D),
        }
    return state


def _mae_extras(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Pretraining-only keys every MAE file carries (final norm, mask token, decoder): must be ignored."""
    return {"norm.weight": torch.ones(D), "norm.bias": torch.zeros(D), "mask_token": _rand(g, 1, 1, D),
            "decoder_embed.weight": _rand(g, 16, D), "decoder_pred.weight": _rand(g, 48, 16)}


def write_scalemae(path: Path) -> Path:
    """scale-mae release layout: {'model': {...}, 'epoch', 'args'} with one 3-band 16 px patch embedding."""
    g = torch.Generator().manual_seed(1)
    model = _blocks(g) | _mae_extras(g) | {
        "cls_token": _rand(g, 1, 1, D), "pos_embed": _rand(g, 1, 1 + 14 * 14, D),
        "patch_embed.proj.weight": _rand(g, D, 3, 16, 16), "patch_embed.proj.bias": _rand(g, D),
    }
    torch.save({"model": model, "epoch": 799, "args": argparse.Namespace(model="mae_vit_large_patch16")}, path)
    return path


def write_satmae(path: Path, grid: int = 12) -> Path:
    """SatMAE group-channel layout: 3 patch embeddings (4, 4, 2 bands, patch 8), pos + channel embeddings."""
    g = torch.Generator().manual_seed(2)
    model = _blocks(g) | _mae_extras(g) | {
        "cls_token": _rand(g, 1, 1, D), "pos_embed": _rand(g, 1, 1 + grid * grid, D - CE),
        "channel_embed": _rand(g, 1, 3, CE),
    }
    for index, size in enumerate((4, 4, 2)):
        model[f"patch_embed.{index}.proj.weight"] = _rand(g, D, size, 8, 8)
        model[f"patch_embed.{index}.proj.bias"] = _rand(g, D)
    torch.save({"model": model, "epoch": 199}, path)
    return path


def write_satmae_pp(path: Path, grid: int = 12) -> Path:
    """SatMAE++'s release: SatMAE's encoder layout plus the upsampling blocks of its multi-scale decoder
    (satmae_pp models_mae_group_channels.py: proj_up_conv, up_block1, up_block2)."""
    write_satmae(path, grid)
    obj = torch.load(path, weights_only=False)
    g = torch.Generator().manual_seed(5)
    obj["model"] |= {"proj_up_conv.weight": _rand(g, 40, 10, 1, 1), "proj_up_conv.bias": _rand(g, 40),
                     "up_block1.up_conv.weight": _rand(g, 40, 40, 4, 4), "up_block2.proj_out.weight": _rand(g, 10, 40, 3, 3)}
    torch.save(obj, path)
    return path


def write_dofa(path: Path) -> Path:
    """DOFA layout: a plain state dict with the wavelength-conditioned weight generator (128 wide, 128 tokens)."""
    g = torch.Generator().manual_seed(3)
    w = "patch_embed.weight_generator."
    t = w + "transformer_encoder.layers.0."
    state = _blocks(g) | {
        "cls_token": _rand(g, 1, 1, D), "pos_embed": _rand(g, 1, 1 + 14 * 14, D),
        "norm.weight": torch.ones(D), "norm.bias": torch.zeros(D),
        w + "weight_tokens": _rand(g, 128, 128), w + "bias_token": _rand(g, 1, 128),
        w + "fc_weight.weight": _rand(g, 16 * 16 * D, 128), w + "fc_weight.bias": _rand(g, 16 * 16 * D),
        w + "fc_bias.weight": _rand(g, D, 128), w + "fc_bias.bias": _rand(g, D),
        t + "self_attn.in_proj_weight": _rand(g, 384, 128), t + "self_attn.in_proj_bias": _rand(g, 384),
        t + "self_attn.out_proj.weight": _rand(g, 128, 128), t + "self_attn.out_proj.bias": _rand(g, 128),
        t + "linear1.weight": _rand(g, 2048, 128), t + "linear1.bias": _rand(g, 2048),
        t + "linear2.weight": _rand(g, 128, 2048), t + "linear2.bias": _rand(g, 128),
        t + "norm1.weight": torch.ones(128), t + "norm1.bias": torch.zeros(128),
        t + "norm2.weight": torch.ones(128), t + "norm2.bias": torch.zeros(128),
        "patch_embed.fclayer.w1.weight": _rand(g, 128, 128), "patch_embed.fclayer.w1.bias": _rand(g, 128),
        "patch_embed.fclayer.w2.weight": _rand(g, 128, 128), "patch_embed.fclayer.w2.bias": _rand(g, 128),
    }
    torch.save(state, path)
    return path


def write_satlas(path: Path) -> Path:
    """SatlasPretrain layout: torchvision ResNet-50 under ``backbone.resnet.`` (9-band conv1, fc kept), FPN, heads."""
    import torchvision

    torch.manual_seed(4)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.conv1 = torch.nn.Conv2d(9, 64, 7, 2, 3, bias=False)
    state = {f"backbone.resnet.{k}": v for k, v in resnet.state_dict().items()}
    state |= {"intermediates.0.fpn.inner_blocks.0.0.weight": torch.zeros(128, 256, 1, 1),
              "heads.0.layers.0.0.weight": torch.zeros(64, 128, 3, 3)}
    torch.save(state, path)
    return path


WRITERS = {"scalemae": write_scalemae, "satmae": write_satmae, "satmae++": write_satmae_pp,
           "dofa": write_dofa, "satlas": write_satlas}
#: baseline, modality, s2_bands, framework
CASES = [
    ("scalemae", "s2", 13, "upernet"),
    ("satmae", "s2", 13, "upernet"),
    ("satmae++", "s2", 13, "segmenter"),
    ("dofa", "s2", 9, "upernet"),
    ("dofa", "s1", 13, "segmenter"),
    ("satlas", "s2", 9, "fpn"),
]


def _cfg(baseline: str, modality: str, s2_bands: int, framework: str, weights: str, **overrides) -> FinetuneConfig:
    base = {
        "name": "t", "framework": framework, "baseline": baseline, "weights": weights, "modality": modality,
        "s2_bands": s2_bands, "encoder": "resnet50" if baseline == "satlas" else "vit_large", "vit": VIT,
        "data": {"kind": "dw", "root": "unused", "val_fraction": 0.25}, "seeds": 1, "epochs": 1, "lr": 1e-3,
    }
    return from_dict(FinetuneConfig, base | overrides)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, modality: str, bands: int, count: int = 4, size: int = 64) -> None:
        g = torch.Generator().manual_seed(7)
        self.modality = modality
        self.images = torch.rand(count, bands, size, size, generator=g)
        self.labels = torch.randint(0, 9, (count, size, size), generator=g)
        self.labels[:, :8, :8] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {self.modality: self.images[index], "label": self.labels[index]}


def _train_one_step(cfg: FinetuneConfig) -> tuple[dict, dict, dict, dict]:
    """Encoder / decoder state before and after one Lightning training step (a validation batch first)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = build_module(cfg)
    encoder_before = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in module.model.decoder.state_dict().items()}
    loader = torch.utils.data.DataLoader(_Batches(cfg.modality, len(cfg.input_bands)), batch_size=2)
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=1,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert trainer.global_step == 1
    return encoder_before, module.model.encoder.state_dict(), decoder_before, module.model.decoder.state_dict()


@pytest.mark.parametrize(("baseline", "modality", "s2_bands", "framework"), CASES)
def test_published_layout_loads_and_frozen_encoder_is_byte_identical(
    tmp_path: Path, baseline: str, modality: str, s2_bands: int, framework: str
) -> None:
    path = WRITERS[baseline](tmp_path / f"{baseline}.pth")
    # frozen: not one encoder byte (weights, norm statistics) changes; the decoder trains
    enc_before, enc_after, dec_before, dec_after = _train_one_step(
        _cfg(baseline, modality, s2_bands, framework, str(path), frozen=True))
    assert enc_before.keys() == enc_after.keys()
    for key, value in enc_before.items():
        assert value.dtype == enc_after[key].dtype and torch.equal(value, enc_after[key]), f"{key} changed"
    assert any(not torch.equal(v, dec_after[k]) for k, v in dec_before.items())
    if baseline == "satlas":
        assert any("running_mean" in k for k in enc_before)  # BN statistics are part of the check
    # fine-tuned: the encoder trains
    enc_before, enc_after, _, _ = _train_one_step(_cfg(baseline, modality, s2_bands, framework, str(path)))
    changed = [k for k, v in enc_before.items() if not torch.equal(v, enc_after[k])]
    assert any(k.startswith("blocks.0.") or k.startswith("layer1.") for k in changed)


def test_loaded_tensors_are_the_files(tmp_path: Path) -> None:
    """Keys land where the published names say (spot checks against the file's own tensors)."""
    state = torch.load(write_satmae(tmp_path / "satmae.pth"), weights_only=False)["model"]
    module = build_module(_cfg("satmae", "s2", 13, "upernet", str(tmp_path / "satmae.pth")))
    encoder = module.model.encoder
    assert torch.equal(encoder.blocks[2].mlp.fc1.weight, state["blocks.2.mlp.fc1.weight"])
    assert torch.equal(encoder.patch_embed[2].proj.weight, state["patch_embed.2.proj.weight"])
    assert torch.equal(encoder.pos_embed, state["pos_embed"])  # the published 12 x 12 grid: no resampling
    assert torch.equal(encoder.channel_embed, state["channel_embed"])
    assert module.weights_info["bands"] == ["B2", "B3", "B4", "B8", "B5", "B6", "B7", "B8A", "B11", "B12"]


def test_band_selection_by_name() -> None:
    """Which input channels each baseline reads, hand-computed from the band tables."""
    # 13-band input B1..B12 with B8A at index 8
    assert _cfg("scalemae", "s2", 13, "upernet", "random").input_bands[3] == "B4"
    index = {b: build_module(_cfg(b, "s2", 13, "upernet", "random"), load_weights=False).model.input_index.tolist()
             for b in ("scalemae", "satmae", "dofa")}
    assert index["scalemae"] == [3, 2, 1]                          # B4, B3, B2
    assert index["satmae"] == [1, 2, 3, 7, 4, 5, 6, 8, 11, 12]     # groups (B2 B3 B4 B8)(B5 B6 B7 B8A)(B11 B12)
    assert index["dofa"] == [1, 2, 3, 4, 5, 6, 7, 11, 12]          # the 9 Satlas bands out of 13
    dofa_s1 = build_module(_cfg("dofa", "s1", 13, "upernet", "random"), load_weights=False)
    assert dofa_s1.model.input_index.tolist() == [0, 1]
    # DOFA's published wave list (zhu-xlab/DOFA README): S1 [5.405, 5.405]; S2 B8 0.842, B12 2.19
    assert dofa_s1.model.encoder.wavelengths.tolist() == pytest.approx([5.405, 5.405])
    dofa_s2 = build_module(_cfg("dofa", "s2", 9, "upernet", "random"), load_weights=False)
    assert dofa_s2.model.encoder.wavelengths.tolist() == pytest.approx([0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 1.61, 2.19])
    with pytest.raises(ConfigError, match="B8A"):  # the 9-band input has no B8A for satMAE
        _cfg("satmae", "s2", 9, "upernet", "random")
    with pytest.raises(ConfigError, match="no S1 model"):
        _cfg("satmae", "s1", 13, "upernet", "random")
    with pytest.raises(ConfigError, match="s2_bands: 9"):
        _cfg("satlas", "s2", 13, "fpn", "random")


def test_satlas_refusals_name_the_real_layout(tmp_path: Path) -> None:
    """SatlasPretrain key forms (satlaspretrain_models backbones.py / model.py): SI ResNet backbone.resnet.*,
    SI Swin backbone.backbone.features.*, MI (AggregationBackbone) one more backbone.; an MI ResNet loaded
    by satlaspretrain_models may also be keyed backbone.resnet.*: its published name (*_mi_*) tells."""
    from cromss.baselines.checkpoints import read_baseline_checkpoint

    base = torch.load(write_satlas(tmp_path / "si.pth"), weights_only=True)
    resnet = {k: v for k, v in base.items() if k.startswith("backbone.resnet.")}
    bands9 = _cfg("satlas", "s2", 9, "fpn", "random").input_bands
    swin = {"backbone.backbone.features.0.0.weight": torch.zeros(128, 9, 4, 4)}
    cases = {
        "swin_si.pth": (swin, r"single-image Swin-v2 model \(keys backbone\.backbone\.features\.\*\), not a ResNet-50"),
        "swin_mi.pth": ({"backbone.backbone.backbone.features.0.0.weight": torch.zeros(128, 9, 4, 4)},
                        r"multi-image \(MI\) Swin-v2"),
        "resnet_mi_wrapped.pth": ({"backbone.backbone." + k[len("backbone."):]: v for k, v in resnet.items()},
                                  r"multi-image \(MI\) ResNet \(AggregationBackbone keys backbone\.backbone\.resnet"),
        "sentinel2_resnet50_mi_ms.pth": (resnet, r"published name says multi-image"),
        "rgb.pth": (resnet | {"backbone.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, r"takes 3 bands \(an RGB model\)"),
    }
    for name, (state, message) in cases.items():
        torch.save(state, tmp_path / name)
        with pytest.raises(CheckpointError, match=message) as err:
            read_baseline_checkpoint(tmp_path / name, "satlas", "s2", bands9, None)
        assert "multi-image" not in str(err.value) or "_mi" in name or "mi." in name, name
    assert "conv1.weight" in read_baseline_checkpoint(tmp_path / "si.pth", "satlas", "s2", bands9, None)


def test_satlas_first_conv_is_permuted_to_the_input_band_order(tmp_path: Path) -> None:
    path = write_satlas(tmp_path / "satlas.pth")
    conv1 = torch.load(path, weights_only=True)["backbone.resnet.conv1.weight"]
    module = build_module(_cfg("satlas", "s2", 9, "fpn", str(path)))
    loaded = module.model.encoder.conv1.weight
    # input B2 B3 B4 B5 B6 B7 B8 B11 B12; Satlas file B4 B3 B2 B5 B6 B7 B8 B11 B12
    assert torch.equal(loaded[:, 0], conv1[:, 2]) and torch.equal(loaded[:, 2], conv1[:, 0])
    assert torch.equal(loaded[:, 1], conv1[:, 1]) and torch.equal(loaded[:, 3:], conv1[:, 3:])
    assert torch.equal(module.model.encoder.layer4[2].conv3.weight, torch.load(path, weights_only=True)[
        "backbone.resnet.layer4.2.conv3.weight"])


def _mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, written out independently (numpy)."""
    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one(dim // 2, w), one(dim // 2, h)], axis=1)


def test_scalemae_features_match_timm_vit_with_mae_position_embedding(tmp_path: Path) -> None:
    """Our scaleMAE encoder = a timm VisionTransformer holding the same weights and MAE's sin-cos embedding."""
    import timm

    path = write_scalemae(tmp_path / "scalemae.pth")
    module = build_module(_cfg("scalemae", "s2", 13, "upernet", str(path))).eval()
    x = torch.rand(2, 13, 64, 64, generator=torch.Generator().manual_seed(5))
    ours = module.model.encoder(x[:, [3, 2, 1]])
    reference = timm.create_model(
        "vit_base_patch16_224", pretrained=False, img_size=64, in_chans=3, embed_dim=D, depth=DEPTH, num_heads=HEADS,
        num_classes=0, global_pool="",
    ).eval()
    state = torch.load(path, weights_only=False)["model"]
    pos = np.concatenate([np.zeros((1, D)), _mae_sincos(D, 4)])
    weights = {k: v for k, v in state.items() if k.startswith(("blocks.", "patch_embed.", "cls_token"))}
    weights["pos_embed"] = torch.tensor(pos, dtype=torch.float32).unsqueeze(0)
    reference.load_state_dict(weights, strict=False)
    with torch.no_grad():
        expected = reference.forward_intermediates(x[:, [3, 2, 1]], indices=[0, 1, 2, 3], norm=False,
                                                   intermediates_only=True)
    for got, want in zip(ours, expected):
        assert got.shape == (2, D, 4, 4)
        assert torch.allclose(got, want, atol=1e-5)


def test_dofa_is_consistent_under_a_joint_band_and_wavelength_permutation(tmp_path: Path) -> None:
    """DOFA's kernel is generated per band from its wavelength: shuffling bands and wavelengths together
    must not change the features (the patch-embedding sum over bands is order-free)."""
    path = write_dofa(tmp_path / "dofa.pth")
    encoder = build_module(_cfg("dofa", "s2", 9, "upernet", str(path))).model.encoder.eval()
    x = torch.rand(1, 9, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        first = encoder(x)
        perm = [8, 0, 3, 1, 7, 2, 6, 4, 5]
        shuffled_bands_only = encoder(x[:, perm])  # wavelengths not permuted: other features
        encoder.wavelengths = encoder.wavelengths[perm]
        second = encoder(x[:, perm])
    assert float((shuffled_bands_only[-1] - first[-1]).abs().max()) > 1e-3
    # float32 sums in another order: ~1e-6 on features of size ~1 (was atol 1e-4, 100x looser than needed)
    assert len(first) == len(second) == 4
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_position_embedding_follows_the_input_size(tmp_path: Path) -> None:
    """satMAE (12 x 12 grid) runs on 64 and 50 px inputs, DOFA on 47 x 45; logits at the input size."""
    path = write_satmae(tmp_path / "satmae.pth")
    module = build_module(_cfg("satmae", "s2", 13, "upernet", str(path))).eval()
    with torch.no_grad():
        for size in (64, 50):  # 50: padded to a multiple of the patch (8), then cropped back
            assert module(torch.rand(1, 13, size, size)).shape == (1, 9, size, size)
    # called directly (no transfer-module padding): DOFA's padded 16 px kernel still sees whole patches
    dofa = build_module(_cfg("dofa", "s2", 9, "upernet", str(write_dofa(tmp_path / "dofa.pth")))).model.eval()
    with torch.no_grad():
        assert dofa(torch.rand(1, 9, 47, 45)).shape == (1, 9, 47, 45)


def test_wrong_layouts_are_refused_with_the_expected_file_named(tmp_path: Path) -> None:
    from cromss.baselines.checkpoints import read_baseline_checkpoint

    satmae, dofa = write_satmae(tmp_path / "satmae.pth"), write_dofa(tmp_path / "dofa.pth")
    scalemae, satlas = write_scalemae(tmp_path / "scalemae.pth"), write_satlas(tmp_path / "satlas.pth")
    vit = _cfg("satmae", "s2", 13, "upernet", "random").vit
    s2, s2_9 = _cfg("satmae", "s2", 13, "upernet", "random").input_bands, _cfg("dofa", "s2", 9, "upernet", "random").input_bands
    with pytest.raises(CheckpointError, match=r"not a scaleMAE checkpoint.*scalemae-vitlarge-800\.pth"):
        build_module(_cfg("scalemae", "s2", 13, "upernet", str(satmae)))  # through the fine-tuning path
    with pytest.raises(CheckpointError, match=r"not a satMAE checkpoint.*patch_embed\.0\.proj\.weight"):
        read_baseline_checkpoint(dofa, "satmae", "s2", s2, vit)
    with pytest.raises(CheckpointError, match=r"not a DOFA checkpoint.*DOFA_ViT_large_e100\.pth"):
        read_baseline_checkpoint(scalemae, "dofa", "s2", s2_9, vit)
    with pytest.raises(CheckpointError, match=r"not a Satlas checkpoint.*sentinel2_resnet50_si_ms\.pth"):
        read_baseline_checkpoint(dofa, "satlas", "s2", s2_9, vit)
    with pytest.raises(CheckpointError, match="not a scaleMAE checkpoint"):
        read_baseline_checkpoint(satlas, "scalemae", "s2", s2, vit)
    # SatMAE and SatMAE++ share the encoder layout; the releases differ in SatMAE++'s upsampling decoder
    satmae_pp = write_satmae_pp(tmp_path / "satmae_pp.pth")
    with pytest.raises(CheckpointError, match=r"not a satMAE checkpoint \(it holds SatMAE\+\+'s multi-scale"
                       r".*use baseline satmae\+\+\).*pretrain-vit-large-e199\.pth"):
        read_baseline_checkpoint(satmae_pp, "satmae", "s2", s2, vit)
    with pytest.raises(CheckpointError, match=r"not a satMAE\+\+ checkpoint.*SatMAE's release "
                       r"pretrain-vit-large-e199\.pth, use baseline satmae\).*checkpoint_ViT-L_pretrain_fmow_sentinel"):
        read_baseline_checkpoint(satmae, "satmae++", "s2", s2, vit)
    encoder_only = tmp_path / "encoder_only.pth"  # no decoder: the releases cannot be told apart, both load
    torch.save({"model": {k: v for k, v in torch.load(satmae, weights_only=False)["model"].items()
                          if not k.startswith("decoder")}}, encoder_only)
    for name in ("satmae", "satmae++"):
        assert "blocks.0.attn.qkv.weight" in read_baseline_checkpoint(encoder_only, name, "s2", s2, vit)
    # right layout, another size: the message says what the file holds and what to set
    wider = _cfg("scalemae", "s2", 13, "upernet", "random", vit=VIT | {"embed_dim": 64}).vit
    with pytest.raises(CheckpointError, match=r"embed_dim 32 and depth 4.*64 / 4.*vit.embed_dim=32"):
        read_baseline_checkpoint(scalemae, "scalemae", "s2", s2, wider)
    with pytest.raises(CheckpointError, match="not found"):
        read_baseline_checkpoint(tmp_path / "missing.pth", "dofa", "s2", s2_9, vit)


def test_framework_rules() -> None:
    with pytest.raises(ConfigError, match="'framework' must be one of"):
        _cfg("satmae", "s2", 13, "fpn", "random")
    with pytest.raises(ConfigError, match="ResNet-50"):
        _cfg("satlas", "s2", 9, "segmenter", "random")
    with pytest.raises(ConfigError, match="needs a ViT baseline"):
        from_dict(FinetuneConfig, {"framework": "segmenter", "data": {"kind": "dw", "root": "x"}})
    with pytest.raises(ConfigError, match="vit.embed_dim"):
        _cfg("satmae", "s2", 13, "upernet", "random", vit={"embed_dim": 30, "num_heads": 4})


def test_labels_and_table_rows_use_the_paper_names(tmp_path: Path) -> None:
    cfg = _cfg("satmae++", "s2", 13, "upernet", "weights/x.pth")
    assert (cfg.label, cfg.title) == ("satMAE++_10B", "satMAE++ (10B)")
    assert _cfg("dofa", "s1", 13, "upernet", "w.pth").title == "DOFA"
    assert _cfg("dofa", "s2", 9, "upernet", "w.pth").title == "DOFA (9B)"
    assert _cfg("satlas", "s2", 9, "fpn", "w.pth").title == "Satlas (9B)"
    assert _cfg("scalemae", "s2", 13, "upernet", "random").label == "random_scaleMAE_3B"
    for label, title, mode, seed, oa in [("satMAE++_10B", "satMAE++ (10B)", "frozen", 0, 0.5),
                                         ("satMAE++_10B", "satMAE++ (10B)", "frozen", 1, 0.7),
                                         ("random", None, "frozen", 0, 0.25)]:
        run = tmp_path / "dw" / label / mode / f"seed{seed}"
        run.mkdir(parents=True)
        data = {"task": "dw", "encoder_label": label, "mode": mode, "seed": seed, "oa": oa, "aa": oa, "miou": oa,
                "mf1": oa} | ({"encoder_title": title} if title else {})
        (run / "metrics.json").write_text(json.dumps(data))
    _, rows = table_rows([str(tmp_path / "dw")])
    by_name = {row[0]: row for row in rows}
    assert set(by_name) == {"satMAE++ (10B)", "random"}
    std = 100 * math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 1)
    assert by_name["satMAE++ (10B)"][1] == f"60.00±{std:.2f}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_baseline_configs_reproduce_the_paper_settings(path: Path) -> None:
    cfg = load_finetune_config(path)
    task = path.stem.split("-")[0]
    batch, crop, smp_framework, name = {"dfc2020": (32, None, "pspnet", "dfc2020-pspnet"),
                                        "dw": (56, 496, "deeplabv3plus", "dw-deeplabv3plus"),
                                        "osm": (32, 480, "fpn", "osm-fpn")}[task]
    assert (cfg.data.batch_size, cfg.data.crop_size, cfg.name, cfg.epochs) == (batch, crop, name, 50)
    if cfg.baseline == "satlas":
        assert (cfg.framework, cfg.lr, cfg.encoder, cfg.s2_bands) == (smp_framework, 5e-4, "resnet50", 9)
    else:  # ViT-Large in UPerNet at lr 1e-4 (Sec. IV-A)
        assert (cfg.framework, cfg.lr) == ("upernet", pytest.approx(1e-4))
        assert (cfg.vit.embed_dim, cfg.vit.depth, cfg.vit.num_heads, cfg.vit.block_indices()) == (1024, 24, 16, [5, 11, 17, 23])
    expected_title = {"scalemae": "scaleMAE (3B)", "satmae": "satMAE (10B)", "satmaepp": "satMAE++ (10B)",
                      "dofa": "DOFA (9B)", "dofa-s1": "DOFA", "satlas": "Satlas (9B)"}[path.stem.split("-", 1)[1]]
    assert cfg.title == expected_title


def test_end_to_end_cli_finetune_evaluate_table(tmp_path: Path, capsys, dw_demo_64: Path) -> None:
    """`cromss finetune` with a baseline file, `cromss evaluate` of its checkpoint, `cromss table` row name."""
    from cromss.cli import main

    weights = write_satmae(tmp_path / "satmae.pth")
    torch.manual_seed(0)
    code = main([
        "finetune", "--config", str(CONFIGS / "dw-satmae.yaml"), "--encoder", str(weights), "--seeds", "1",
        "--frozen", f"output_dir={tmp_path / 'runs'}", f"data.root={dw_demo_64}", "epochs=1",
        "data.batch_size=2", "data.crop_size=32", "data.num_workers=0", "trainer.enable_progress_bar=false",
        "trainer.accelerator=cpu", "vit.embed_dim=32", "vit.depth=4", "vit.num_heads=2", "vit.channel_embed=8",
        "vit.out_indices=[0,1,2,3]",
    ])
    assert code == 0
    run = tmp_path / "runs" / "dw-deeplabv3plus" / "satMAE_10B" / "frozen" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["encoder_title"] == "satMAE (10B)" and metrics["weights_info"]["baseline"] == "satmae"
    out_json = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--data", str(dw_demo_64), "--out", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["confusion"] == metrics["confusion"]  # rebuilt from its config
    assert main(["table", str(tmp_path / "runs" / "dw-deeplabv3plus")]) == 0
    assert "| satMAE (10B) |" in capsys.readouterr().out
    # a ResNet file given for a ViT baseline: one line, exit status 2
    assert main(["finetune", "--config", str(CONFIGS / "dw-dofa.yaml"), "--encoder", str(tmp_path / "satmae.pth"),
                 f"data.root={dw_demo_64}", "data.crop_size=32", "vit.embed_dim=32", "vit.depth=4",
                 "vit.num_heads=2", "vit.out_indices=[0,1,2,3]"]) == 2
    assert "not a DOFA checkpoint" in capsys.readouterr().err
