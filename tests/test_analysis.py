"""Analyses of Sec. IV-D/E: BN-KL (Fig. 8), weight KL (Fig. 12), PCA curves (Fig. 13), panels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures import TINY_ENCODER

from cromss.analysis import (
    bn_kl,
    gaussian_kl,
    neg_inv_log,
    pca_curve,
    stage_features,
    weight_kl,
    weight_tensors,
)
from cromss.errors import DataError


# ----------------------------------------------------------------------------- Gaussian / BN KL
def test_gaussian_kl_hand_values():
    # KL(N(0,1) || N(1,1)) = 1/2; KL(N(0,1) || N(0,4)) = (log 4 + 1/4 - 1) / 2
    kl = gaussian_kl(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]),
                     torch.tensor([1.0, 0.0]), torch.tensor([1.0, 4.0]))
    assert kl[0].item() == pytest.approx(0.5)
    assert kl[1].item() == pytest.approx(0.5 * (math.log(4.0) + 0.25 - 1.0))


def _bn_state(means: list[list[float]], variances: list[list[float]], prefix: str = "encoder.") -> dict:
    state = {}
    for i, (m, v) in enumerate(zip(means, variances)):
        state[f"{prefix}bn{i}.weight"] = torch.ones(len(m))
        state[f"{prefix}bn{i}.running_mean"] = torch.tensor(m)
        state[f"{prefix}bn{i}.running_var"] = torch.tensor(v)
        state[f"{prefix}bn{i}.num_batches_tracked"] = torch.tensor(3)
    return state


def test_bn_kl_identical_is_zero_and_hand_value():
    state_a = _bn_state([[0.0, 1.0], [2.0]], [[1.0, 2.0], [0.5]])
    assert bn_kl(state_a, dict(state_a), "encoder.") == 0.0
    # layer 0: channel 0 KL(N(0,1)||N(1,1)) = 0.5, channel 1 identical = 0 -> 0.25; layer 1: 0
    state_b = _bn_state([[1.0, 1.0], [2.0]], [[1.0, 2.0], [0.5]])
    assert bn_kl(state_a, state_b, "encoder.", eps=0.0) == pytest.approx((0.25 + 0.0) / 2)


def test_bn_kl_selects_prefix_and_reports_missing_layers():
    state = {**_bn_state([[0.0]], [[1.0]], "encoder."), **_bn_state([[5.0]], [[1.0]], "decoder.")}
    other = {**_bn_state([[0.0]], [[1.0]], "encoder."), **_bn_state([[0.0]], [[1.0]], "decoder.")}
    assert bn_kl(state, other, "encoder.") == 0.0
    assert bn_kl(state, other, "decoder.", eps=0.0) == pytest.approx(12.5)
    with pytest.raises(DataError, match="prefix 'head.'"):
        bn_kl(state, other, "head.")
    with pytest.raises(DataError, match="missing"):
        bn_kl(state, _bn_state([[0.0]], [[1.0]], "encoder."), "decoder.")


# ----------------------------------------------------------------------------- weight KL
def test_weight_kl_identical_is_zero():
    torch.manual_seed(0)
    tensors = [torch.randn(16, 3, 3, 3), torch.randn(16)]
    assert weight_kl(tensors, [t.clone() for t in tensors]) == 0.0


def test_weight_kl_hand_value_two_bins():
    # before: half in each bin; after: 1/4 and 3/4 -> KL = 0.5 ln 2 + 0.5 ln(2/3)
    kl = weight_kl([torch.tensor([0.0, 0.0, 1.0, 1.0])], [torch.tensor([0.0, 1.0, 1.0, 1.0])], bins=2)
    assert kl == pytest.approx(0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0), rel=1e-6)


def test_weight_kl_grows_with_shift():
    torch.manual_seed(0)
    before = [torch.randn(20_000)]
    kls = [weight_kl(before, [before[0] + shift]) for shift in (0.0, 0.1, 0.5, 1.0)]
    assert kls[0] == 0.0
    assert kls[1] > 0.0
    assert kls[1] < kls[2] < kls[3]


def test_weight_tensors_skips_bn_statistics():
    state = _bn_state([[0.0, 1.0]], [[1.0, 1.0]])
    assert set(weight_tensors(state, "encoder.")) == {"encoder.bn0.weight"}


def test_neg_inv_log_display_value():
    assert neg_inv_log(0.0) == 0.0
    assert neg_inv_log(math.exp(-2.0)) == pytest.approx(0.5)
    assert neg_inv_log(1e-4) < neg_inv_log(1e-2)


# ----------------------------------------------------------------------------- PCA curves
def test_pca_curve_hand_value():
    # centred columns with variances 4 and 1 and zero covariance -> ratios 0.8, 0.2
    x = np.array([[2.0, 1.0], [2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]])
    np.testing.assert_allclose(pca_curve(x), [0.8, 1.0], atol=1e-12)


def test_pca_curve_monotone_and_ends_at_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
    curve = pca_curve(x)
    assert curve.shape == (32,)
    assert np.all(np.diff(curve) >= 0)
    assert curve[-1] == pytest.approx(1.0)
    assert 0 < curve[0] < 1


def test_pca_curve_rejects_constant_features():
    with pytest.raises(DataError, match="zero variance"):
        pca_curve(np.ones((10, 3)))


def test_stage_features_are_the_pooled_resnet_stages():
    """Image level: the spatial means of torchvision's ResNet-18 stages (stem, layer1-4) with the encoder's
    weights; pixel level: k distinct pixel vectors of each image's stage map."""
    import segmentation_models_pytorch as smp
    import torchvision

    torch.manual_seed(0)
    encoder = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5, weights=None).eval()
    reference = torchvision.models.resnet18(weights=None).eval()
    missing = reference.load_state_dict(encoder.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["fc.bias", "fc.weight"]
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = reference.relu(reference.bn1(reference.conv1(images)))
        maps = [stem]
        x = reference.maxpool(stem)
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            x = layer(x)
            maps.append(x)
        image_level = stage_features(encoder, images)
        pixel_level = stage_features(encoder, images, pixels_per_image=10,
                                     generator=torch.Generator().manual_seed(0))
    assert [tuple(f.shape) for f in image_level] == [(2, 64), (2, 64), (2, 128), (2, 256), (2, 512)]
    for got, stage in zip(image_level, maps):
        torch.testing.assert_close(got, stage.mean(dim=(2, 3)), atol=1e-5, rtol=1e-5)
    # stage 5 of a 64 px image has 2x2 = 4 pixels per image: all of them
    assert [tuple(f.shape) for f in pixel_level] == [(20, 64), (20, 64), (20, 128), (20, 256), (8, 512)]
    for got, stage in zip(pixel_level, maps):
        k = got.shape[0] // 2
        for i in range(2):
            pixels = stage[i].flatten(1).T  # [H * W, D]
            distance = torch.cdist(got[i * k:(i + 1) * k], pixels, compute_mode="donot_use_mm_for_euclid_dist")
            nearest = distance.argmin(dim=1)
            assert float(distance.min(dim=1).values.max()) < 1e-4  # each row is a pixel of image i
            assert len(set(nearest.tolist())) == k  # k distinct pixels


# ----------------------------------------------------------------------------- glue: checkpoints, CLI
def _tiny_cfg(fusion: str = "mid", encoder: str = "resnet18"):
    from cromss.models import ModelConfig

    modalities = ["s2"] if fusion == "single" else ["s1", "s2"]
    return ModelConfig(encoder=encoder, fusion=fusion, modalities=modalities,
                       decoder_channels=[32, 16, 16, 8, 8])


def _save_ckpt(path, net, cfg, epoch):
    from cromss.config import to_dict

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": {"model": to_dict(cfg),
                                                "method": {"alpha0": 0.5, "rampup_epochs": 4}}}}, path)


