"""``cromss predict`` with the run's own statistics, classes and modalities: predict == evaluation path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import SHARED_DIR
from fixtures import TINY_ENCODER
from generic_data import S2_NAMES, tile_sen1floods11

from cromss.cli import main


def _predict(*args: str) -> int:
    return main(["predict", *map(str, args)])


def _read_map(path: Path) -> tuple[np.ndarray, dict, dict]:
    with rasterio.open(path) as src:
        return src.read(1), src.colormap(1), src.tags()


# ----------------------------------------------------------------------------- a fine-tuned built-in run
def test_finetuned_run_predict_equals_evaluate_with_the_runs_statistics(tmp_path):
    """A DW fine-tuning run trained with its own ``data.s2_stats``: predict on a test tile gives exactly the
    evaluation path's prediction (dataset sample -> model), and the packaged statistics would not."""
    from cromss.config import to_dict
    from cromss.data import build_dataset
    from cromss.data.demo import write_dw_tiles
    from cromss.predict import predict_scene
    from cromss.schema import S2_MEAN, S2_STD
    from cromss.transfer import FinetuneConfig, finetune_module_class, load_run

    write_dw_tiles(np.random.default_rng(0), tmp_path / "dw", {"train": 1, "test": 1}, 64, 0)
    stats = tmp_path / "my_s2_stats.json"  # statistics unlike the packaged ones
    stats.write_text(json.dumps({"bands": S2_NAMES, "mean": [0.6 * m for m in S2_MEAN],
                                 "std": [0.4 * s for s in S2_STD]}))
    cfg = FinetuneConfig(framework="unet", encoder="resnet18", modality="s2")
    cfg.data.kind, cfg.data.root, cfg.data.s2_stats = "dw", str(tmp_path / "dw"), str(stats)
    torch.manual_seed(0)
    module = finetune_module_class()(to_dict(cfg))
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"config": to_dict(cfg)}}, ckpt)

    # the evaluation path: the run's dataset (its statistics) -> model
    module, run_cfg, _ = load_run(tmp_path / "run")
    dataset = build_dataset(run_cfg.data, "test", train=False)
    sample = dataset[0]
    with torch.no_grad():
        probs = torch.softmax(module.eval()(sample["s2"][None]), dim=1)[0].numpy()
    valid = sample["valid"].numpy()
    tile = tmp_path / "dw" / "test" / "s2" / f"{dataset.sample_id(0)}.tif"

    assert _predict("--checkpoint", tmp_path / "run", "--s2", tile, "--out", tmp_path / "map.tif",
                    "--probabilities", tmp_path / "p.tif", "--tile", 64, "--overlap", 0) == 0
    labels, colors, tags = _read_map(tmp_path / "map.tif")
    with rasterio.open(tmp_path / "p.tif") as src:
        predicted = src.read()
    assert valid.mean() > 0.9
    np.testing.assert_array_equal(labels[valid], probs.argmax(0)[valid])
    np.testing.assert_allclose(predicted[:, valid], probs[:, valid], atol=1e-5)
    assert (labels[~valid] == 255).all()
    assert tags["classes"].split(",")[0] == "water" and colors[0][:3] == (0x41, 0x9B, 0xDF)
    # the packaged statistics (what predict used before) give another map: the test can tell them apart
    net, *_ = __import__("cromss.predict", fromlist=["load_predictor"]).load_predictor(tmp_path / "run")
    predict_scene(net, tmp_path / "old.tif", s2=tile, tile=64, overlap=0)
    old, _, _ = _read_map(tmp_path / "old.tif")
    assert (old[valid] != labels[valid]).mean() > 0.01

    # a statistics file that has moved: one line naming it; --stats gives it back
    moved = stats.rename(tmp_path / "moved.json")
    assert _predict("--checkpoint", tmp_path / "run", "--s2", tile, "--out", tmp_path / "x.tif") == 2
    assert not (tmp_path / "x.tif").exists()
    assert _predict("--checkpoint", tmp_path / "run", "--s2", tile, "--out", tmp_path / "again.tif",
                    "--stats", f"s2={moved}", "--tile", 64, "--overlap", 0) == 0
    np.testing.assert_array_equal(_read_map(tmp_path / "again.tif")[0], labels)


