"""Benchmark: `cromss audit` (CromSS 1 - W_l) vs cleanlab with out-of-sample K-fold probabilities.

Same data and budget for every method (docs/audit.md, "Benchmark"; table in docs/results.md):

* data (a) controlled-noise demo data (``cromss.experiments.write_controlled_data``) at 20 % and 40 %
  noise, exported once to a generic dataset (``cromss.audit.cleaning.export_dataset``: normalised images,
  noisy label, true label as reference) that every method trains on;
* data (b) the real Sen1Floods11 chip cut into 64 tiles of 64 px, noisy label NDWI > 0 on S2, the hand
  label as reference;
* methods: the CromSS audit of CromSS-midF and CromSS-lateF runs (per modality and combined scores);
  cleanlab (``cleanlab.segmentation.rank.get_label_quality_scores`` pixel scores, ``cleanlab.rank``
  normalized margin, ``cleanlab.segmentation.filter.find_label_issues``) on OUT-OF-SAMPLE probabilities of
  K-fold single-modal S2 U-Nets of the same size and budget (folds by location); in-sample
  self-confidence of a single-modal S2 U-Net trained on all data; for (b) the NDWI-margin ceiling
  (``-|NDWI|``: the rule that made the label). Every model: ResNet-18 U-Net(s), the study settings of
  configs/experiments/ablation-demo.yaml (batch 8, crop 64, Adam 1e-3, alpha ramp over 10 epochs).
* metrics, exact (sklearn on every labelled pixel): ROC-AUC, AP, precision at the top 1/5/10 %, wall time;
  ranking of samples: Spearman of the table's order with the true per-sample error counts.
* downstream (a, 40 %): CromSS-midF pretrained on the audit's ``--clean`` labels vs on the raw labels,
  frozen S2 encoder, DeepLabV3+ on the demo DW downstream set, 3 fine-tuning seeds, mean ± std mIoU.
* cost: CPU seconds of an audit per 1,000 samples of 256 px (a few samples, extrapolated).

Usage (about an hour on 2 shared cores; run it in the background)::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/audit.py --out runs/bench-audit
    python benchmarks/audit.py --out /tmp/toy --toy        # seconds: the test's size

Writes ``OUT/results.json`` and ``OUT/results.md``; finished steps are kept in ``OUT`` and skipped when
the command is run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHIP = ROOT.parent / "shared" / "data" / "sen1floods11" / "Spain_7370579"
S2_NAMES = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
TOP = (1.0, 5.0, 10.0)
METHODS = ("cromss", "self", "cleanlab", "cromss-kfold")


# ----------------------------------------------------------------------------- settings
def settings(toy: bool, epochs: int | None, locations: int | None, folds: int | None) -> dict[str, Any]:
    if toy:
        return {"epochs": epochs or 1, "floods_epochs": epochs or 1, "locations": locations or 8, "size": 32,
                "folds": folds or 2,
                "floods_tile": 128, "batch": 4, "steps": 2, "finetune_epochs": 1, "seeds": 1,
                "dw_train": 3, "dw_test": 2, "rampup": 1, "cost_samples": 2}
    # sized for ~90 min on 2 cores shared with other jobs (docs/audit.md, "Benchmark"): demo data 32
    # locations x 4 seasons and 20 epochs, the real chip 30 epochs as in the issue; K = 3 folds
    return {"epochs": epochs or 20, "floods_epochs": epochs or 30, "locations": locations or 32, "size": 64,
            "folds": folds or 3,
            "floods_tile": 64, "batch": 8, "steps": None, "finetune_epochs": 10, "seeds": 3,
            "dw_train": 24, "dw_test": 16, "rampup": 10, "cost_samples": 6}


def pretrain_overrides(s: dict[str, Any]) -> list[str]:
    """The study settings of configs/experiments/ablation-demo.yaml (sizes of this benchmark)."""
    out = [f"data.crop_size={s['size']}", f"data.batch_size={s['batch']}", "data.val_fraction=0.125",
           f"trainer.max_epochs={s['epochs']}", f"method.rampup_epochs={s['rampup']}", "optim.patience=4",
           "optim.lr=1.0e-3", "model.encoder=resnet18", "model.decoder_channels=[128, 64, 32, 16, 16]",
           "method.alpha0=0.5", "method.sigma=3.0", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
           "data.kind=generic", "data.format=auto", "data.modalities=null", "data.bands=null",
           "model.modalities=null", "model.num_classes=null", "model.bands=null", "data.classes=null",
           "data.class_colors=null"]
    if s["steps"]:
        out.append(f"trainer.limit_train_batches={s['steps']}")
    return out


VARIANTS = {
    "CromSS-midF": ["model.fusion=mid", "method.selection=true"],
    "CromSS-lateF": ["model.fusion=late", "method.selection=true"],
    "single-S2": ["model.fusion=single", "data.modalities=[s2]", "method.selection=false",
                  "method.consistency=false"],
}


# ----------------------------------------------------------------------------- data
def write_tif(path: Path, data: np.ndarray, transform: Any, crs: Any, nodata: Any = None,
              names: list[str] | None = None) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for index, name in enumerate(names or [], start=1):
            dst.set_band_description(index, name)


def floods_dataset(out: Path, tile: int) -> tuple[Path, dict[str, np.ndarray]]:
    """The chip cut into tiles: s1, s2, NDWI > 0 label (255 where S2 has no data), hand reference."""
    import rasterio
    import yaml
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    with rasterio.open(f"{CHIP}_S1Hand.tif") as src:
        s1, transform, crs = src.read(), src.transform, src.crs
    with rasterio.open(f"{CHIP}_S2Hand.tif") as src:
        s2 = src.read()
    with rasterio.open(f"{CHIP}_LabelHand.tif") as src:
        hand = src.read(1)
    green, nir = s2[2].astype(np.float64), s2[7].astype(np.float64)
    ndwi = (green - nir) / np.maximum(green + nir, 1.0)
    noisy = (ndwi > 0).astype(np.uint8)
    noisy[(s2 == 0).all(axis=0)] = 255
    ndwi_tiles, rows = {}, []
    per_side = s1.shape[-1] // tile
    for index in range(per_side ** 2):
        r, c = divmod(index, per_side)
        window = Window(c * tile, r * tile, tile, tile)
        t = window_transform(window, transform)
        sl = (slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
        name = f"t{index:02d}"
        write_tif(out / "s1" / f"{name}.tif", s1[:, sl[0], sl[1]], t, crs, np.nan, ["VV", "VH"])
        write_tif(out / "s2" / f"{name}.tif", s2[:, sl[0], sl[1]], t, crs, 0, S2_NAMES)
        write_tif(out / "noisy" / f"{name}.tif", noisy[sl], t, crs, 255)
        write_tif(out / "hand" / f"{name}.tif", hand[sl], t, crs, -1)
        ndwi_tiles[name] = ndwi[sl]
        rows.append({"location": name, "s2": f"s2/{name}.tif", "s1": f"s1/{name}.tif",
                     "label": f"noisy/{name}.tif", "reference": f"hand/{name}.tif"})
    (out / "dataset.yaml").write_text(yaml.safe_dump({
        "modalities": {"s2": S2_NAMES, "s1": ["VV", "VH"]}, "classes": ["not_water", "water"],
        "label_values": {0: 0, 1: 1}, "samples": "samples.csv"}, sort_keys=False))
    with (out / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for modality, data, nodata in (("s1", s1, None), ("s2", s2, 0)):
        flat = data.reshape(data.shape[0], -1).astype(np.float64)
        means, stds = [], []
        for band in flat:
            keep = np.isfinite(band) & ((band != nodata) if nodata is not None else True)
            means.append(float(band[keep].mean()))
            stds.append(float(max(band[keep].std(), 1e-6)))
        (out / "stats").mkdir(exist_ok=True)
        (out / "stats" / f"{modality}_stats.json").write_text(json.dumps(
            {"modality": modality, "bands": S2_NAMES if modality == "s2" else ["VV", "VH"], "mean": means,
             "std": stds}))
    return out, ndwi_tiles


def demo_dataset(out: Path, s: dict[str, Any], rate: float) -> tuple[Path, Path]:
    """The controlled-noise data at ``rate`` as a generic dataset (and the downstream DW tiles)."""
    from cromss.audit.cleaning import export_dataset
    from cromss.data.config import DataConfig
    from cromss.experiments import DemoDataSpec, noise_tag, write_controlled_data
    from cromss.schema import DW_CLASSES

    spec = DemoDataSpec(locations=s["locations"], size=s["size"], dw_train=s["dw_train"], dw_test=s["dw_test"],
                        seed=0)
    source = write_controlled_data(out / "nol", spec, rate)
    generic = out / f"generic-{noise_tag(rate)}"
    if not (generic / "samples.csv").is_file():
        if generic.exists():
            shutil.rmtree(generic)
        cfg = DataConfig(kind="nol", root=str(source / "nol"), format="lmdb", val_fraction=0.125, seed=0)
        export_dataset(cfg, generic, list(DW_CLASSES.names), list(DW_CLASSES.colors))
    return generic, out / "nol" / "dw"


def samples_of(root: Path) -> list[dict[str, str]]:
    with (root / "samples.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def name_of(row: dict[str, str]) -> str:
    text = f"{row['location']}@{row['time']}" if row.get("time") else row["location"]
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in text)


def class_ids(root: Path, path: str) -> np.ndarray:
    """A label file as class ids (255 = ignored), through the dataset's own label map."""
    import rasterio

    from cromss.data.description import load_description
    from cromss.data.generic import description_label_map

    description = load_description(root)
    with rasterio.open(root / path if not Path(path).is_absolute() else path) as src:
        raw, nodata = src.read(1), src.nodata
    ignore = np.zeros(raw.shape, bool)
    if raw.dtype.kind == "f":
        ignore = ~np.isfinite(raw)
        raw = np.where(ignore, 0, raw).astype(np.int64)
    if nodata is not None and math.isfinite(nodata):
        ignore |= raw == nodata
    labels = description_label_map(description).apply(raw.astype(np.int64), path)
    labels[ignore] = 255
    return labels