def _perturb_bn(net, shift: float):
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean += shift
                module.running_var *= 1.0 + shift


def _record_plots(monkeypatch) -> list[dict]:
    """For every curve figure saved: its path, figure size in pixels, and per axes the title, the (x, y)
    data of each drawn line (not the dashed diagonal) and the bar heights."""
    import cromss.analysis.plots as plots

    figures: list[dict] = []
    original = plots._save_figure

    def save(plt, fig, out):
        axes = [{"title": ax.get_title(),
                 "lines": [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()
                           if line.get_linestyle() != "--"],
                 "bars": [patch.get_height() for patch in ax.patches]} for ax in fig.axes]
        size = tuple(round(v * 110) for v in fig.get_size_inches())
        path = original(plt, fig, out)
        figures.append({"path": path, "size": size, "axes": axes})
        return path

    monkeypatch.setattr(plots, "_save_figure", save)
    return figures


def _png_shows(path, size, colours) -> None:
    """The PNG reads back at ``size`` (w, h) px and holds pixels of each colour (hex), e.g. a curve's."""
    import matplotlib.image

    png = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    assert (png.shape[1], png.shape[0]) == size
    for colour in colours:
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (np.abs(png - rgb).max(axis=-1) <= 2).sum() > 20, f"no {colour} pixels in {path}"


