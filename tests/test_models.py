"""CromSSNet: shapes, weight sharing of middle fusion, key layout, clear errors."""

from __future__ import annotations

import pytest
import torch

from cromss.config import from_dict
from cromss.errors import ConfigError, DataError
from cromss.models import ModelConfig, build_model, count_parameters

SIZE = 64
SMALL = 32
#: a slim decoder keeps the tests that do not check the paper's sizes fast on a shared CPU
SLIM = [32, 16, 16, 8, 8]


def _inputs(s2_bands: int, batch: int = 2, size: int = SIZE) -> dict[str, torch.Tensor]:
    return {"s1": torch.rand(batch, 2, size, size), "s2": torch.rand(batch, s2_bands, size, size)}


@pytest.mark.parametrize("s2_bands", [13, 9])
@pytest.mark.parametrize(
    ("fusion", "modalities"), [("mid", ["s1", "s2"]), ("late", ["s1", "s2"]), ("single", ["s2"])]
)
def test_output_shapes(fusion: str, modalities: list[str], s2_bands: int) -> None:
    cfg = ModelConfig(
        encoder="resnet18", fusion=fusion, modalities=modalities, s2_bands=s2_bands, num_classes=9
    )
    net = build_model(cfg)
    with torch.no_grad():
        out = net(_inputs(s2_bands))
    assert sorted(out) == sorted(modalities)
    for logits in out.values():
        assert logits.shape == (2, 9, SIZE, SIZE)
        assert torch.isfinite(logits).all()
    conv1_in = {m: net.encoders[m].conv1.weight.shape[1] for m in modalities}
    assert conv1_in == {m: (2 if m == "s1" else s2_bands) for m in modalities}


def test_state_dict_layout() -> None:
    prefixes = {}
    for fusion in ("mid", "late"):
        net = build_model(ModelConfig(encoder="resnet18", fusion=fusion))
        prefixes[fusion] = {".".join(k.split(".")[:2]) for k in net.state_dict()}
    assert prefixes["mid"] == {"encoders.s1", "encoders.s2", "decoders.shared", "heads.shared"}
    assert prefixes["late"] == {
        "encoders.s1",
        "encoders.s2",
        "decoders.s1",
        "decoders.s2",
        "heads.s1",
        "heads.s2",
    }


def test_mid_fusion_shares_one_decoder_and_head() -> None:
    mid = build_model(ModelConfig(encoder="resnet18", fusion="mid", decoder_channels=SLIM))
    late = build_model(ModelConfig(encoder="resnet18", fusion="late", decoder_channels=SLIM))
    assert list(mid.decoders) == ["shared"] and list(mid.heads) == ["shared"]

    calls: list[int] = []
    mid.decoders["shared"].register_forward_hook(lambda *_: calls.append(1))
    mid(_inputs(13, size=SMALL))
    assert len(calls) == 2  # one decoder module serves both modalities

    # a loss on the S1 output alone reaches the shared decoder (and the S2 output would, too)
    mid.zero_grad()
    mid.forward_modality("s1", torch.rand(2, 2, SMALL, SMALL)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mid.decoders["shared"].parameters())
    assert all(p.grad is None for p in mid.encoders["s2"].parameters())

    # late fusion = middle fusion + one more decoder and head
    one_branch = count_parameters(late.decoders["s1"]) + count_parameters(late.heads["s1"])
    assert count_parameters(late) - count_parameters(mid) == one_branch
    assert count_parameters(mid.decoders["shared"]) == count_parameters(late.decoders["s2"])


def test_head_kernel_and_decoder_channels() -> None:
    cfg = ModelConfig(
        encoder="resnet18",
        fusion="single",
        modalities=["s2"],
        head_kernel=1,
        decoder_channels=[64, 32, 16, 16, 8],
        num_classes=4,
    )
    net = build_model(cfg)
    assert net.heads["s2"][0].weight.shape == (4, 8, 1, 1)
    assert net({"s2": torch.rand(2, 13, 32, 32)})["s2"].shape == (2, 4, 32, 32)
    default = build_model(ModelConfig(encoder="resnet18", fusion="single", modalities=["s1"]))
    assert default.heads["s1"][0].weight.shape == (9, 16, 3, 3)  # paper: kernel 3, last decoder ch 16


