"""Encoder export / loading: our run folders, official CromSS checkpoints, SSL4EO-S12 layouts, safety."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from cromss import __version__
from cromss.config import dump_config, to_dict
from cromss.errors import CheckpointError
from cromss.models import ModelConfig, build_model
from cromss.schema import DW_CLASSES, S1_BANDS, S1_MEAN, S1_STD, S2_9BANDS, S2_BANDS, S2_MEAN, S2_STD
from cromss.weights import encoder_state_dict, export_encoder, load, load_cromss_net, load_into, read_export

SLIM = [32, 16, 16, 8, 8]


class NotAllowed:
    """A class a weights-only unpickler must refuse."""

    def __init__(self) -> None:
        self.payload = "code"


def _assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def _encoder(name: str, in_channels: int, depth: int = 5) -> nn.Module:
    return smp.encoders.get_encoder(name, in_channels=in_channels, depth=depth, weights=None)


# ------------------------------------------------------------------ fake official CromSS checkpoints
class OfficialMid(nn.Module):
    """The authors' middle-fusion attribute names: encoder1 (S1), encoder (S2), shared decoder + head."""

    def __init__(self, s2_bands: int = 13) -> None:
        super().__init__()
        unet = smp.Unet(
            "resnet18", encoder_weights=None, in_channels=s2_bands, classes=9, decoder_channels=SLIM
        )
        self.encoder1 = _encoder("resnet18", 2)
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.segmentation_head = unet.segmentation_head

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.segmentation_head(self.decoder(self.encoder1(x1))),
            self.segmentation_head(self.decoder(self.encoder(x2))),
        )


class OfficialLate(nn.Module):
    """The authors' late-fusion attribute names: model1 (S1 U-Net), model2 (S2 U-Net)."""

    def __init__(self, s2_bands: int = 13) -> None:
        super().__init__()
        self.model1 = smp.Unet(
            "resnet18", encoder_weights=None, in_channels=2, classes=9, decoder_channels=SLIM
        )
        self.model2 = smp.Unet(
            "resnet18", encoder_weights=None, in_channels=s2_bands, classes=9, decoder_channels=SLIM
        )


def _randomise_bn(module: nn.Module) -> None:
    """Give BN buffers non-default values so a forgotten buffer would show."""
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_mean.uniform_(-0.5, 0.5)
            sub.running_var.uniform_(0.5, 2.0)


def _save_official(net: nn.Module, path: Path) -> Path:
    _randomise_bn(net)
    holder = nn.Module()
    holder.net = net
    torch.save(
        {
            "epoch": 199,
            "global_step": 1000,
            "pytorch-lightning_version": "1.9.0",
            "state_dict": holder.state_dict(),
            "hyper_parameters": {
                "args": argparse.Namespace(fusion="mid", n_classes=9, lr=5e-3, crop=(256, 256))
            },
        },
        path,
    )
    return path


@pytest.mark.parametrize("fusion", ["mid", "late"])
def test_official_checkpoint_maps_to_smp_encoders(tmp_path: Path, fusion: str) -> None:
    net = OfficialMid() if fusion == "mid" else OfficialLate()
    path = _save_official(net, tmp_path / f"weights-cromss-13B-{fusion}Fusion-epoch=199.ckpt")
    originals = (
        {"s1": net.encoder1, "s2": net.encoder}
        if fusion == "mid"
        else {"s1": net.model1.encoder, "s2": net.model2.encoder}
    )
    for modality, original in originals.items():
        state, info = encoder_state_dict(path, modality)
        _assert_same_tensors(state, original.state_dict())
        assert info["layout"] == f"cromss-official-{fusion}"
        assert info["encoder"] == "resnet18"
        assert info["bands"] == list(S1_BANDS if modality == "s1" else S2_BANDS)
    # the model's input channels alone pick the encoder
    assert encoder_state_dict(path, in_channels=2)[1]["modality"] == "s1"
    with pytest.raises(CheckpointError, match=r"holds encoders for \['s1', 's2'\].*modality"):
        encoder_state_dict(path)
    with pytest.raises(CheckpointError, match=r"has 13 input bands, the model expects 9"):
        encoder_state_dict(path, "s2", in_channels=9)
    target = smp.FPN("resnet18", encoder_weights=None, in_channels=2, classes=8)
    with pytest.raises(CheckpointError, match=r"has 13 input bands, the model expects 2 \(s1\)"):
        load_into(target, path, modality="s2")