def test_bn_kl_curve_and_cli(tmp_path, monkeypatch):
    from cromss.analysis import bn_kl_curve
    from cromss.cli import main
    from cromss.models import build_model

    torch.manual_seed(0)
    single_cfg, mid_cfg = _tiny_cfg("single"), _tiny_cfg("mid")
    single, mid = build_model(single_cfg), build_model(mid_cfg)
    for epoch, shift in ((1, 0.0), (2, 0.5)):
        _save_ckpt(tmp_path / "single" / "checkpoints" / f"epoch={epoch}.ckpt", single, single_cfg, epoch)
        _perturb_bn(mid, shift)
        _save_ckpt(tmp_path / "mid" / "checkpoints" / f"epoch={epoch}.ckpt", mid, mid_cfg, epoch)
    curve = bn_kl_curve(tmp_path / "single", tmp_path / "mid", "s2")
    assert [row["epoch"] for row in curve] == [1.0, 2.0]
    # freshly initialised BN layers (mean 0, var 1) are identical at epoch 1
    assert curve[0]["encoder"] == pytest.approx(0.0, abs=1e-12)
    assert curve[0]["decoder"] == pytest.approx(0.0, abs=1e-12)
    assert curve[1]["encoder"] > 0 and curve[1]["decoder"] > 0
    assert main(["analyze", "bn-kl", str(tmp_path / "single"), str(tmp_path / "mid"),
                 "--out", str(tmp_path / "out")]) == 0
    data = __import__("json").loads((tmp_path / "out" / "bn_kl.json").read_text())
    assert list(data) == ["single vs mid"]
    # the figure: encoder and decoder panels, each one line of the curve's values per epoch (first colour C0)
    figures = _record_plots(monkeypatch)
    assert main(["analyze", "bn-kl", str(tmp_path / "single"), str(tmp_path / "mid"),
                 "--out", str(tmp_path / "out2")]) == 0
    (figure,) = figures
    assert figure["path"] == tmp_path / "out2" / "bn_kl.png"
    for axis, part in zip(figure["axes"], ("encoder", "decoder")):
        assert axis["title"] == f"BN statistics KL: {part}"
        ((epochs, values),) = axis["lines"]
        assert epochs == [1.0, 2.0] and values == pytest.approx([row[part] for row in curve])
    _png_shows(figure["path"], figure["size"], ["#1f77b4"])


def test_weight_kl_cli_before_after(tmp_path, monkeypatch):
    from cromss.analysis import weight_kl_parts
    from cromss.cli import main
    from cromss.models import build_model

    torch.manual_seed(0)
    cfg = _tiny_cfg("mid")
    net = build_model(cfg)
    _save_ckpt(tmp_path / "before.ckpt", net, cfg, 0)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith("encoders.s2."):
                param.mul_(1.5)
    _save_ckpt(tmp_path / "after.ckpt", net, cfg, 1)
    same = weight_kl_parts(tmp_path / "before.ckpt", tmp_path / "before.ckpt")
    assert same["encoder"]["kl"] == 0.0 and same["decoder"]["kl"] == 0.0
    changed = weight_kl_parts(tmp_path / "before.ckpt", tmp_path / "after.ckpt")
    assert changed["encoder"]["kl"] > 0.0 and changed["decoder"]["kl"] == 0.0
    figures = _record_plots(monkeypatch)
    assert main(["analyze", "weight-kl", str(tmp_path / "before.ckpt"), str(tmp_path / "after.ckpt"),
                 "--out", str(tmp_path / "out")]) == 0
    # one bar per part: -1 / log(KL) of the changed encoder, the unchanged decoder's KL 0 displayed as 0
    (figure,) = figures
    assert figure["path"] == tmp_path / "out" / "weight_kl.png"
    assert figure["axes"][0]["bars"] == pytest.approx([neg_inv_log(changed["encoder"]["kl"]), 0.0])
    _png_shows(figure["path"], figure["size"], ["#1f77b4"])
    assert main(["analyze", "weight-kl", str(tmp_path / "before.ckpt")]) == 2  # odd count -> clear error


