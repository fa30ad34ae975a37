"""Property-based tests (hypothesis) of the laws the method and the data tools promise.

* label smoothing (eqs. 13-15) preserves label mass: at every pixel labelled in the fed season the soft
  target is a distribution (>= 0, sums to 1), at every other pixel it is all 0; beta = mu = 0 is one-hot;
* selection weights (eq. 11) lie in [0, 1], are 0 exactly at ignored pixels, do not decrease with the
  confidence within a class, reach 1 on at least k_c = max(1, floor(alpha N_c)) pixels of each class, and
  do not change when a class's confidences are scaled; raising one pixel's confidence never lowers its
  own weight; the whole selection_weights (eqs. 8-12) stays in [0, 1];
* tiling round-trips: ``cromss data tile`` (``tile_rasters``) and reassembling the tiles read back with
  rasterio, each at the offset its own georeference says, gives the scene (full tiles; the right/bottom
  remainder and tiles that are nodata everywhere are left out, as documented).

Settings are small (20-30 examples, no deadline) so each property runs in well under 2 s; they are
derandomized (the same examples every run, as the suite's fixed seeds) and keep no example database.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import rasterio
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.transform import from_origin

from cromss.data.tiling import tile_rasters
from cromss.selection import label_weights, selection_weights
from cromss.smoothing import smooth_labels

IGN = 255
#: small, deterministic (derandomize: the same examples every run) and no example database written into the
#: repository (xdist-safe: nothing shared between workers)
SMALL = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow])


@st.composite
def label_stacks(draw):
    """(labels [B, T, H, W] with ignored pixels, season [B], num_classes)."""
    classes = draw(st.integers(2, 6))
    batch, seasons = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    ignored = draw(st.floats(0.0, 1.0))
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, seasons, height, width), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < ignored] = IGN
    season = torch.randint(0, seasons, (batch,), generator=generator)
    return labels, season, classes


@SMALL
@given(stack=label_stacks(), beta=st.floats(0.0, 0.5), mu=st.floats(0.0, 0.5), sigma=st.floats(0.3, 4.0))
def test_smoothing_preserves_label_mass(stack, beta, mu, sigma):
    labels, season, classes = stack
    out = smooth_labels(labels, season, classes, beta=beta, mu=mu, sigma=sigma, ignore_index=IGN)
    fed = labels[torch.arange(labels.shape[0]), season]  # [B, H, W]
    labelled = fed != IGN
    assert out.shape == (labels.shape[0], classes, *labels.shape[2:])
    assert torch.isfinite(out).all() and (out >= 0).all()
    mass = out.sum(1)
    torch.testing.assert_close(mass[labelled], torch.ones(int(labelled.sum())), atol=1e-5, rtol=0)
    assert torch.all(out.permute(0, 2, 3, 1)[~labelled] == 0)
    # the labelled class keeps at least its (1 - beta - mu) share plus the uniform beta / C
    at_label = out.gather(1, torch.where(labelled, fed, 0).unsqueeze(1)).squeeze(1)
    assert torch.all(at_label[labelled] >= 1 - beta - mu + beta / classes - 1e-5)
    plain = smooth_labels(labels, season, classes, beta=0.0, mu=0.0, sigma=sigma, ignore_index=IGN)
    one_hot = torch.nn.functional.one_hot(torch.where(labelled, fed, 0), classes).permute(0, 3, 1, 2).float()
    assert torch.equal(plain, one_hot * labelled.unsqueeze(1))


@st.composite
def confidences(draw):
    """(conf [B, H, W] in [0, 1] with ties and zeros, labels with ignored pixels, num_classes, alpha)."""
    classes = draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    levels = draw(st.sampled_from([None, 4]))  # None: continuous; 4: only 0, 1/3, 2/3, 1 (many ties)
    conf = torch.rand(shape, generator=generator, dtype=torch.float64)
    if levels:
        conf = torch.round(conf * (levels - 1)) / (levels - 1)
    labels = torch.randint(0, classes, shape, generator=generator)
    labels[torch.rand(shape, generator=generator) < draw(st.floats(0.0, 0.6))] = IGN
    return conf, labels, classes, draw(st.floats(0.01, 1.0))


@SMALL
@given(case=confidences(), scale=st.floats(0.05, 1.0))
def test_selection_weights_bounded_monotone_and_scale_free(case, scale):
    conf, labels, classes, alpha = case
    w = label_weights(conf, labels, alpha, classes, IGN)
    labelled = labels != IGN
    assert ((w >= 0) & (w <= 1)).all()
    assert torch.all(w[~labelled] == 0)
    for c in range(classes):
        members = labels == c
        count = int(members.sum())
        if not count:
            continue
        f, weights = conf[members], w[members]
        order = torch.argsort(f)
        assert torch.all(torch.diff(weights[order]) >= -1e-12), "a higher confidence got a lower weight"
        k = min(count, max(1, math.floor(alpha * count + 1e-6)))
        assert int((weights == 1).sum()) >= k
        if float(f.max()) > 0:
            assert torch.all(weights[f > 0] > 0)  # only a confidence of 0 can have weight 0
    # eq. 11 is a ratio to the class threshold: scaling every confidence leaves the weights
    torch.testing.assert_close(label_weights(conf * scale, labels, alpha, classes, IGN), w, atol=1e-9, rtol=0)


@SMALL
@given(case=confidences(), pick=st.integers(0, 10**6), raise_by=st.floats(0.0, 1.0))
def test_raising_a_confidence_never_lowers_its_own_weight(case, pick, raise_by):
    conf, labels, classes, alpha = case
    labelled = torch.nonzero(labels != IGN)
    if not len(labelled):
        return
    index = tuple(labelled[pick % len(labelled)].tolist())
    before = label_weights(conf, labels, alpha, classes, IGN)[index]
    higher = conf.clone()
    higher[index] = min(1.0, float(conf[index]) + raise_by)
    assert label_weights(higher, labels, alpha, classes, IGN)[index] >= before - 1e-12


@settings(SMALL, max_examples=25)
@given(seed=st.integers(0, 2**31 - 1), classes=st.integers(2, 5), alpha=st.floats(0.05, 1.0),
       gamma=st.floats(0.0, 1.0), enhance=st.booleans())
def test_selection_weights_of_two_modalities_stay_in_0_1(seed, classes, alpha, gamma, enhance):
    generator = torch.Generator().manual_seed(seed)
    probs = {m: (4 * torch.randn(2, classes, 5, 5, generator=generator)).softmax(1) for m in ("s1", "s2")}
    labels = torch.randint(0, classes, (2, 5, 5), generator=generator)
    labels[0, 0] = IGN
    out = selection_weights(probs, labels, alpha, gamma, classes, IGN, enhance=enhance)
    for masks in out.values():
        for name, value in masks.items():
            assert ((value >= 0) & (value <= 1 + 1e-6)).all(), name
        assert torch.all(masks["w_l"][labels == IGN] == 0) and torch.all(masks["w_e"][labels == IGN] == 0)


# ----------------------------------------------------------------------------- tiling
def _write(path: Path, data: np.ndarray, transform, nodata) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs="EPSG:32632", transform=transform, nodata=nodata) as dst:
        dst.write(data)


@settings(SMALL, max_examples=20)
@given(height=st.integers(8, 30), width=st.integers(8, 30), size=st.integers(5, 14), seed=st.integers(0, 2**31 - 1),
       overlap=st.booleans(), hole=st.booleans())
def test_tiling_round_trips(height, width, size, seed, overlap, hole):
    size = min(size, height, width)
    stride = size - 2 if overlap else size  # overlapping tiles must agree with the scene too
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 4000, (3, height, width)).astype(np.uint16)
    label = rng.integers(0, 5, (1, height, width)).astype(np.uint8)
    if hole:  # a nodata block: tiles that lie inside it entirely are not written
        top, left = rng.integers(0, height), rng.integers(0, width)
        image[:, top:top + 2 * size, left:left + 2 * size] = 0
    transform = from_origin(500000.0, 4000000.0, 10.0, 10.0)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        _write(root / "s2.tif", image, transform, nodata=0)
        _write(root / "label.tif", label, transform, nodata=None)
        names = tile_rasters({"s2": root / "s2.tif", "label": root / "label.tif"}, root / "tiles", size, stride,
                             prefix="scene")
        expected = [(row, col) for row in range(0, height - size + 1, stride)
                    for col in range(0, width - size + 1, stride)
                    if (image[0, row:row + size, col:col + size] != 0).any()]
        assert len(names) == len(expected)
        for name, scene in (("s2", image), ("label", label)):
            mosaic = np.zeros_like(scene)
            covered = np.zeros(scene.shape[1:], bool)
            tiles = sorted((root / "tiles" / name).glob("*.tif"))
            assert len(tiles) == len(expected)
            seen = []
            for path in tiles:
                with rasterio.open(path) as tile:
                    data = tile.read()
                    # the tile's own georeference gives its offset in the scene
                    col, row = (~transform) * (tile.transform.c, tile.transform.f)
                    col, row = round(col), round(row)
                    assert tile.transform == transform * transform.translation(col, row)
                    assert tile.crs.to_epsg() == 32632 and (tile.height, tile.width) == (size, size)
                assert path.name == f"scene_r{row:05d}_c{col:05d}.tif"
                seen.append((row, col))
                np.testing.assert_array_equal(data, scene[:, row:row + size, col:col + size])
                mosaic[:, row:row + size, col:col + size] = data
                covered[row:row + size, col:col + size] = True
            assert sorted(seen) == expected
            np.testing.assert_array_equal(mosaic[:, covered], scene[:, covered])
            if not hole and stride == size:  # everything but the right / bottom remainder is covered once
                full_h, full_w = (height // size) * size, (width // size) * size
                assert covered[:full_h, :full_w].all() and not covered[full_h:].any() and not covered[:, full_w:].any()