def test_official_checkpoint_rebuilds_the_whole_network(tmp_path: Path) -> None:
    # a 9-band middle-fusion net with the paper's decoder channels
    official = OfficialMid(s2_bands=9)
    official.decoder = smp.Unet("resnet18", encoder_weights=None, in_channels=9, classes=9).decoder
    official.segmentation_head = smp.Unet(
        "resnet18", encoder_weights=None, in_channels=9, classes=9
    ).segmentation_head
    path = _save_official(official, tmp_path / "weights-cromss-9B-midFusion-epoch=199.ckpt")
    net, config = load_cromss_net(path)
    assert config["model"]["fusion"] == "mid" and config["model"]["s2_bands"] == 9
    assert config["official_hyper_parameters"]["args"]["lr"] == 5e-3
    official.eval()
    x1, x2 = torch.rand(2, 2, 32, 32), torch.rand(2, 9, 32, 32)
    with torch.no_grad():
        expected_s1, expected_s2 = official(x1, x2)
        got = net({"s1": x1, "s2": x2})
    assert torch.allclose(got["s1"], expected_s1) and torch.allclose(got["s2"], expected_s2)


def test_mismatched_official_checkpoint_fails_clearly(tmp_path: Path) -> None:
    net = OfficialMid()
    holder = nn.Module()
    holder.net = net
    state = holder.state_dict()
    state.pop("net.encoder.layer2.0.conv1.weight")
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    target = smp.Unet("resnet18", encoder_weights=None, in_channels=13, classes=9)
    with pytest.raises(CheckpointError, match=r"missing in the file: layer2\.0\.conv1\.weight"):
        load_into(target, tmp_path / "broken.ckpt", modality="s2")
    # a ResNet-18 file into a ResNet-34 model: the message names the keys that do not fit
    target34 = smp.Unet("resnet34", encoder_weights=None, in_channels=2, classes=9)
    with pytest.raises(CheckpointError, match=r"missing in the file: layer1\.2\."):
        load_into(target34, tmp_path / "broken.ckpt", modality="s1")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"net.encoder1.conv1.weight": torch.zeros(1)}, "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil\.ckpt.*allow-list"):
        encoder_state_dict(path, "s1")


def test_unknown_layout_lists_keys(tmp_path: Path) -> None:
    torch.save(
        {"backbone.stem.weight": torch.zeros(2, 2), "head.weight": torch.zeros(2)}, tmp_path / "odd.pth"
    )
    with pytest.raises(CheckpointError, match=r"unknown weight layout.*backbone\.stem\.weight"):
        encoder_state_dict(tmp_path / "odd.pth", "s2")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        encoder_state_dict(tmp_path / "junk.ckpt", "s2")
    with pytest.raises(CheckpointError, match="not found"):
        encoder_state_dict(tmp_path / "missing.ckpt", "s2")


# ------------------------------------------------------------------ torchgeo / SSL4EO-S12 layouts
def _timm_resnet(name: str, in_chans: int) -> dict[str, torch.Tensor]:
    """State dict of a timm ResNet (with its fc) — the layout torchgeo's weight files use."""
    import timm

    model = timm.create_model(name, in_chans=in_chans, num_classes=1000, pretrained=False)
    _randomise_bn(model)
    return model.state_dict()


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _load_smp_strict(name: str, in_channels: int, path: Path, **kwargs) -> dict[str, torch.Tensor]:
    encoder = _encoder(name, in_channels)
    load_into(encoder, path, **kwargs)
    return encoder.state_dict()