def _batch(modalities=("s1", "s2"), size=32, n=2):
    gen = torch.Generator().manual_seed(0)
    batch = {"s1": torch.rand(n, 2, size, size, generator=gen), "s2": torch.rand(n, 13, size, size, generator=gen),
             "label": torch.randint(0, 9, (n, size, size), generator=gen),
             "label_true": torch.randint(0, 9, (n, size, size), generator=gen),
             "valid": torch.ones(n, size, size, dtype=torch.bool), "id": [f"s{i}" for i in range(n)]}
    batch["label"][:, :4] = 255
    return {k: v for k, v in batch.items() if k not in ("s1", "s2") or k in modalities}


def _record_axes(monkeypatch) -> list[dict]:
    """For every per-sample figure saved: its path and the pixel box (left, top, right, bottom, as saved at
    100 dpi) of the image panel in each (row, column) of its grid."""
    import cromss.analysis.panels as panels

    figures: list[dict] = []
    original = panels._save_panel

    def save(plt, fig, out_dir, prefix, index, sample_id):
        path = original(plt, fig, out_dir, prefix, index, sample_id)  # drawing applied imshow's equal aspect
        fig.set_dpi(100)  # what _save_panel saves with: the boxes are in the PNG's pixels
        height = fig.get_size_inches()[1] * 100
        boxes = {}
        for ax in fig.axes:
            if ax.images and ax.get_subplotspec() is not None:
                spec, extent = ax.get_subplotspec(), ax.get_window_extent()
                boxes[spec.rowspan.start, spec.colspan.start] = (extent.x0, height - extent.y1, extent.x1,
                                                                 height - extent.y0)
        figures.append({"path": path, "boxes": boxes})
        return path

    monkeypatch.setattr(panels, "_save_panel", save)
    return figures


def _cell_colours(png, box, rows: int, cols: int):
    """RGB at the centre of each of rows x cols cells of the panel ``box`` (left, top, right, bottom px)."""
    left, top, right, bottom = box
    ys = (top + (np.arange(rows) + 0.5) * (bottom - top) / rows).astype(int)
    xs = (left + (np.arange(cols) + 0.5) * (right - left) / cols).astype(int)
    return png[ys[:, None], xs[None, :], :3]


def test_selection_masks_and_panels(tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.image
    from noise_reference import noise_scores

    from cromss.analysis import map_panels, mask_panels, selection_masks
    from cromss.models import build_model
    from cromss.schema import DW_CLASSES

    torch.manual_seed(0)
    net = build_model(_tiny_cfg("mid", TINY_ENCODER)).eval()  # the panels, not the network, are tested
    batch = _batch()
    masks = selection_masks(net, batch, alpha=0.5, gamma=1.0)
    assert set(masks) == {"s1", "s2"}
    # W_l of the panels = the numpy reference of eqs. 8, 10, 11 on the net's softmax
    with torch.no_grad():
        logits = {m: net.forward_modality(m, batch[m]).float() for m in ("s1", "s2")}
    probs = {m: v.softmax(1).numpy() for m, v in logits.items()}
    reference = noise_scores(probs, batch["label"].numpy(), 0.5)
    for m in ("s1", "s2"):
        np.testing.assert_allclose(masks[m]["w_l"].numpy(), 1 - reference[m], atol=1e-6)
    for values in masks["s2"].values():
        assert values.shape == (2, 32, 32)
        assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0 + 1e-6
    assert float(masks["s2"]["w_l"][:, :4].abs().max()) == 0.0  # ignored rows: no weight
    figures = _record_axes(monkeypatch)
    written = mask_panels(net, batch, tmp_path / "masks", 0.5, 1.0)
    assert [f["path"] for f in figures] == written and len(written) == 2
    viridis = matplotlib.colormaps["viridis"]
    palette = np.array([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)] for c in DW_CLASSES.colors] + [[1.0] * 3])
    for i, figure in enumerate(figures):
        png = matplotlib.image.imread(figure["path"])
        # per modality row: column 1 the noisy label in the DW colours (ignored white), column 5 (input, noisy,
        # true label, F_l, F_l', W_l) W_l in viridis on [0, 1]
        for r, m in enumerate(("s1", "s2")):
            label = batch["label"][i].numpy()
            shown = _cell_colours(png, figure["boxes"][r, 1], 32, 32)
            np.testing.assert_allclose(shown, palette[np.where(label == 255, 9, label)], atol=2 / 255)
            shown = _cell_colours(png, figure["boxes"][r, 5], 32, 32)
            np.testing.assert_allclose(shown, viridis(1 - reference[m][i])[..., :3], atol=0.02)
    single = build_model(_tiny_cfg("single", TINY_ENCODER))
    figures.clear()
    maps = map_panels({"mid": net, "single": single}, batch, tmp_path / "maps")
    assert len(maps) == 2 and maps[0].name == "maps_00_s0.png"
    # panels: S2, S1, noisy label, true label, then each (run, modality) map: the argmax class in DW colours
    with torch.no_grad():
        predicted = [logits["s1"].argmax(1), logits["s2"].argmax(1),
                     single.eval().forward_modality("s2", batch["s2"]).argmax(1)]
    for i, figure in enumerate(figures):
        png = matplotlib.image.imread(figure["path"])
        true = batch["label_true"][i].numpy()
        np.testing.assert_allclose(_cell_colours(png, figure["boxes"][0, 3], 32, 32), palette[true], atol=2 / 255)
        for column, pred in enumerate(predicted, start=4):
            shown = _cell_colours(png, figure["boxes"][0, column], 32, 32)
            np.testing.assert_allclose(shown, palette[pred[i].numpy()], atol=2 / 255)


