"""``cromss audit``: scores against known noise, exact dataset thresholds, georeferenced maps, --clean trains.

One small network is trained once per module (plain CE on the noisy labels of controlled-noise demo
data, a few seconds) and saved as a run folder; every test audits with it. References are computed
here independently: sklearn's ROC-AUC, scipy's Spearman, numpy order statistics, rasterio read-backs,
and cromss.selection.label_weights on the concatenation of every sample.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from generic_data import make_synthetic

from cromss.audit import AuditOptions, run_audit
from cromss.audit.cleaning import cleaned_labels
from cromss.audit.scoring import DatasetThresholds, combine_scores, weights_from_thresholds
from cromss.cli import main
from cromss.schema import IGNORE_INDEX

TINY_DECODER = [16, 16, 8, 8, 8]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _save_run(run: Path, cfg, net) -> Path:
    """A run folder as `cromss pretrain` writes it: config.yaml + checkpoints/last.ckpt (net.* keys)."""
    from cromss.config import to_dict

    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = to_dict(cfg)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"config": config}}, run / "checkpoints" / "last.ckpt")
    return run


def _train(net, cfg, steps: int, seed: int = 0) -> None:
    """Plain cross-entropy on the noisy labels of every (location, season): a few seconds."""
    from cromss.data import build_dataset

    torch.manual_seed(seed)
    data = build_dataset(cfg.data, "train", train=False)
    samples = [data[i] for i in range(len(data))]
    inputs = {m: torch.stack([s[m] for s in samples]) for m in cfg.model.modalities}
    labels = torch.stack([s["label"] for s in samples])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(steps):
        pick = torch.randperm(len(samples))[:8]
        logits = net({m: x[pick] for m, x in inputs.items()})
        loss = sum(torch.nn.functional.cross_entropy(v, labels[pick], ignore_index=IGNORE_INDEX)
                   for v in logits.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


def _demo_data(root: Path, locations: int = 6, size: int = 32) -> Path:
    """Demo scenes (cromss.data.demo) in the NoL LMDB layout with a noise rate that differs per location
    (5 % to 55 %), so that samples differ in their true error counts; true labels kept."""
    from cromss import schema
    from cromss.data import demo

    out = []
    for index in range(locations):
        rng = np.random.default_rng([7, index])
        truth = demo.seasonal_truth(rng, demo.class_map(rng, size))
        s1 = np.stack([demo.render_s1(rng, truth[t], t) for t in range(schema.NUM_SEASONS)])
        s2 = np.stack([demo.render_s2(rng, truth[t], t) for t in range(schema.NUM_SEASONS)])
        noisy = demo.noisy_labels(rng, truth, 0.05 + 0.5 * index / (locations - 1))
        out.append(demo.Location(f"{1000 + index:07d}", truth, noisy, s1, s2))
    demo.write_nol(out, root / "nol", ("lmdb",), np.random.default_rng(8))
    return root


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data with known noise (5-55 % per location) and a trained CromSS-midF network as a run folder."""
    from cromss.config import from_dict
    from cromss.models import build_model
    from cromss.training import PretrainConfig

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("audit")
    source = _demo_data(base / "data", locations=5)
    cfg = from_dict(PretrainConfig, {
        "name": "midf", "output_dir": str(base / "runs"),
        "data": {"kind": "nol", "root": str(source / "nol"), "format": "lmdb", "batch_size": 5, "val_fraction": 0.2,
                 "crop_size": None},
        "model": {"encoder": "resnet18", "fusion": "mid", "modalities": ["s1", "s2"], "num_classes": 9,
                  "decoder_channels": TINY_DECODER},
        "method": {"alpha0": 0.5},
    })
    torch.manual_seed(0)
    net = build_model(cfg.model)
    _train(net, cfg, steps=24)
    run = _save_run(base / "runs" / "midf", cfg, net)
    audit = base / "audit"
    summary = run_audit(run, audit, AuditOptions(progress=False, panels=2))
    return {"base": base, "run": run, "cfg": cfg, "net": net, "audit": audit, "summary": summary,
            "nol": source / "nol"}