# ----------------------------------------------------------------------------- training and prediction
def pretrain_run(root: Path, out: Path, name: str, overrides: list[str], s: dict[str, Any]) -> tuple[Path, float]:
    """One pretraining on the generic dataset ``root`` (skipped when finished); returns (run, seconds)."""
    from cromss.config import apply_overrides, from_dict, read_yaml
    from cromss.training import PretrainConfig, pretrain
    from cromss.training.config import resolve_pretrain_config

    run = out / name
    timing = run / "bench_seconds.json"
    if timing.is_file():
        return run, json.loads(timing.read_text())["seconds"]
    if run.exists():
        shutil.rmtree(run)
    data = read_yaml(ROOT / "configs" / "demo" / "pretrain-cromss-midf.yaml")
    apply_overrides(data, pretrain_overrides(s) + overrides + [f"name={name}", f"output_dir={out}",
                                                                f"data.root={root}", "seed=0"])
    cfg = resolve_pretrain_config(from_dict(PretrainConfig, data))
    started = time.perf_counter()
    pretrain(cfg)
    seconds = time.perf_counter() - started
    timing.write_text(json.dumps({"seconds": seconds}))
    return run, seconds


def predict(run: Path, root: Path, splits: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Softmax ``[C, H, W]`` per sample name and modality of the run on ``splits`` of ``root``."""
    import torch

    from cromss.audit.run import load_run, predict_probs
    from cromss.audit.samples import audit_data_config, iterate, open_splits

    net, cfg = load_run(run)
    data = audit_data_config(cfg.data, root)
    out: dict[str, dict[str, np.ndarray]] = {}
    for sample in iterate(open_splits(data, splits)):
        probs = predict_probs(net, {m: x[None] for m, x in sample.inputs.items()})
        out[sample.info.name] = {m: p[0].numpy() for m, p in probs.items()}
    del torch
    return out


def fold_dataset(root: Path, out: Path, held_out: set[str]) -> Path:
    """A copy of ``root``'s tables whose ``held_out`` locations are the 'test' split (never trained on);
    files are referenced by absolute path."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "dataset.yaml", out / "dataset.yaml")
    shutil.copytree(root / "stats", out / "stats", dirs_exist_ok=True)
    rows = samples_of(root)
    fields = list(rows[0])
    if "split" not in fields:
        fields.insert(1, "split")
    for row in rows:
        for key in fields:
            if key not in ("location", "time", "split") and row.get(key):
                row[key] = str((root / row[key]).resolve()) if not Path(row[key]).is_absolute() else row[key]
        # declared val rows of the source stay val; the held-out fold is 'test'
        row["split"] = "test" if row["location"] in held_out else ("val" if row.get("split") == "val" else "train")
    with (out / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


# ----------------------------------------------------------------------------- metrics
def exact_metrics(score: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    """ROC-AUC, AP, precision at the top k % (ties at the cut counted in proportion), exact."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    result: dict[str, Any] = {"auc": float(roc_auc_score(wrong, score)),
                              "ap": float(average_precision_score(wrong, score))}
    order = np.sort(score)[::-1]
    for k in TOP:
        count = max(1, int(round(k / 100 * score.size)))
        cut = order[count - 1]
        above = score > cut
        tied = score == cut
        hits = wrong[above].sum() + (count - above.sum()) * wrong[tied].mean()
        result[f"p@{k:g}%"] = float(hits / count)
    return result


def flag_metrics(flag: np.ndarray, wrong: np.ndarray) -> dict[str, Any]:
    tp = float((flag & wrong).sum())
    precision = tp / flag.sum() if flag.sum() else None
    recall = tp / wrong.sum() if wrong.sum() else None
    return {"flagged_fraction": float(flag.mean()), "precision": precision, "recall": recall}


class Pixels:
    """Labels and references of every sample of a generic dataset, flattened in samples.csv order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.rows = samples_of(root)
        self.names = [name_of(r) for r in self.rows]
        self.labels = {n: class_ids(root, r["label"]) for n, r in zip(self.names, self.rows)}
        self.reference = {n: class_ids(root, r["reference"]) for n, r in zip(self.names, self.rows)}
        self.keep = {n: (self.labels[n] != 255) & (self.reference[n] != 255) for n in self.names}
        self.wrong = np.concatenate([(self.labels[n] != self.reference[n])[self.keep[n]] for n in self.names])
        self.per_sample_wrong = {n: int(((self.labels[n] != self.reference[n]) & self.keep[n]).sum())
                                 for n in self.names}

    def flatten(self, maps: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([maps[n][self.keep[n]] for n in self.names])


def audit_scores(audit_dir: Path | dict[str, Path], pixels: Pixels, modalities: list[str]) -> dict[str, np.ndarray]:
    """Per-pixel scores read back from the audit's score maps (one folder, or a folder per sample name);
    combined scores recomputed from the bands."""
    import rasterio

    per: dict[str, dict[str, np.ndarray]] = {m: {} for m in modalities}
    for name in pixels.names:
        folder = audit_dir[name] if isinstance(audit_dir, dict) else audit_dir
        with rasterio.open(folder / "scores" / f"{name}.tif") as src:
            data = src.read()
        for i, m in enumerate(modalities):
            per[m][name] = data[1 + i]
    out = {m: pixels.flatten(per[m]) for m in modalities}
    if len(modalities) > 1:
        stack = np.stack([out[m] for m in modalities])
        out["mean"] = stack.mean(0)
        out["product"] = 1 - np.prod(1 - stack, axis=0)
        out["max"] = stack.max(0)
        out["min"] = stack.min(0)
    return out


def validation_mask(audit_dir: Path, pixels: Pixels) -> np.ndarray:
    """Per flattened pixel: whether its sample was in the audited run's validation split (ranking.csv)."""
    with (audit_dir / "ranking.csv").open(newline="") as handle:
        split = {name_of(r): r["split"] for r in csv.DictReader(handle)}
    return pixels.flatten({n: np.full(pixels.keep[n].shape, split[n] == "val") for n in pixels.names})


def folds_of(pixels: Pixels, k: int) -> list[set[str]]:
    """K folds of the locations (seeded): the same folds for every K-fold method."""
    locations = sorted({r["location"] for r in pixels.rows})
    order = np.random.default_rng(0).permutation(len(locations))
    return [set(locations[i] for i in order[j::k]) for j in range(k)]


def kfold_cromss(table: dict[str, Any], root: Path, work: Path, pixels: Pixels, s: dict[str, Any], log: Any,
                 tag: str) -> None:
    """The audit out of sample: CromSS-lateF trained on K-1 folds audits the held-out fold
    (`cromss audit RUN_k --data FOLD_k --splits test`; thresholds over that fold)."""
    from cromss.audit import AuditOptions, run_audit

    for kind in ("weight", "confidence"):
        dirs: dict[str, Path] = {}
        seconds = 0.0
        for k, held in enumerate(folds_of(pixels, s["folds"])):
            fold_root = fold_dataset(root, work / "folds" / f"fold{k}", held)
            run, train_s = pretrain_run(fold_root, work / "runs", f"CromSS-lateF-fold{k}", VARIANTS["CromSS-lateF"],
                                        s)
            audit_dir = work / "audits" / (f"CromSS-lateF-fold{k}" + ("" if kind == "weight" else f"-{kind}"))
            if not (audit_dir / "audit.json").is_file():
                run_audit(run, audit_dir, AuditOptions(data=str(fold_root), splits=["test"], score=kind,
                                                       progress=False, overwrite=True, panels=0))
            seconds += train_s + json.loads((audit_dir / "audit.json").read_text())["seconds"]["total"]
            for name in pixels.names:
                if (audit_dir / "scores" / f"{name}.tif").is_file():
                    dirs[name] = audit_dir
        scores = audit_scores(dirs, pixels, ["s1", "s2"])
        for key, score in scores.items():
            table[f"CromSS-lateF audit {key}, {s['folds']}-fold (out of sample{_score_tag(kind)})"] = \
                exact_metrics(score, pixels.wrong) | {"seconds": round(seconds, 1)}
        key = f"CromSS-lateF audit mean, {s['folds']}-fold (out of sample{_score_tag(kind)})"
        log(f"[{tag}] CromSS-lateF {s['folds']}-fold {kind}: mean {table[key]['auc']:.3f}")


def _score_tag(score: str) -> str:
    """Row label suffix of an audit ranked by ``--score`` (the default 1 - W_l has none)."""
    return "" if score == "weight" else f", score {score}"


def table_spearman(audit_dir: Path, pixels: Pixels) -> float:
    from scipy.stats import spearmanr

    with (audit_dir / "ranking.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [name_of(r) for r in rows]
    ranks = list(range(len(rows)))
    truth = [pixels.per_sample_wrong[n] for n in names]
    return float(-spearmanr(ranks, truth).statistic)  # rank 1 = most wrong: negate


# ----------------------------------------------------------------------------- one data set
def evaluate_dataset(tag: str, root: Path, work: Path, s: dict[str, Any], extra_scores: dict[str, np.ndarray]
                     | None = None, log=print, methods: tuple[str, ...] = METHODS) -> dict[str, Any]:
    from cromss.audit import AuditOptions, run_audit

    pixels = Pixels(root)
    wrong = pixels.wrong
    result: dict[str, Any] = {"data": str(root), "samples": len(pixels.names), "pixels": int(wrong.size),
                              "wrong": int(wrong.sum()), "wrong_fraction": float(wrong.mean()), "methods": {}}
    log(f"[{tag}] {len(pixels.names)} samples, {wrong.size} labelled pixels, {100 * wrong.mean():.1f} % wrong")
    table = result["methods"]
    runs = work / "runs"
    # --- CromSS audits
    for variant in ("CromSS-midF", "CromSS-lateF") if "cromss" in methods else ():
        run, train_s = pretrain_run(root, runs, variant, VARIANTS[variant], s)
        for thresholds, kind in (("dataset", "weight"), ("batch", "weight"), ("dataset", "ratio"),
                                 ("dataset", "confidence")):
            audit_dir = work / "audits" / (f"{variant}-{thresholds}" + ("" if kind == "weight" else f"-{kind}"))
            if not (audit_dir / "audit.json").is_file():
                run_audit(run, audit_dir, AuditOptions(data=str(root), thresholds=thresholds, score=kind,
                                                       progress=False, overwrite=True, panels=0))
            audit_s = json.loads((audit_dir / "audit.json").read_text())["seconds"]["total"]
            scores = audit_scores(audit_dir, pixels, ["s1", "s2"])
            held_out = validation_mask(audit_dir, pixels)
            for key, score in scores.items():
                entry = exact_metrics(score, wrong) | {"seconds": round(train_s + audit_s, 1)}
                if key == "mean":
                    entry["spearman_samples"] = table_spearman(audit_dir, pixels)
                    if kind == "weight":  # the audit's flags: 1 - W_l >= 0.5 whatever --score ranks by
                        entry |= flag_metrics(score >= 0.5, wrong)
                    # the run's own validation locations were never trained on: out of sample
                    entry["auc_validation_locations"] = exact_metrics(score[held_out], wrong[held_out])["auc"]
                table[f"{variant} audit {key} ({thresholds} thresholds{_score_tag(kind)})"] = entry
            aucs = {k: table[f"{variant} audit {k} ({thresholds} thresholds{_score_tag(kind)})"]["auc"] for k in scores}
            log(f"[{tag}] {variant} {thresholds} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in aucs.items()))
    # --- in-sample single-modal S2: self-confidence
    if "self" in methods:
        run, train_s = pretrain_run(root, runs, "single-S2", VARIANTS["single-S2"], s)
        started = time.perf_counter()
        probs = predict(run, root, ["train", "val"])
        p_label = {n: np.take_along_axis(probs[n]["s2"], np.where(pixels.labels[n] == 255, 0, pixels.labels[n])[None],
                                         0)[0] for n in pixels.names}
        table["self-confidence, single-S2 in-sample"] = exact_metrics(1 - pixels.flatten(p_label), wrong) | {
            "seconds": round(train_s + time.perf_counter() - started, 1)}
    if "cleanlab" in methods:
        kfold_cleanlab(table, root, work, pixels, s, log, tag)
    if "cromss-kfold" in methods:
        kfold_cromss(table, root, work, pixels, s, log, tag)
    for key, score in (extra_scores or {}).items():
        table[key] = exact_metrics(pixels.flatten({n: score[n] for n in pixels.names}), wrong)
    return result


def kfold_cleanlab(table: dict[str, Any], root: Path, work: Path, pixels: Pixels, s: dict[str, Any], log: Any,
                   tag: str) -> None:
    """cleanlab on out-of-sample probabilities of K single-modal S2 U-Nets (folds by location)."""
    import cleanlab.rank
    import cleanlab.segmentation.filter
    import cleanlab.segmentation.rank
    from scipy.stats import spearmanr

    wrong, runs = pixels.wrong, work / "runs"
    methods = table
    # --- K-fold out-of-sample single-modal S2 + cleanlab
    folds = folds_of(pixels, s["folds"])
    oos: dict[str, np.ndarray] = {}
    kfold_s = 0.0
    for k, held in enumerate(folds):
        fold_root = fold_dataset(root, work / "folds" / f"fold{k}", held)
        run, train_s = pretrain_run(fold_root, runs, f"single-S2-fold{k}", VARIANTS["single-S2"], s)
        started = time.perf_counter()
        for name, value in predict(run, fold_root, ["test"]).items():
            oos[name] = value["s2"]
        kfold_s += train_s + time.perf_counter() - started
    missing = [n for n in pixels.names if n not in oos]
    assert not missing, f"no out-of-sample prediction for {missing[:3]}"
    started = time.perf_counter()
    labels = np.stack([np.where(pixels.labels[n] == 255, 0, pixels.labels[n]) for n in pixels.names])
    pred = np.stack([oos[n] for n in pixels.names]).astype(np.float64)
    pred /= pred.sum(axis=1, keepdims=True)
    image_scores, pixel_scores = cleanlab.segmentation.rank.get_label_quality_scores(labels, pred, verbose=False)
    cleanlab_s = time.perf_counter() - started
    maps = {n: pixel_scores[i] for i, n in enumerate(pixels.names)}
    truth = [pixels.per_sample_wrong[n] for n in pixels.names]
    methods[f"cleanlab pixel scores, {s['folds']}-fold S2"] = exact_metrics(1 - pixels.flatten(maps), wrong) | {
        "seconds": round(kfold_s + cleanlab_s, 1),
        "spearman_samples": float(spearmanr(-image_scores, truth).statistic)}
    started = time.perf_counter()
    flat_labels = np.concatenate([labels[i][pixels.keep[n]] for i, n in enumerate(pixels.names)])
    flat_probs = np.concatenate([np.moveaxis(pred[i], 0, -1)[pixels.keep[n]] for i, n in enumerate(pixels.names)])
    margin = cleanlab.rank.get_label_quality_scores(flat_labels, flat_probs, method="normalized_margin")
    methods[f"cleanlab normalized margin, {s['folds']}-fold S2"] = exact_metrics(1 - margin, wrong) | {
        "seconds": round(kfold_s + time.perf_counter() - started, 1)}
    started = time.perf_counter()
    issues = cleanlab.segmentation.filter.find_label_issues(labels, pred, downsample=1, n_jobs=1, verbose=False)
    flags = pixels.flatten({n: issues[i] for i, n in enumerate(pixels.names)})
    methods[f"cleanlab find_label_issues, {s['folds']}-fold S2"] = exact_metrics(flags.astype(float), wrong) | \
        flag_metrics(flags, wrong) | {"seconds": round(kfold_s + time.perf_counter() - started, 1)}
    pixel_key = f"cleanlab pixel scores, {s['folds']}-fold S2"
    log(f"[{tag}] cleanlab {s['folds']}-fold: pixel AUC {methods[pixel_key]['auc']:.3f}")


# ----------------------------------------------------------------------------- downstream
def downstream(generic: Path, dw: Path, work: Path, s: dict[str, Any], log=print) -> dict[str, Any]:
    """CromSS-midF on --clean labels vs raw labels (40 % noise): frozen S2 transfer mIoU over seeds."""
    from cromss.audit import AuditOptions, run_audit
    from cromss.config import apply_overrides, from_dict, read_yaml
    from cromss.transfer import FinetuneConfig, finetune_once, mean_std

    runs = work / "runs"
    raw_run, raw_s = pretrain_run(generic, runs, "CromSS-midF", VARIANTS["CromSS-midF"], s)
    clean_root = work / "clean"
    if not (clean_root / "samples.csv").is_file():
        run_audit(raw_run, work / "audits" / "clean-audit", AuditOptions(
            data=str(generic), clean=str(clean_root), progress=False, overwrite=True, panels=0))
    summary = json.loads((work / "audits" / "clean-audit" / "audit.json").read_text())
    clean_run, clean_s = pretrain_run(clean_root, runs, "CromSS-midF-clean", VARIANTS["CromSS-midF"], s)
    out: dict[str, Any] = {"clean": summary.get("clean"), "flagged_fraction": summary.get("flagged_fraction"),
                           "flagged": summary.get("reference", {}).get("flagged"), "arms": {}}
    # noise of the cleaned labels against the truth
    clean_pixels = Pixels(clean_root)
    out["clean_label_noise"] = float(clean_pixels.wrong.mean())
    out["clean_labelled_pixels"] = int(clean_pixels.wrong.size)
    for arm, run in (("raw", raw_run), ("clean", clean_run)):
        values = []
        for seed in range(s["seeds"]):
            data = read_yaml(ROOT / "configs" / "demo" / "finetune-dw.yaml")
            apply_overrides(data, [f"epochs={s['finetune_epochs']}", "framework=deeplabv3plus", "encoder=resnet18",
                                   "lr_schedule=constant", "data.val_fraction=0.2", "lr=1.0e-3",
                                   "data.batch_size=4", f"data.crop_size={s['size']}",
                                   "trainer.enable_progress_bar=false", f"name=dw-s2-{arm}",
                                   f"output_dir={work / 'finetune'}", f"data.root={dw}"]
                            + (["trainer.limit_train_batches=1"] if s["steps"] else []))
            data.update(modality="s2", weights=str(run), weights_label=arm, frozen=True, seeds=[seed])
            cfg = from_dict(FinetuneConfig, data)
            metrics_file = cfg.run_dir(seed) / "metrics.json"
            if not metrics_file.is_file():
                finetune_once(cfg, seed, overwrite=True)
            values.append(json.loads(metrics_file.read_text())["miou"])
        mean, std = mean_std(values)
        out["arms"][arm] = {"miou": values, "mean": mean, "std": std}
        log(f"[downstream] {arm}: frozen mIoU {100 * mean:.2f} ± {100 * std:.2f}")
    out["pretrain_seconds"] = {"raw": raw_s, "clean": clean_s}
    return out


# ----------------------------------------------------------------------------- cost
def cost(work: Path, s: dict[str, Any], log=print) -> dict[str, Any]:
    """Seconds of `cromss audit` per 1,000 samples of 256 px (midF, ResNet-18 demo decoder and ResNet-50
    paper decoder), measured on a few samples with untrained weights and extrapolated linearly."""
    import torch
    import yaml
    from rasterio.transform import from_origin

    from cromss.audit import AuditOptions, run_audit
    from cromss.config import to_dict
    from cromss.models import ModelConfig, build_model
    from cromss.training import PretrainConfig

    root = work / "cost-data"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(s["cost_samples"]):
        transform = from_origin(500000 + 3000 * i, 4000000, 10, 10)
        for m, count in (("s1", 2), ("s2", 13)):
            data = rng.normal(0, 1, (count, 256, 256)).astype(np.float32)
            write_tif(root / m / f"t{i}.tif", data, transform, "EPSG:32632")
        write_tif(root / "label" / f"t{i}.tif", rng.integers(0, 9, (256, 256)).astype(np.uint8), transform,
                  "EPSG:32632")
        rows.append({"location": f"t{i}", "s1": f"s1/t{i}.tif", "s2": f"s2/t{i}.tif", "label": f"label/t{i}.tif"})
    (root / "dataset.yaml").write_text(yaml.safe_dump({"modalities": {"s2": S2_NAMES, "s1": ["VV", "VH"]},
                                                       "classes": [f"c{i}" for i in range(9)],
                                                       "samples": "samples.csv"}))
    with (root / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "stats").mkdir(exist_ok=True)
    for m, bands in (("s1", ["VV", "VH"]), ("s2", S2_NAMES)):
        (root / "stats" / f"{m}_stats.json").write_text(json.dumps({"bands": bands, "mean": [0.0] * len(bands),
                                                                     "std": [1.0] * len(bands)}))
    out = {"samples": s["cost_samples"], "threads": torch.get_num_threads(), "size": 256}
    for encoder, decoder in (("resnet18", [128, 64, 32, 16, 16]), ("resnet50", [256, 128, 64, 32, 16])):
        model = ModelConfig(encoder=encoder, fusion="mid", modalities=["s1", "s2"], num_classes=9,
                            decoder_channels=decoder)
        cfg = PretrainConfig(name=f"cost-{encoder}")
        cfg.model = model
        cfg.data.kind, cfg.data.root, cfg.data.batch_size = "generic", str(root), 4
        cfg.data.classes = [f"c{i}" for i in range(9)]
        run = work / "cost-runs" / encoder
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        net = build_model(model)
        config = to_dict(cfg)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                    "hyper_parameters": {"config": config}}, run / "checkpoints" / "last.ckpt")
        started = time.process_time()
        wall = time.perf_counter()
        summary = run_audit(run, work / "cost-audits" / encoder, AuditOptions(progress=False, overwrite=True,
                                                                             panels=0))
        cpu = time.process_time() - started
        wall = time.perf_counter() - wall
        out[encoder] = {"cpu_s_per_1000": round(1000 * cpu / summary["samples"], 1),
                        "wall_s_per_1000": round(1000 * wall / summary["samples"], 1),
                        "score_pass_s": summary["seconds"]["score"], "write_pass_s": summary["seconds"]["write"]}
        log(f"[cost] {encoder}: {out[encoder]}")
    return out


# ----------------------------------------------------------------------------- table
def markdown(results: dict[str, Any]) -> str:
    lines = []
    for tag, block in results["datasets"].items():
        lines += [f"### {tag}: {block['samples']} samples, {block['pixels']:,} labelled pixels, "
                  f"{100 * block['wrong_fraction']:.1f} % wrong", "",
                  "| method | ROC-AUC | AP | P@1 % | P@5 % | P@10 % | flagged (score ≥ 0.5): fraction / precision / recall "
                  "| Spearman (samples) | AUC on the run's validation locations | wall s |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for name, m in block["methods"].items():
            flagged = (f"{m['flagged_fraction']:.3f} / {m['precision']:.3f} / {m['recall']:.3f}"
                       if m.get("precision") is not None else "")
            spearman = f"{m['spearman_samples']:.3f}" if m.get("spearman_samples") is not None else ""
            lines.append(f"| {name} | {m['auc']:.3f} | {m['ap']:.3f} | {m['p@1%']:.3f} | {m['p@5%']:.3f} | "
                         f"{m['p@10%']:.3f} | {flagged} | {spearman} | "
                         f"{format(m['auc_validation_locations'], '.3f') if m.get('auc_validation_locations') else ''} | "
                         f"{m.get('seconds', '')} |")
        lines.append("")
    if "downstream" in results:
        d = results["downstream"]
        lines += ["### downstream: CromSS-midF pretrained on --clean vs raw labels (40 % noise), frozen S2", "",
                  "| pretraining labels | labelled pixels | label noise | frozen mIoU (%) |", "|---|---:|---:|---:|"]
        raw = results["datasets"].get("demo-40%", {})
        lines.append(f"| raw | {raw.get('pixels', 0):,} | {100 * raw.get('wrong_fraction', float('nan')):.1f} % | "
                     f"{100 * d['arms']['raw']['mean']:.2f} ± {100 * d['arms']['raw']['std']:.2f} |")
        lines.append(f"| --clean (flagged ignored) | {d['clean_labelled_pixels']:,} | "
                     f"{100 * d['clean_label_noise']:.1f} % | "
                     f"{100 * d['arms']['clean']['mean']:.2f} ± {100 * d['arms']['clean']['std']:.2f} |")
        lines.append("")
    if "cost" in results:
        c = results["cost"]
        lines += [f"### cost: `cromss audit` per 1,000 samples of 256 px ({c['threads']} thread(s), measured on "
                  f"{c['samples']} samples, extrapolated)", "", "| network | CPU s | wall s |", "|---|---:|---:|"]
        for encoder in ("resnet18", "resnet50"):
            lines.append(f"| CromSS-midF {encoder} | {c[encoder]['cpu_s_per_1000']} | {c[encoder]['wall_s_per_1000']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--toy", action="store_true", help="tiny sizes (seconds; the benchmark's test)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--locations", type=int, help="demo locations (x 4 seasons)")
    parser.add_argument("--folds", type=int, help="K of the K-fold cross-validation (default 5)")
    parser.add_argument("--parts", default="demo20,demo40,floods,downstream,cost")
    parser.add_argument("--methods", default=",".join(METHODS), help="of " + ",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    s = settings(args.toy, args.epochs, args.locations, args.folds)
    parts = args.parts.split(",")
    methods = tuple(args.methods.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results.setdefault("datasets", {})
    results["settings"] = s | {"threads": args.threads, "parts": parts}
    wall: dict[str, float] = results.setdefault("wall_s", {})

    def save() -> None:
        results_file.write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / "results.md").write_text(markdown(results))

    for rate, part in ((0.2, "demo20"), (0.4, "demo40")):
        if part in parts:
            started = time.perf_counter()
            generic, _ = demo_dataset(args.out / "data", s, rate)
            results["datasets"][f"demo-{round(100 * rate)}%"] = evaluate_dataset(
                f"demo-{round(100 * rate)}%", generic, args.out / part, s, methods=methods)
            wall[part] = round(time.perf_counter() - started, 1)
            save()
    if "floods" in parts:
        if not CHIP.with_name(CHIP.name + "_S2Hand.tif").is_file():
            print(f"skipping floods: {CHIP}_S2Hand.tif not found")
        else:
            started = time.perf_counter()
            root = args.out / "data" / "floods"
            if root.exists():
                shutil.rmtree(root)
            root, ndwi = floods_dataset(root, s["floods_tile"])
            results["datasets"]["sen1floods11"] = evaluate_dataset(
                "sen1floods11", root, args.out / "floods", s | {"epochs": s["floods_epochs"]},
                extra_scores={"NDWI-margin ceiling (-abs NDWI)": {n: -np.abs(v) for n, v in ndwi.items()}},
                methods=methods)
            wall["floods"] = round(time.perf_counter() - started, 1)
            save()
    if "downstream" in parts:
        started = time.perf_counter()
        generic, dw = demo_dataset(args.out / "data", s, 0.4)
        results["downstream"] = downstream(generic, dw, args.out / "demo40", s)
        wall["downstream"] = round(time.perf_counter() - started, 1)
        save()
    if "cost" in parts:
        started = time.perf_counter()
        results["cost"] = cost(args.out, s)
        wall["cost"] = round(time.perf_counter() - started, 1)
        save()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