def test_load_encoder_and_pca_plot(tmp_path, monkeypatch):
    from cromss.analysis import load_encoder, pca_curves, plot_pca
    from cromss.models import build_model

    torch.manual_seed(0)
    cfg = _tiny_cfg("mid")
    net = build_model(cfg)
    _save_ckpt(tmp_path / "run.ckpt", net, cfg, 3)
    encoder = load_encoder(tmp_path / "run.ckpt", "s2")
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, net.encoders["s2"].state_dict()[key])
    images = torch.rand(6, 13, 64, 64)
    curves = pca_curves(encoder, images, pixels_per_image=8)
    assert len(curves) == 5 and all(c[-1] == pytest.approx(1.0) for c in curves)
    figures = _record_plots(monkeypatch)
    plot_pca({"run": curves}, tmp_path / "pca.png")
    (figure,) = figures
    ((axis,),) = [figure["axes"]]
    assert axis["title"] == "run" and len(axis["lines"]) == 5  # one per module, the diagonal aside
    for (x, y), curve in zip(axis["lines"], curves):
        assert y == pytest.approx(list(curve)) and x == pytest.approx(list(np.arange(1, len(curve) + 1) / len(curve)))
    _png_shows(figure["path"], figure["size"], ["#1f77b4", "#ff7f0e", "#9467bd"])  # modules 1, 2, 5


def test_analyze_cli_on_demo_run_then_report(tmp_path):
    """masks -> maps -> pca on a fake pretraining run over the demo data, then the HTML report."""
    import yaml

    from cromss.cli import main
    from cromss.config import to_dict
    from cromss.data.demo import make_demo
    from cromss.models import build_model

    demo = make_demo(tmp_path / "demo", locations=4, size=64, layouts=("geotiff",), dw_train=2, dw_test=1)
    torch.manual_seed(0)
    cfg = _tiny_cfg("mid")
    run = tmp_path / "run"
    _save_ckpt(run / "checkpoints" / "last.ckpt", build_model(cfg), cfg, 2)
    config = {"model": to_dict(cfg), "data": {"kind": "nol", "root": str(demo), "format": "geotiff"},
              "method": {"alpha0": 0.5, "rampup_epochs": 4}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["analyze", "masks", str(run), "--samples", "2"]) == 0
    masks = sorted((run / "analysis" / "masks").glob("*.png"))
    assert len(masks) == 2
    assert main(["analyze", "maps", str(run), "--samples", "1"]) == 0
    assert len(list((run / "analysis" / "maps").glob("*.png"))) == 1
    assert main(["analyze", "pca", str(run), "--samples", "4", "--pixels", "4",
                 "--out", str(run / "analysis" / "pca")]) == 0
    pca = __import__("json").loads((run / "analysis" / "pca" / "pca.json").read_text())
    assert len(pca["image"]["run"]) == 5 and pca["pixel"]["run"][0][-1] == pytest.approx(1.0)
    assert main(["report", str(run), "--out", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 + 1 + 2  # masks, maps, pca (+ schedule)