def _all_samples(cfg):
    """Every (location, season) of train then val, as the audit orders them, read by cromss.data."""
    from cromss.data import build_dataset

    data_cfg = dataclasses.replace(cfg.data, crop_size=None, eval_seasons="all", augment=False)
    out = []
    for split in ("train", "val"):
        dataset = build_dataset(data_cfg, split, train=False)
        for index in range(len(dataset)):
            location, season = dataset.entries[index]
            out.append((f"{dataset.sample_id(location)}@{season}", dataset[index]))
    return out


def _maps(audit: Path, names: list[str]) -> dict[str, np.ndarray]:
    out = {}
    for name in names:
        with rasterio.open(audit / "scores" / f"{name}.tif") as src:
            out[name] = src.read()
    return out


# ----------------------------------------------------------------------------- scores against known noise
def test_scores_flag_the_injected_errors_and_the_table_ranks_by_true_errors(demo):
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    samples = _all_samples(demo["cfg"])
    names = [n for n, _ in samples]
    maps = _maps(demo["audit"], names)
    scores, wrong = [], []
    for name, sample in samples:
        labelled = (sample["label"] != IGNORE_INDEX).numpy()
        assert np.isnan(maps[name][0][~labelled]).all() and np.isfinite(maps[name][0][labelled]).all()
        scores.append(maps[name][0][labelled])
        wrong.append((sample["label"] != sample["label_true"]).numpy()[labelled])
    auc = roc_auc_score(np.concatenate(wrong), np.concatenate(scores))
    assert auc > 0.6, auc  # the combined score (mean of 1 - W_l) is higher on the injected errors
    reported = demo["summary"]["reference"]["scores"]["combined_mean"]["auc"]
    assert reported == pytest.approx(auc, abs=0.005)  # binned in the audit, exact here
    # the ranked table: its order against the true per-sample error counts (Spearman > 0)
    true_errors = {n: int(w.sum()) for n, w in zip(names, wrong)}
    with (demo["audit"] / "ranking.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["rank"]) for r in rows] == list(range(1, len(names) + 1))
    order = [f"{r['location']}@{r['time']}" for r in rows]
    assert sorted(order) == sorted(names)
    rho = spearmanr(range(len(order)), [true_errors[n] for n in order]).statistic
    assert -rho > 0.3, rho  # rank 1 = most estimated wrong pixels
    assert all(int(r["reference_wrong_pixels"]) == true_errors[f"{r['location']}@{r['time']}"] for r in rows)
    assert [float(r["estimated_wrong_pixels"]) for r in rows] == sorted(
        (float(r["estimated_wrong_pixels"]) for r in rows), reverse=True)


def test_dataset_thresholds_equal_label_weights_on_the_whole_dataset(demo):
    """The per-modality maps equal 1 - W_l of cromss.selection on ONE batch holding every sample."""
    from cromss.selection import selection_weights

    samples = _all_samples(demo["cfg"])
    inputs = {m: torch.stack([s[m] for _, s in samples]) for m in ("s1", "s2")}
    labels = torch.stack([s["label"] for _, s in samples])
    with torch.no_grad():
        probs = {m: v.softmax(1) for m, v in demo["net"](inputs).items()}
    weights = selection_weights(probs, labels, 0.5, 1.0, 9, IGNORE_INDEX)
    maps = _maps(demo["audit"], [n for n, _ in samples])
    for index, (name, sample) in enumerate(samples):
        labelled = (sample["label"] != IGNORE_INDEX).numpy()
        for band, m in enumerate(("s1", "s2"), start=1):
            expected = 1 - weights[m]["w_l"][index].numpy()
            np.testing.assert_allclose(maps[name][band][labelled], expected[labelled], atol=2e-6)
        np.testing.assert_allclose(maps[name][0][labelled], maps[name][1:, labelled].mean(0), atol=1e-6)
    flagged = sum(int(r["flagged_pixels"]) for r in csv.DictReader((demo["audit"] / "ranking.csv").open()))
    assert demo["summary"]["flagged_pixels"] == flagged


def test_radix_thresholds_match_numpy_order_statistics():
    """Two passes over batches give the k_c-th largest value per class, ties and empty classes included."""
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        conf = rng.random((2, 5, 7)).astype(np.float32)
        conf[0, 0, :3] = 0.5  # ties
        labels = rng.integers(0, 3, (2, 5, 7))  # class 3 never occurs
        labels[1, 1] = IGNORE_INDEX
        batches.append((torch.from_numpy(conf), torch.from_numpy(labels)))
    for alpha in (0.3, 0.5, 0.77, 1.0):
        selector = DatasetThresholds(4, alpha, IGNORE_INDEX)
        for conf, labels in batches:
            selector.add_coarse(conf, labels)
        selector.end_coarse()
        for conf, labels in batches:
            selector.add_fine(conf, labels)
        values = np.concatenate([c.numpy().ravel() for c, _ in batches])
        classes = np.concatenate([lab.numpy().ravel() for _, lab in batches])
        for c in range(3):
            ordered = np.sort(values[classes == c])[::-1]
            k = max(1, int(np.floor(alpha * ordered.size + 1e-6)))
            assert selector.thresholds[c].item() == ordered[k - 1]
        assert selector.thresholds[3].item() == 0.0
    # W_l = min(1, f / f_c); ignored pixels 0; a class whose threshold is 0 gets 1
    conf = torch.tensor([[[0.2, 0.8, 0.1, 0.3]]])
    labels = torch.tensor([[[0, 0, IGNORE_INDEX, 1]]])
    w = weights_from_thresholds(conf, labels, torch.tensor([0.4, 0.0]), IGNORE_INDEX)
    assert w.tolist() == [[[0.5, 1.0, 0.0, 1.0]]]


def test_combined_scores_and_cleaned_labels_by_hand():
    scores = torch.tensor([[0.2, 0.0, 1.0], [0.6, 0.0, 0.5]])
    assert combine_scores(scores, "mean").tolist() == pytest.approx([0.4, 0.0, 0.75])
    assert combine_scores(scores, "product").tolist() == pytest.approx([1 - 0.8 * 0.4, 0.0, 1.0])
    assert combine_scores(scores, "max").tolist() == pytest.approx([0.6, 0.0, 1.0])
    assert combine_scores(scores, "min").tolist() == pytest.approx([0.2, 0.0, 0.5])
    label = np.array([0, 1, 2, 1, IGNORE_INDEX])
    flagged = np.array([True, True, False, True, False])
    consensus = np.array([3, -1, 0, 1, 2])
    assert cleaned_labels(label, flagged, consensus, "ignore").tolist() == [255, 255, 2, 255, 255]
    assert cleaned_labels(label, flagged, consensus, "relabel").tolist() == [3, 255, 2, 1, 255]
    assert cleaned_labels(label, flagged, consensus, "none").tolist() == label.tolist()


def test_batch_thresholds_give_the_training_weights(demo, tmp_path):
    """--thresholds batch equals selection_weights on each batch of --batch-size samples (here the first)."""
    from cromss.selection import selection_weights

    out = tmp_path / "batch"
    run_audit(demo["run"], out, AuditOptions(progress=False, panels=0, thresholds="batch", batch_size=5,
                                             splits=["train"], maps=True))
    samples = _all_samples(demo["cfg"])[:5]
    maps = _maps(out, [n for n, _ in samples])
    inputs = {m: torch.stack([s[m] for _, s in samples]) for m in ("s1", "s2")}
    labels = torch.stack([s["label"] for _, s in samples])
    with torch.no_grad():
        probs = {m: v.softmax(1) for m, v in demo["net"](inputs).items()}
    w = selection_weights(probs, labels, 0.5, 1.0, 9, IGNORE_INDEX)
    for i, (name, _) in enumerate(samples):
        keep = (labels[i] != IGNORE_INDEX).numpy()
        for band, m in enumerate(("s1", "s2"), start=1):
            np.testing.assert_allclose(maps[name][band][keep], 1 - w[m]["w_l"][i].numpy()[keep], atol=2e-6)


def test_a_litdata_stream_is_audited_like_its_source(demo, tmp_path):
    """A stream of one training location (every season in one item) and one validation entry: its scores
    equal 1 - W_l computed from the LMDB samples of the same (location, season) pairs."""
    from cromss.data.config import DataConfig
    from cromss.data.stream_convert import convert_to_stream
    from cromss.selection import selection_weights

    stream = tmp_path / "stream"
    convert_to_stream(DataConfig(kind="nol", root=str(demo["nol"]), format="lmdb", val_fraction=0.2, max_samples=1),
                      stream, chunk_bytes="256KB", num_workers=1)
    out = tmp_path / "streamed"
    summary = run_audit(demo["run"], out, AuditOptions(data=str(stream), progress=False, panels=1))
    assert summary["data"]["format"] == "stream" and summary["samples"] == 4 + 1
    rows = list(csv.DictReader((out / "ranking.csv").open()))
    names = [f"{r['location']}@{r['time']}" for r in rows]
    assert sorted(r["time"] for r in rows if r["split"] == "train") == ["0", "1", "2", "3"]
    source = dict(_all_samples(demo["cfg"]))
    samples = [source[n] for n in names]
    inputs = {m: torch.stack([s[m] for s in samples]) for m in ("s1", "s2")}
    labels = torch.stack([s["label"] for s in samples])
    with torch.no_grad():
        probs = {m: v.softmax(1) for m, v in demo["net"](inputs).items()}
    w = selection_weights(probs, labels, 0.5, 1.0, 9, IGNORE_INDEX)
    maps = _maps(out, names)
    for i, name in enumerate(names):
        keep = (labels[i] != IGNORE_INDEX).numpy()
        np.testing.assert_allclose(maps[name][1][keep], 1 - w["s1"]["w_l"][i].numpy()[keep], atol=2e-6)
    assert len(list((out / "panels").glob("*.png"))) == 1  # read back from the stream for the panel


# ----------------------------------------------------------------------------- generic GeoTIFF data
@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """A georeferenced generic dataset (EPSG:32632, 2 modalities, 3 classes, 1-2 dates) and an untrained run."""
    from cromss.config import from_dict
    from cromss.models import build_model
    from cromss.training import PretrainConfig
    from cromss.training.config import resolve_pretrain_config

    base = tmp_path_factory.mktemp("generic")
    root = make_synthetic(base / "data", {"opt": ["red", "green", "blue", "nir"], "sar": ["VV", "VH"]},
                          ["water", "land", "urban"], [2, 1, 2, 1, 1], size=32,
                          splits=["train", "train", "val", "test", "train"])
    cfg = resolve_pretrain_config(from_dict(PretrainConfig, {
        "name": "generic", "output_dir": str(base / "runs"),
        "data": {"kind": "generic", "root": str(root), "batch_size": 2, "crop_size": 32},
        "model": {"encoder": "resnet18", "fusion": "late", "decoder_channels": TINY_DECODER},
        "method": {"alpha0": 0.5, "rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "progress_bar": False,
                    "num_sanity_val_steps": 0, "accelerator": "cpu"},
    }))
    torch.manual_seed(0)
    run = _save_run(base / "runs" / "generic", cfg, build_model(cfg.model))
    return {"base": base, "root": root, "run": run, "cfg": cfg}


def test_generic_round_trip_score_maps_on_the_label_grid_and_clean_dataset(generic):
    out, clean = generic["base"] / "audit", generic["base"] / "clean"
    assert main(["audit", str(generic["run"]), "--out", str(out), "--clean", str(clean), "--no-progress",
                 "--panels", "1"]) == 0
    with (generic["root"] / "samples.csv").open(newline="") as handle:
        source = list(csv.DictReader(handle))
    assert len(list((out / "scores").glob("*.tif"))) == len(source)  # train, val and test rows
    for row in source:
        name = f"{row['location']}@{row['time']}"
        with rasterio.open(generic["root"] / row["label"]) as label, rasterio.open(out / "scores" / f"{name}.tif") as m:
            assert (m.width, m.height) == (label.width, label.height)
            assert m.transform == label.transform and m.crs == label.crs and m.crs.to_epsg() == 32632
            assert m.count == 3 and m.dtypes[0] == "float32" and np.isnan(m.nodata)
            assert list(m.descriptions) == ["score_mean", "score_opt (1 - W_l)", "score_sar (1 - W_l)"]
            raw, scores = label.read(1), m.read()
        assert np.isnan(scores[:, raw == -1]).all()  # the unlabelled pixel (-1 is outside label_values)
        assert np.isfinite(scores[:, raw != -1]).all() and (scores[:, raw != -1] >= 0).all()
        with rasterio.open(clean / "labels" / f"{name}.tif") as cleaned:
            assert cleaned.transform == label.transform and cleaned.crs == label.crs
            ids = cleaned.read(1)
        flagged = scores[0] >= 0.5
        np.testing.assert_array_equal(ids[flagged], 255)
        np.testing.assert_array_equal(ids[~flagged & (raw != -1)], raw[~flagged & (raw != -1)] - 10)
    with (clean / "samples.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # images are referenced by absolute path (not copied); splits kept
    assert not (clean / "images").exists()
    by_name = {(r["location"], r["time"]): r for r in rows}
    for row in source:
        cleaned = by_name[(row["location"], row["time"])]
        assert Path(cleaned["opt"]).is_absolute() and Path(cleaned["opt"]) == (generic["root"] / row["opt"]).resolve()
        assert cleaned["split"] == (row["split"] or "train")
    summary = json.loads((out / "audit.json").read_text())
    assert summary["georeferenced_maps"] == len(source) and summary["clean"]["images"] == "referenced"


def test_clean_output_trains_with_pretrain_and_finetune(generic, tmp_path):
    clean = generic["base"] / "clean-trains"
    run_audit(generic["run"], tmp_path / "audit", AuditOptions(progress=False, panels=0, clean=str(clean),
                                                                relabel=True))
    pre = tmp_path / "pretrain.yaml"
    pre.write_text(yaml.safe_dump({
        "name": "on-clean", "output_dir": str(tmp_path / "runs"),
        "data": {"kind": "generic", "root": str(clean), "batch_size": 2, "crop_size": 32},
        "model": {"encoder": "resnet18", "fusion": "mid", "decoder_channels": TINY_DECODER},
        "method": {"rampup_epochs": 1},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "progress_bar": False,
                    "num_sanity_val_steps": 0, "accelerator": "cpu"},
    }))
    assert main(["pretrain", "--config", str(pre)]) == 0
    config = yaml.safe_load((tmp_path / "runs" / "on-clean" / "config.yaml").read_text())
    assert config["data"]["classes"] == ["water", "land", "urban"]
    assert (tmp_path / "runs" / "on-clean" / "checkpoints" / "last.ckpt").is_file()
    ft = tmp_path / "finetune.yaml"
    ft.write_text(yaml.safe_dump({
        "name": "clean-ft", "output_dir": str(tmp_path / "ft"), "framework": "fpn", "encoder": "resnet18",
        "modality": "opt", "epochs": 1, "seeds": 1,
        "data": {"kind": "generic", "root": str(clean), "crop_size": 32, "batch_size": 2},
        "trainer": {"accelerator": "cpu", "limit_train_batches": 1, "limit_val_batches": 1,
                    "enable_progress_bar": False, "log_every_n_steps": 1},
    }))
    assert main(["finetune", "--config", str(ft), "--encoder", str(tmp_path / "runs" / "on-clean")]) == 0
    metrics = json.loads(next((tmp_path / "ft").rglob("metrics.json")).read_text())
    assert metrics["class_names"] == ["water", "land", "urban"]
    confusion = np.array(metrics["confusion"], dtype=np.float64)  # mIoU by hand: classes with support only
    tp, support, predicted = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    present = support > 0
    assert present.any() and metrics["miou"] == pytest.approx(
        float(np.mean(tp[present] / (support + predicted - tp)[present])), abs=1e-9)


def test_clean_of_lmdb_data_writes_normalised_images_that_read_back_equal(demo, tmp_path):
    """LMDB samples have no GeoTIFF to reference: the cleaned dataset holds the model's inputs exactly."""
    from cromss.data import build_dataset
    from cromss.data.config import DataConfig

    clean = tmp_path / "clean"
    summary = run_audit(demo["run"], tmp_path / "audit", AuditOptions(progress=False, panels=0, clean=str(clean)))
    assert summary["clean"]["images"] == "written" and summary["georeferenced_maps"] == 0
    originals = dict(_all_samples(demo["cfg"]))
    flagged = {f"{r['location']}@{r['time']}": int(r["flagged_pixels"])
               for r in csv.DictReader((tmp_path / "audit" / "ranking.csv").open())}
    assert summary["flagged_pixels"] == sum(flagged.values()) > 0
    seen = []
    for split in ("train", "val"):  # the audited run's own split of locations
        cleaned = build_dataset(DataConfig(kind="generic", root=str(clean), eval_seasons="all"), split, train=False)
        for index in range(len(cleaned)):
            location, season = cleaned.entries[index]
            row = cleaned.locations[location].rows[season]
            sample, original = cleaned[index], originals[f"{row.location}@{row.time}"]
            seen.append(f"{row.location}@{row.time}")
            for m in ("s1", "s2"):
                torch.testing.assert_close(sample[m], original[m], atol=1e-6, rtol=0)
            torch.testing.assert_close(sample["label_true"], original["label_true"])
            kept = sample["label"] != IGNORE_INDEX
            assert torch.equal(sample["label"][kept], original["label"][kept])
            # the flagged pixels of this sample (and only those) became unlabelled
            assert int(kept.sum()) == int((original["label"] != IGNORE_INDEX).sum()) - flagged[seen[-1]]
    assert seen == list(originals)


def test_single_modal_run_scores_its_own_confidence(generic, tmp_path):
    from cromss.config import from_dict
    from cromss.data import build_dataset
    from cromss.models import build_model
    from cromss.selection import label_confidence, label_weights
    from cromss.training import PretrainConfig
    from cromss.training.config import resolve_pretrain_config

    cfg = resolve_pretrain_config(from_dict(PretrainConfig, {
        "name": "single", "output_dir": str(tmp_path),
        "data": {"kind": "generic", "root": str(generic["root"]), "modalities": ["opt"], "batch_size": 8},
        "model": {"encoder": "resnet18", "fusion": "single", "decoder_channels": TINY_DECODER},
        "method": {"alpha0": 0.5}}))
    torch.manual_seed(1)
    net = build_model(cfg.model).eval()
    run = _save_run(tmp_path / "single", cfg, net)
    summary = run_audit(run, tmp_path / "audit", AuditOptions(progress=False, panels=0, splits=["train"]))
    assert summary["settings"]["enhance"] is False and summary["modalities"] == ["opt"]
    data_cfg = dataclasses.replace(cfg.data, crop_size=None, eval_seasons="all")
    dataset = build_dataset(data_cfg, "train", train=False)
    samples = [dataset[i] for i in range(len(dataset))]
    labels = torch.stack([s["label"] for s in samples])
    with torch.no_grad():
        probs = net({"opt": torch.stack([s["opt"] for s in samples])})["opt"].softmax(1)
    expected = 1 - label_weights(label_confidence(probs, labels, IGNORE_INDEX), labels, 0.5, 3, IGNORE_INDEX)
    for index in range(len(samples)):
        location, season = dataset.entries[index]
        row = dataset.locations[location].rows[season]
        with rasterio.open(tmp_path / "audit" / "scores" / f"{row.location}@{row.time}.tif") as src:
            maps = src.read()
        keep = (labels[index] != IGNORE_INDEX).numpy()
        np.testing.assert_allclose(maps[0][keep], expected[index].numpy()[keep], atol=2e-6)


# ----------------------------------------------------------------------------- CLI, errors, report
def test_ratio_and_confidence_scores_by_hand_and_the_same_flags(demo, tmp_path):
    """--score ratio = 1 / (1 + f / f_c) and --score confidence = 1 - f, with f the enhanced label confidence
    (eq. 10) and f_c the floor(alpha N_c)-th largest f of class c over the dataset (numpy sort here); flags and
    the flagged counts stay those of 1 - W_l."""
    from cromss.selection import cross_modal_enhance, label_confidence

    samples = _all_samples(demo["cfg"])
    names = [n for n, _ in samples]
    inputs = {m: torch.stack([s[m] for _, s in samples]) for m in ("s1", "s2")}
    labels = torch.stack([s["label"] for _, s in samples])
    with torch.no_grad():
        probs = {m: v.softmax(1) for m, v in demo["net"](inputs).items()}
    f = cross_modal_enhance([label_confidence(probs[m], labels, IGNORE_INDEX) for m in ("s1", "s2")])
    f = [c.numpy() for c in f]
    lab = labels.numpy()
    labelled = lab != IGNORE_INDEX
    thresholds = []
    for conf in f:
        table = np.zeros(9)
        for c in range(9):
            values = np.sort(conf[lab == c])[::-1]
            if values.size:
                table[c] = values[max(1, int(np.floor(0.5 * values.size + 1e-6))) - 1]
        thresholds.append(table)
    for kind in ("ratio", "confidence"):
        out = tmp_path / kind
        summary = run_audit(demo["run"], out, AuditOptions(progress=False, panels=0, score=kind))
        assert summary["settings"]["score"] == kind
        assert summary["flagged_pixels"] == demo["summary"]["flagged_pixels"]  # flags: 1 - W_l
        maps = _maps(out, names)
        for index, name in enumerate(names):
            keep = labelled[index]
            for band, conf in enumerate(f):
                if kind == "ratio":
                    expected = 1.0 / (1.0 + conf[index] / thresholds[band][np.where(keep, lab[index], 0)])
                else:
                    expected = 1.0 - conf[index]
                np.testing.assert_allclose(maps[name][band + 1][keep], expected[keep], atol=2e-6)
        reference = summary["reference"]["scores"]
        assert reference["combined_mean"]["auc"] == pytest.approx(reference[f"{kind}_mean"]["auc"], abs=1e-9)
        assert {"weight_mean", "ratio_mean", "confidence_mean"} <= set(reference)
    # below the class threshold the ratio ranks exactly as 1 - W_l (both decrease with f / f_c)
    weight_maps, ratio_maps = _maps(demo["audit"], names[:1]), _maps(tmp_path / "ratio", names[:1])
    w, r = weight_maps[names[0]][2][labelled[0]], ratio_maps[names[0]][2][labelled[0]]
    below = w > 0
    assert (np.argsort(w[below], kind="stable") == np.argsort(r[below], kind="stable")).mean() > 0.99


def test_existing_output_is_refused_and_left_byte_identical(demo, capsys):
    before = {p: p.read_bytes() for p in demo["audit"].rglob("*") if p.is_file()}
    assert main(["audit", str(demo["run"]), "--out", str(demo["audit"]), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cromss: error: audit folder") and "--overwrite" in err[0]
    assert {p: p.read_bytes() for p in demo["audit"].rglob("*") if p.is_file()} == before
    assert not list(demo["audit"].parent.glob(".audit.partial-*"))


@pytest.mark.parametrize("args, message", [
    (["--relabel"], "--relabel needs --clean"),
    (["--flag", "0"], "--flag 0.0 must be in (0, 1]"),
    (["--data", "/nonexistent/folder"], "--data /nonexistent/folder: no such folder"),
    (["--score", "ratio", "--thresholds", "batch"], "--score ratio needs --thresholds dataset"),
])
def test_bad_options_are_one_line_and_write_nothing(demo, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["audit", str(demo["run"]), "--out", str(out), "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cromss: error: ") and message in err[0]
    assert not out.exists() or not any(out.iterdir())


def test_report_has_the_audit_section_with_panels(demo, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(demo["run"]), "--audit", str(demo["audit"]), "--out", str(page)]) == 0
    text = page.read_text()
    assert "label audit: audit" in text and "samples to relabel first" in text
    assert text.count('alt="rank00') == 2  # the two panels of the fixture's audit
    panels = sorted((demo["audit"] / "panels").glob("*.png"))
    first = next(csv.DictReader((demo["audit"] / "ranking.csv").open()))
    assert panels[0].name == f"rank001_{first['location']}@{first['time']}.png"
