"""Tiled sliding-window prediction: exactness for per-pixel models, blending, GeoTIFF I/O, real chip."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cromss.errors import DataError
from cromss.predict import blend_window, predict_scene, sliding_window_predict, tile_starts

SEN1FLOODS11 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen1floods11"


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def _run_core(scene: np.ndarray, model_fn, tile: int, overlap: int, num_classes: int,
              valid: np.ndarray | None = None):
    _, height, width = scene.shape
    valid = np.ones((height, width), bool) if valid is None else valid
    out = np.full((num_classes, height, width), np.nan, np.float32)
    out_valid = np.zeros((height, width), bool)
    blocks = []

    def read_window(row, col, h, w):
        return scene[:, row:row + h, col:col + w], valid[row:row + h, col:col + w]

    def write_block(row, probs, block_valid):
        blocks.append((row, probs.shape[1]))
        out[:, row:row + probs.shape[1]] = probs
        out_valid[row:row + probs.shape[1]] = block_valid

    sliding_window_predict(model_fn, read_window, height, width, tile, overlap, num_classes, write_block)
    return out, out_valid, blocks


def test_tile_starts_cover_scene():
    assert tile_starts(80, 32, 24) == [0, 24, 48]
    assert tile_starts(90, 32, 24) == [0, 24, 48, 58]
    assert tile_starts(20, 32, 24) == [0]


def test_blend_window_is_positive_ramp():
    window = blend_window(8, 8, 3)
    assert window.min() > 0
    np.testing.assert_allclose(window[0, :4], [1 / 16, 2 / 16, 3 / 16, 4 / 16])  # (i+1)/4 * 1/4
    assert window[4, 4] == 1.0


def test_per_pixel_model_3x3_tiles_equals_whole_scene():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(5, 4)).astype(np.float32)  # a 1x1 conv: 4 bands -> 5 classes

    def model_fn(x):
        return _softmax(np.einsum("kc,chw->khw", weights, x))

    scene = rng.normal(size=(4, 80, 80)).astype(np.float32)  # tile 32, overlap 8 -> 3 x 3 tiles
    calls = []
    probs, valid, blocks = _run_core(scene, lambda x: calls.append(1) or model_fn(x), 32, 8, 5)
    assert len(calls) == 9
    np.testing.assert_allclose(probs, model_fn(scene), atol=1e-6)
    assert valid.all()
    # every row written exactly once, top to bottom
    rows = [r for start, n in blocks for r in range(start, start + n)]
    assert rows == list(range(80))


def test_scene_smaller_than_tile_and_ragged_edges():
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(3, 2)).astype(np.float32)

    def model_fn(x):
        return _softmax(np.einsum("kc,chw->khw", weights, x))

    scene = rng.normal(size=(2, 70, 20)).astype(np.float32)
    probs, _, _ = _run_core(scene, model_fn, 32, 8, 3)
    np.testing.assert_allclose(probs, model_fn(scene), atol=1e-6)


def test_conv_net_blending_close_to_whole_scene():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, padding=1),
    ).eval()

    @torch.no_grad()
    def model_fn(x):
        return torch.softmax(net(torch.from_numpy(x)[None]), dim=1)[0].numpy()

    scene = np.random.default_rng(2).normal(size=(3, 96, 96)).astype(np.float32)
    probs, _, _ = _run_core(scene, model_fn, 40, 12, 4)  # starts 0, 28, 56 -> 3 x 3 tiles
    whole = model_fn(scene)
    error = np.abs(probs - whole)
    # zero padding at tile edges only changes a 3-px rim of each tile, which the ramp down-weights
    assert error.mean() < 1e-3
    assert error.max() < 0.05
    assert (probs.argmax(0) == whole.argmax(0)).mean() > 0.99


def test_invalid_parameters_raise():
    with pytest.raises(DataError, match="overlap"):
        sliding_window_predict(lambda x: x, lambda *a: (None, None), 10, 10, 8, 8, 2, lambda *a: None)


# ----------------------------------------------------------------------------- GeoTIFF
class PixelNet(torch.nn.Module):
    """A per-pixel 'U-Net' (1x1 conv) with CromSSNet's predict interface: tiling is exact."""

    def __init__(self, in_channels: int = 13, num_classes: int = 9) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, num_classes, 1)
        self.modalities = ["s2"]
        self.cfg = SimpleNamespace(num_classes=num_classes, in_channels=lambda m: in_channels)

    def forward_modality(self, modality, x):
        return self.conv(x)