def test_torchgeo_resnet50_state_dict_loads_strictly(tmp_path: Path) -> None:
    state = _timm_resnet("resnet50", 13)
    torch.save(state, tmp_path / "resnet50_sentinel2_all_moco.pth")
    got = _load_smp_strict("resnet50", 13, tmp_path / "resnet50_sentinel2_all_moco.pth")
    _assert_same_tensors(got, _backbone(state))
    assert encoder_state_dict(tmp_path / "resnet50_sentinel2_all_moco.pth")[1]["encoder"] == "resnet50"


def test_ssl4eo_moco_checkpoint(tmp_path: Path) -> None:
    query, key = _timm_resnet("resnet18", 2), _timm_resnet("resnet18", 2)
    state = {f"module.encoder_q.{k}": v for k, v in _backbone(query).items()}
    state |= {f"module.encoder_k.{k}": v for k, v in _backbone(key).items()}
    state |= {
        "module.encoder_q.fc.0.weight": torch.rand(4, 512),
        "module.encoder_q.fc.2.weight": torch.rand(4, 4),
        "module.queue": torch.rand(4, 16),
    }
    torch.save(
        {"epoch": 99, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}}},
        tmp_path / "B2_rn18_moco_0099_ckpt.pth",
    )
    got = _load_smp_strict("resnet18", 2, tmp_path / "B2_rn18_moco_0099_ckpt.pth", modality="s1")
    _assert_same_tensors(got, _backbone(query))
    assert encoder_state_dict(tmp_path / "B2_rn18_moco_0099_ckpt.pth")[1]["layout"] == "ssl4eo-moco"


def test_ssl4eo_dino_checkpoints(tmp_path: Path) -> None:
    teacher, student = _timm_resnet("resnet18", 13), _timm_resnet("resnet18", 13)
    nested = {
        "teacher": {f"module.backbone.{k}": v for k, v in _backbone(teacher).items()}
        | {"module.head.mlp.0.weight": torch.rand(4, 512)},
        "student": {f"module.backbone.{k}": v for k, v in _backbone(student).items()},
        "epoch": 100,
    }
    torch.save(nested, tmp_path / "dino_full.pth")
    _assert_same_tensors(_load_smp_strict("resnet18", 13, tmp_path / "dino_full.pth"), _backbone(teacher))
    flat = {"state_dict": {f"module.backbone.{k}": v for k, v in teacher.items()}}
    torch.save(flat, tmp_path / "dino_flat.pth")
    _assert_same_tensors(_load_smp_strict("resnet18", 13, tmp_path / "dino_flat.pth"), _backbone(teacher))
    assert encoder_state_dict(tmp_path / "dino_flat.pth")[1]["layout"] == "ssl4eo-dino"


def test_ssl4eo_decur_checkpoint_picks_backbone_by_bands(tmp_path: Path) -> None:
    s2, s1 = _timm_resnet("resnet18", 13), _timm_resnet("resnet18", 2)
    state = {f"module.backbone_1.{k}": v for k, v in _backbone(s2).items()}
    state |= {f"module.backbone_2.{k}": v for k, v in _backbone(s1).items()}
    state |= {"module.projector1.0.weight": torch.rand(4, 512), "module.bn.running_mean": torch.rand(4)}
    torch.save({"state_dict": state}, tmp_path / "decur.pth")
    _assert_same_tensors(_load_smp_strict("resnet18", 2, tmp_path / "decur.pth"), _backbone(s1))
    _assert_same_tensors(_load_smp_strict("resnet18", 13, tmp_path / "decur.pth"), _backbone(s2))
    assert encoder_state_dict(tmp_path / "decur.pth", "s1")[1]["layout"] == "ssl4eo-decur"
    with pytest.raises(CheckpointError, match=r"several encoders.*module\.backbone_1\. \(13 bands\)"):
        encoder_state_dict(tmp_path / "decur.pth")
    with pytest.raises(CheckpointError, match="refuses"):
        export_encoder(tmp_path / "decur.pth", "s1", tmp_path / "out.safetensors")