def test_as_smp_unet_shares_modules() -> None:
    net = build_model(ModelConfig(encoder="resnet18", fusion="mid", decoder_channels=SLIM)).eval()
    unet = net.as_smp_unet("s1").eval()
    assert unet.encoder is net.encoders["s1"] and unet.decoder is net.decoders["shared"]
    x = torch.rand(1, 2, SMALL, SMALL)
    with torch.no_grad():
        assert torch.equal(unet(x), net.forward_modality("s1", x))


def test_channels_last_gives_the_same_logits() -> None:
    """channels_last changes the memory layout only: the same weights give the same logits."""
    torch.manual_seed(0)
    fast = build_model(ModelConfig(encoder="resnet18", fusion="late", decoder_channels=SLIM, channels_last=True))
    plain = build_model(ModelConfig(encoder="resnet18", fusion="late", decoder_channels=SLIM))
    plain.load_state_dict(fast.state_dict())
    fast.eval(), plain.eval()
    conv = fast.encoders["s2"].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    inputs = _inputs(13, batch=2, size=32)
    with torch.no_grad():
        got, expected = fast(inputs), plain(inputs)
    for m in ("s1", "s2"):
        assert got[m].shape == (2, 9, 32, 32)
        torch.testing.assert_close(got[m], expected[m], atol=1e-5, rtol=1e-5)


def test_input_errors_are_clear() -> None:
    net = build_model(ModelConfig(encoder="resnet18", fusion="mid", decoder_channels=SLIM))
    with pytest.raises(DataError, match=r"divisible by 32.*64x64"):
        net(_inputs(13, size=48))
    with pytest.raises(DataError, match=r"'s2' has 9 bands, the model expects 13"):
        net(_inputs(9, size=SMALL))
    with pytest.raises(DataError, match="lacks modality 's1'"):
        net({"s2": torch.rand(1, 13, 32, 32)})
    # extra batch keys are ignored
    batch = _inputs(13, batch=2, size=32) | {"label": torch.zeros(2, 32, 32, dtype=torch.long)}
    assert sorted(net(batch)) == ["s1", "s2"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"fusion": "single", "modalities": ["s1", "s2"]}, "model.modalities"),
        ({"fusion": "mid", "modalities": ["s2"]}, "model.modalities"),
        ({"modalities": ["s1", "s3"]}, "model.modalities"),
        ({"s2_bands": 10}, "model.s2_bands"),
        ({"fusion": "early"}, "model.fusion"),
        ({"decoder_channels": [256, 128, 64, 32]}, "model.decoder_channels"),
        ({"head_kernel": 2}, "model.head_kernel"),
        ({"num_classes": 0}, "model.num_classes"),
        ({"encoder": "resnet_does_not_exist"}, "model.encoder"),
    ],
)
def test_config_validation_names_the_key(section: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(ModelConfig, section, prefix="model.")


def test_config_defaults_follow_the_paper() -> None:
    # modalities / num_classes come from the data when a run resolves its config; on its own the
    # model falls back to the paper's S1 + S2 and the 9 Dynamic World classes
    unresolved = from_dict(ModelConfig, {}, prefix="model.")
    assert unresolved.modalities is None and unresolved.num_classes is None
    cfg = unresolved.filled()
    assert (cfg.encoder, cfg.fusion, cfg.modalities, cfg.s2_bands, cfg.num_classes) == (
        "resnet50",
        "mid",
        ["s1", "s2"],
        13,
        9,
    )
    assert cfg.decoder_channels == [256, 128, 64, 32, 16] and cfg.head_kernel == 3