def _write_s2(path: Path, height: int, width: int, seed: int = 0, nodata_pixel=None) -> np.ndarray:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    data = rng.integers(100, 4000, size=(13, height, width)).astype(np.int16)
    if nodata_pixel is not None:
        data[:, nodata_pixel[0], nodata_pixel[1]] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=13, dtype="int16",
                       crs="EPSG:32632", transform=from_origin(600000, 5000000, 10, 10), nodata=0) as dst:
        dst.write(data)
    return data


def test_predict_scene_per_pixel_exact_and_georeferenced(tmp_path):
    import rasterio

    from cromss.transforms import ClipNormalize

    torch.manual_seed(0)
    raw = _write_s2(tmp_path / "s2.tif", 160, 160, nodata_pixel=(5, 7))
    net = PixelNet()
    summary = predict_scene(net, tmp_path / "map.tif", s2=tmp_path / "s2.tif", tile=64, overlap=16,
                            probabilities=tmp_path / "probs.tif")
    assert summary["modality"] == "s2"
    x = ClipNormalize.for_modality("s2", 13)(torch.from_numpy(raw.astype(np.float32)))
    x[:, 5, 7] = 0
    with torch.no_grad():
        expected = torch.softmax(net.conv(x[None]), dim=1)[0].numpy()
    with rasterio.open(tmp_path / "s2.tif") as src, rasterio.open(tmp_path / "map.tif") as out, \
            rasterio.open(tmp_path / "probs.tif") as probs:
        assert out.crs == src.crs and out.transform == src.transform
        assert out.dtypes[0] == "uint8" and out.nodata == 255
        assert out.colormap(1)[0] == (0x41, 0x9B, 0xDF, 255)  # DW water
        labels = out.read(1)
        prob_values = probs.read()
        assert probs.count == 9 and probs.dtypes[0] == "float32"
    assert labels[5, 7] == 255 and np.isnan(prob_values[:, 5, 7]).all()
    mask = np.ones_like(labels, bool)
    mask[5, 7] = False
    np.testing.assert_array_equal(labels[mask], expected.argmax(0)[mask])
    np.testing.assert_allclose(prob_values[:, mask], expected[:, mask], atol=1e-5)


def test_predict_scene_unet_uint8_probabilities(tmp_path):
    import rasterio

    from cromss.models import ModelConfig, build_model

    torch.manual_seed(0)
    _write_s2(tmp_path / "s2.tif", 100, 90)  # not a multiple of 32: tiles are padded for the U-Net
    net = build_model(ModelConfig(encoder="resnet18", fusion="single", modalities=["s2"],
                                  decoder_channels=[32, 16, 16, 8, 8]))
    predict_scene(net, tmp_path / "map.tif", s2=tmp_path / "s2.tif", tile=64, overlap=16,
                  probabilities=tmp_path / "p.tif", probability_dtype="uint8")
    with rasterio.open(tmp_path / "map.tif") as out, rasterio.open(tmp_path / "p.tif") as probs:
        labels, percent = out.read(1), probs.read().astype(int)
    assert labels.shape == (100, 90) and labels.max() < 9
    assert np.abs(percent.sum(0) - 100).max() <= 5  # rounding of 9 percentages
    # the class written is the most probable one (ties of rounded percentages aside)
    chosen = np.take_along_axis(percent, labels[None].astype(int), axis=0)[0]
    assert (chosen == percent.max(0)).all()


def test_predict_scene_errors(tmp_path):
    _write_s2(tmp_path / "s2.tif", 40, 40)
    with pytest.raises(DataError, match="no s1 U-Net"):
        predict_scene(PixelNet(), tmp_path / "m.tif", s2=tmp_path / "s2.tif", modality="s1")
    with pytest.raises(DataError, match=r"has 13 band\(s\) without band names; the model needs 2"):
        net = PixelNet(in_channels=2)
        net.modalities = ["s1"]
        predict_scene(net, tmp_path / "m.tif", s1=tmp_path / "s2.tif")
    with pytest.raises(DataError, match="not found"):
        predict_scene(PixelNet(), tmp_path / "m.tif", s2=tmp_path / "missing.tif")