def test_moved_statistics_error_is_one_line(tmp_path, capsys):
    from cromss.errors import DataError
    from cromss.predict import run_normalizers

    config = {"data": {"kind": "dw", "s2_stats": str(tmp_path / "gone.json")}}
    with pytest.raises(DataError, match=r"gone.json \(data.s2_stats\), which are not found now; give the same "
                                        r"file with --stats s2=FILE"):
        run_normalizers(config, {"s2": tuple(S2_NAMES)}, source="run R")
    config = {"data": {"kind": "generic", "root": str(tmp_path / "nowhere")}}
    with pytest.raises(DataError, match=r"statistics of its dataset, which are not found now .*nowhere.*s1_stats.json"):
        run_normalizers(config, {"s1": ("VV", "VH")})


# ----------------------------------------------------------------------------- a generic run on the real chip
@pytest.fixture(scope="module")
def chip_run(tmp_path_factory):
    """A tiny mid-fusion pretraining run on the Sen1Floods11 chip as a generic dataset (2 classes)."""
    chip = SHARED_DIR / "data" / "sen1floods11"
    if not chip.is_dir():
        pytest.skip(f"../shared not found at {SHARED_DIR}: real-data tests need it")
    tmp = tmp_path_factory.mktemp("chip")
    root = tile_sen1floods11(chip, tmp / "floods")
    config = {
        "name": "chip", "output_dir": str(tmp / "runs"),
        "data": {"kind": "generic", "root": str(root), "crop_size": 64, "batch_size": 4, "val_fraction": 0.25,
                 "class_colors": ["#d0d0d0", "#1060ff"]},
        "model": {"encoder": TINY_ENCODER, "fusion": "mid", "decoder_channels": [16, 16, 16, 16, 16]},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "devices": 1, "limit_train_batches": 2,
                    "limit_val_batches": 1, "num_sanity_val_steps": 0, "progress_bar": False,
                    "log_every_n_steps": 1},
    }
    (tmp / "chip.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    assert main(["pretrain", "--config", str(tmp / "chip.yaml")]) == 0
    return tmp / "runs" / "chip", root, chip


def test_generic_run_maps_the_full_chip_with_its_classes(chip_run, tmp_path):
    run, _, chip = chip_run
    s1, s2 = chip / "Spain_7370579_S1Hand.tif", chip / "Spain_7370579_S2Hand.tif"
    assert _predict("--checkpoint", run, "--input", f"s2={s2}", "--input", f"s1={s1}", "--modality", "mean",
                    "--out", tmp_path / "map.tif", "--tile", 512, "--overlap", 0) == 0  # one tile: a CPU-only test
    labels, colors, tags = _read_map(tmp_path / "map.tif")
    with rasterio.open(s2) as src, rasterio.open(tmp_path / "map.tif") as out:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, 512, 512)
    assert tags["classes"] == "not_water,water" and tags["modality"] == "mean"
    assert colors[0][:3] == (0xD0, 0xD0, 0xD0) and colors[1][:3] == (0x10, 0x60, 0xFF)
    assert set(np.unique(labels)) <= {0, 1, 255} and (labels < 2).mean() > 0.9