# ------------------------------------------------------------------ our run folders, export, round trip
def _fake_run(tmp_path: Path, fusion: str = "mid", s2_bands: int = 13) -> tuple[Path, nn.Module, dict]:
    cfg = ModelConfig(encoder="resnet18", fusion=fusion, s2_bands=s2_bands, decoder_channels=SLIM)
    net = build_model(cfg)
    _randomise_bn(net)
    holder = nn.Module()
    holder.net = net
    config = {"model": to_dict(cfg), "data": {"labels": "dw"}, "method": {"alpha0": 0.5}, "seed": 0}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(
        {"epoch": 1, "state_dict": holder.state_dict(), "hyper_parameters": {"config": config}},
        run / "checkpoints" / "last.ckpt",
    )
    dump_config(config, run / "config.yaml")
    return run, net, config


def test_export_writes_safetensors_and_metadata(tmp_path: Path) -> None:
    run, net, config = _fake_run(tmp_path)
    out = export_encoder(run, "s2", tmp_path / "export" / "cromss_s2")
    assert out.name == "cromss_s2.safetensors" and out.with_suffix(".json").is_file()
    from safetensors.torch import load_file

    _assert_same_tensors(load_file(out), net.encoders["s2"].state_dict())
    _, meta = read_export(out)
    assert meta == json.loads(out.with_suffix(".json").read_text())
    assert meta["format"] == "cromss-encoder" and meta["format_version"] == 1
    assert meta["cromss_version"] == __version__
    assert meta["architecture"] == {
        "library": "segmentation_models_pytorch",
        "encoder": "resnet18",
        "depth": 5,
        "in_channels": 13,
    }
    assert meta["modality"] == "s2" and meta["bands"] == list(S2_BANDS)
    assert meta["normalization"]["mean"] == list(S2_MEAN) and meta["normalization"]["std"] == list(S2_STD)
    assert meta["classes"]["names"] == list(DW_CLASSES.names)
    assert meta["pretraining_config"] == config

    # a folder as OUT; the S1 encoder of the same run
    (tmp_path / "dir").mkdir()
    out_s1 = export_encoder(run, "s1", tmp_path / "dir")
    assert out_s1.name == "s1_encoder.safetensors"
    _, meta_s1 = read_export(out_s1)
    assert meta_s1["bands"] == ["VV", "VH"] and meta_s1["normalization"]["mean"] == list(S1_MEAN)


def test_nine_band_export_takes_the_stats_of_its_bands(tmp_path: Path) -> None:
    run, _, _ = _fake_run(tmp_path, fusion="late", s2_bands=9)
    out = export_encoder(run / "checkpoints" / "last.ckpt", "s2", tmp_path / "s2_9b.safetensors")
    _, meta = read_export(out)
    assert meta["bands"] == list(S2_9BANDS)
    # B2 is band index 1 of the 13, B12 index 12 (hand-picked from cromss.schema)
    assert meta["normalization"]["mean"][0] == S2_MEAN[1] and meta["normalization"]["std"][-1] == S2_STD[12]


def test_round_trip_into_other_smp_decoders(tmp_path: Path) -> None:
    run, net, _ = _fake_run(tmp_path)
    out = export_encoder(run, "s2", tmp_path / "s2.safetensors")
    original = net.encoders["s2"].eval()
    x = torch.rand(2, 13, 64, 64)
    with torch.no_grad():
        expected = original(x)
        models = {
            "pspnet": smp.PSPNet(
                "resnet18", encoder_weights=None, in_channels=13, classes=8
            ),  # encoder_depth=3
            "deeplabv3plus": smp.DeepLabV3Plus("resnet18", encoder_weights=None, in_channels=13, classes=8),
            "fpn": smp.FPN("resnet18", encoder_weights=None, in_channels=13, classes=8),
        }
        for name, model in models.items():
            info = load_into(model, out, expect_bands=S2_BANDS)
            assert info["layout"] == "cromss-export"
            _assert_same_tensors(model.encoder.state_dict(), original.state_dict())
            got = model.encoder.eval()(x)
            if name == "deeplabv3plus":  # output stride 16: the same weights, dilated last stage
                reference = copy.deepcopy(original)
                reference.make_dilated(16)
                want = reference(x)
            else:
                want = expected[: len(got)]
            assert len(got) == (4 if name == "pspnet" else 6), name
            for a, b in zip(got, want, strict=True):
                assert torch.allclose(a, b, atol=1e-6), name
        # a whole model still runs
        assert models["fpn"].eval()(x).shape == (2, 8, 64, 64)