# ----------------------------------------------------------------------------- CLI + real chip
def _save_pretrain_checkpoint(path: Path, fusion: str = "mid") -> None:
    from cromss.config import to_dict
    from cromss.models import ModelConfig, build_model

    cfg = ModelConfig(encoder="resnet18", fusion=fusion, decoder_channels=[32, 16, 16, 8, 8])
    net = build_model(cfg)
    torch.save({"epoch": 3, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": {"model": to_dict(cfg)}}}, path)


def test_predict_real_sen1floods11_chip(tmp_path):
    if not SEN1FLOODS11.is_dir():
        pytest.skip(f"real Sen1Floods11 chip not found at {SEN1FLOODS11}")
    import rasterio

    from cromss.cli import main

    torch.manual_seed(0)
    _save_pretrain_checkpoint(tmp_path / "model.ckpt")
    s1 = SEN1FLOODS11 / "Spain_7370579_S1Hand.tif"
    s2 = SEN1FLOODS11 / "Spain_7370579_S2Hand.tif"
    code = main(["predict", "--checkpoint", str(tmp_path / "model.ckpt"), "--s1", str(s1), "--s2", str(s2),
                 "--modality", "s2", "--out", str(tmp_path / "map.tif"), "--tile", "320", "--overlap", "64",
                 "--probabilities", str(tmp_path / "probs.tif")])  # 2 x 2 blended tiles (kept small: CPU-only test)
    assert code == 0
    with rasterio.open(s2) as src, rasterio.open(tmp_path / "map.tif") as out:
        assert (out.width, out.height) == (src.width, src.height) == (512, 512)
        assert out.crs == src.crs and out.transform == src.transform
        labels = out.read(1)
        assert out.colormap(1)[6][:3] == (0xC4, 0x28, 0x1B)  # DW built
    assert set(np.unique(labels)) <= set(range(9)) | {255}
    # nodata: exactly the pixels invalid in S1 (a non-finite band) or S2 (0 in every band), read here
    with rasterio.open(s1) as a, rasterio.open(s2) as b:
        raw1, raw2 = a.read().astype(np.float64), b.read().astype(np.float64)
        assert b.nodata == 0
    invalid = ~np.isfinite(raw1).all(axis=0) | (raw2 == 0).all(axis=0)
    assert np.array_equal(labels == 255, invalid)
    # elsewhere: the class map is the argmax of the written probabilities, and those are the softmax of the
    # whole 512 px scene in one forward pass of the same network (S2 clipped to mean +- 2 std of the packaged
    # statistics by hand) up to the blending of the 2 x 2 tiles, which see less context at their borders
    import json

    import cromss
    from cromss.weights import load_cromss_net

    with rasterio.open(tmp_path / "probs.tif") as src:
        probs = src.read()
    assert probs.shape == (9, 512, 512) and np.isnan(probs[:, invalid]).all()
    np.testing.assert_array_equal(labels[~invalid], probs[:, ~invalid].argmax(0))
    stats = json.loads((Path(cromss.__file__).parent / "resources" / "s2_stats.json").read_text())
    mean, std = (np.asarray(stats[k], np.float64)[:, None, None] for k in ("mean", "std"))
    x = (np.clip(raw2, mean - 2 * std, mean + 2 * std) - (mean - 2 * std)) / (4 * std)
    x[:, invalid] = 0
    net, _ = load_cromss_net(tmp_path / "model.ckpt")
    with torch.no_grad():
        whole = net.forward_modality("s2", torch.from_numpy(x[None]).float()).softmax(1)[0].numpy()
    error = np.abs(probs[:, ~invalid] - whole[:, ~invalid])
    assert error.mean() < 2e-3 and error.max() < 0.05  # measured: 5e-4 and 0.015


def test_predict_cli_reports_bad_checkpoint(tmp_path, capsys):
    from cromss.cli import main

    _write_s2(tmp_path / "s2.tif", 32, 32)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    code = main(["predict", "--checkpoint", str(tmp_path / "bad.ckpt"), "--s2", str(tmp_path / "s2.tif"),
                 "--out", str(tmp_path / "map.tif")])
    assert code == 2
    assert "bad.ckpt" in capsys.readouterr().err


def test_predict_with_finetuned_checkpoint(tmp_path):
    """A cromss.transfer fine-tuning checkpoint maps with its own modality and class table (OSM)."""
    import rasterio

    from cromss.config import to_dict
    from cromss.predict import load_predictor
    from cromss.transfer import FinetuneConfig, finetune_module_class

    torch.manual_seed(0)
    cfg = FinetuneConfig(framework="fpn", encoder="resnet18", modality="s2")
    cfg.data.kind = "osm"
    module = finetune_module_class()(to_dict(cfg))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": to_dict(cfg)}},
               tmp_path / "ft.ckpt")
    net, classes, kind, config = load_predictor(tmp_path / "ft.ckpt")
    assert kind == "finetune" and classes.name == "osm_landuse" and net.modalities == ["s2"]
    assert config["data"]["modalities"] == ["s2"] and config["framework"] == "fpn"
    _write_s2(tmp_path / "s2.tif", 64, 64)
    predict_scene(net, tmp_path / "map.tif", s2=tmp_path / "s2.tif", tile=64, overlap=0, classes=classes)
    with rasterio.open(tmp_path / "map.tif") as out:
        assert out.read(1).max() < 13
        assert out.colormap(1)[0][:3] == (0xE6, 0x00, 0x4D)  # OSM urban fabric