def test_generic_run_predict_equals_the_dataset_path_and_maps_a_folder(chip_run, tmp_path):
    """Predict of a test tile == the run's dataset sample through the S2 U-Net (its stats file, by band
    name); a folder of scenes gives the same map per scene; a moved stats file is one clear line."""
    from cromss.config import from_dict
    from cromss.data import DataConfig, build_dataset
    from cromss.weights import load_cromss_net

    run, root, _ = chip_run
    net, config = load_cromss_net(run)
    dataset = build_dataset(from_dict(DataConfig, config["data"]), "test", train=False)
    index = [dataset.sample_id(i) for i in range(len(dataset))].index("t15")
    sample = dataset[index]
    with torch.no_grad():
        expected = net.forward_modality("s2", sample["s2"][None])[0].argmax(0).numpy()
    valid = sample["valid"].numpy()
    out = tmp_path / "t15.tif"
    assert _predict("--checkpoint", run, "--input", f"s2={root / 's2' / 't15.tif'}", "--modality", "s2",
                    "--out", out, "--tile", 128, "--overlap", 0) == 0
    labels, _, _ = _read_map(out)
    assert valid.mean() > 0.5
    np.testing.assert_array_equal(labels[valid], expected[valid])
    assert (labels[~valid] == 255).all()

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("t14", "t15"):
        shutil.copy(root / "s2" / f"{name}.tif", scenes / f"{name}.tif")
    assert _predict("--checkpoint", run, "--scenes", scenes, "--modality", "s2", "--out", tmp_path / "maps",
                    "--tile", 128, "--overlap", 0) == 0
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["t14.tif", "t15.tif"]
    np.testing.assert_array_equal(_read_map(tmp_path / "maps" / "t15.tif")[0], labels)

    # the run copied the statistics it used when it started: predict still works when the dataset's moved
    stats, copy = root / "stats" / "s2_stats.json", run / "band_stats" / "s2_stats.json"
    assert copy.read_text() == stats.read_text()
    moved = stats.rename(tmp_path / "s2_stats.json")
    hidden = copy.rename(tmp_path / "run_copy.json")
    try:
        tile = f"s2={root / 's2' / 't15.tif'}"
        assert _predict("--checkpoint", run, "--input", tile, "--modality", "s2", "--out", tmp_path / "x.tif") == 2
        assert not (tmp_path / "x.tif").exists()
        assert _predict("--checkpoint", run, "--input", tile, "--modality", "s2", "--stats", f"s2={moved}",
                        "--out", tmp_path / "y.tif", "--tile", 128, "--overlap", 0) == 0
        np.testing.assert_array_equal(_read_map(tmp_path / "y.tif")[0], labels)
        hidden.rename(copy)
        assert _predict("--checkpoint", run / "checkpoints" / "last.ckpt", "--input", tile, "--modality", "s2",
                        "--out", tmp_path / "z.tif", "--tile", 128, "--overlap", 0) == 0
        np.testing.assert_array_equal(_read_map(tmp_path / "z.tif")[0], labels)
    finally:
        moved.rename(stats)
        if hidden.exists():
            hidden.rename(copy)


def test_runs_copy_the_statistics_they_normalise_with(tmp_path):
    from cromss.data import DataConfig
    from cromss.data.run_stats import record_run_stats

    stats = tmp_path / "mine.json"
    stats.write_text(json.dumps({"bands": ["VV", "VH"], "mean": [-10.0, -17.0], "std": [3.0, 4.0]}))
    written = record_run_stats(DataConfig(kind="dw", root=str(tmp_path), s1_stats=str(stats)), tmp_path / "run")
    assert written == [tmp_path / "run" / "band_stats" / "s1_stats.json"]
    assert json.loads(written[0].read_text())["mean"] == [-10.0, -17.0]
    # the packaged statistics (no file) are not copied
    assert record_run_stats(DataConfig(kind="dw", root=str(tmp_path)), tmp_path / "run2") == []


def test_scene_folder_with_subfolders_of_band_and_modality_files(tmp_path):
    from generic_data import write_tif
    from rasterio.transform import from_origin

    from cromss.errors import DataError
    from cromss.predict import find_scenes

    transform = from_origin(500000, 4000000, 10, 10)
    for band in ("R", "G"):
        write_tif(tmp_path / "scenes" / "a" / f"a_{band}.tif", np.ones((8, 8), np.uint16), transform)
    write_tif(tmp_path / "scenes" / "a" / "a_sar.tif", np.ones((1, 8, 8), np.float32), transform)
    write_tif(tmp_path / "scenes" / "b" / "optical.tif", np.ones((2, 8, 8), np.uint16), transform)
    write_tif(tmp_path / "scenes" / "b" / "sar.tif", np.ones((1, 8, 8), np.float32), transform)
    with pytest.raises(DataError, match=r"scene .*b: no opt input"):
        find_scenes(tmp_path / "scenes", {"opt": ("R", "G"), "sar": ("HH",)})
    (tmp_path / "scenes" / "b" / "optical.tif").rename(tmp_path / "scenes" / "b" / "b_opt.tif")
    found = find_scenes(tmp_path / "scenes", {"opt": ("R", "G"), "sar": ("HH",)})
    assert found == {"a": {"opt": tmp_path / "scenes" / "a", "sar": tmp_path / "scenes" / "a" / "a_sar.tif"},
                     "b": {"opt": tmp_path / "scenes" / "b" / "b_opt.tif",
                           "sar": tmp_path / "scenes" / "b" / "sar.tif"}}