def test_load_gives_encoder_and_transform(tmp_path: Path) -> None:
    run, net, _ = _fake_run(tmp_path)
    out = export_encoder(run, "s1", tmp_path / "s1.safetensors")
    encoder, transform = load(out, expect_bands=["VV", "VH"])
    assert not encoder.training
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x)[-1], net.encoders["s1"].eval()(x)[-1])
    # raw dB values at mean, mean + 2 std, mean - 3 std -> 0.5, 1, 0 (hand-computed)
    m, s = torch.tensor(S1_MEAN), torch.tensor(S1_STD)
    raw = torch.stack([m, m + 2 * s, m - 3 * s], dim=-1)[:, None, :]  # [2, 1, 3]
    expected = torch.tensor([0.5, 1.0, 0.0]).expand(2, 1, 3)
    assert torch.allclose(transform(raw), expected, atol=1e-6)


def test_wrong_band_list_is_refused(tmp_path: Path) -> None:
    run, _, _ = _fake_run(tmp_path)
    out = export_encoder(run, "s2", tmp_path / "s2.safetensors")
    with pytest.raises(CheckpointError, match=r"band mismatch.*'B1', 'B2'.*\['B2', 'B3'"):
        load(out, expect_bands=S2_9BANDS)
    model9 = smp.Unet("resnet18", encoder_weights=None, in_channels=9, classes=8)
    with pytest.raises(CheckpointError, match=r"has 13 input bands, the model expects 9"):
        load_into(model9, out)
    with pytest.raises(CheckpointError, match="holds the s2 encoder, not s1"):
        encoder_state_dict(out, "s1")


def test_run_folder_and_checkpoint_sources(tmp_path: Path) -> None:
    run, net, config = _fake_run(tmp_path)
    state, info = encoder_state_dict(run, "s1")
    _assert_same_tensors(state, net.encoders["s1"].state_dict())
    assert info["layout"] == "cromss-checkpoint" and info["config"] == config
    with pytest.raises(CheckpointError, match="pass modality"):
        encoder_state_dict(run / "checkpoints" / "last.ckpt")
    rebuilt, _ = load_cromss_net(run)
    _assert_same_tensors(rebuilt.state_dict(), net.state_dict())
    with pytest.raises(CheckpointError, match="not a cromss pretrain run folder"):
        encoder_state_dict(tmp_path, "s1")


def test_export_loads_into_plain_timm_and_torchvision(tmp_path: Path) -> None:
    """What docs/weights.md promises for non-smp users."""
    import timm
    import torchvision
    from safetensors.torch import load_file

    run, _, _ = _fake_run(tmp_path)
    state = load_file(export_encoder(run, "s2", tmp_path / "s2.safetensors"))
    timm_model = timm.create_model("resnet18", in_chans=13, num_classes=0, pretrained=False)
    timm_model.load_state_dict(state, strict=True)
    tv = torchvision.models.resnet18(weights=None)
    tv.conv1 = nn.Conv2d(13, 64, kernel_size=7, stride=2, padding=3, bias=False)
    result = tv.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []


def test_cli_export_encoder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cromss.cli import main

    run, _, _ = _fake_run(tmp_path)
    assert main(["export-encoder", str(run), "--modality", "s1", str(tmp_path / "s1")]) == 0
    assert (tmp_path / "s1.safetensors").is_file() and "VV, VH" in capsys.readouterr().out
    assert main(["export-encoder", str(tmp_path / "nope"), "--modality", "s1", str(tmp_path / "x")]) == 2
    assert "weight source not found" in capsys.readouterr().err
