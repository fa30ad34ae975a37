"""``cromss audit RUN --out DIR``: score every labelled pixel of a dataset with a pretrained run.

Streaming passes over the data (constant memory, whatever the number of samples):

1. **score** — the run's final network predicts every sample whole (no crop, no augmentation, every
   timestamp); per modality the enhanced label confidence of eqs. (8)-(10) is counted into the first
   radix histogram of :class:`~cromss.audit.scoring.DatasetThresholds` and kept, with ``p_y`` and the
   consensus class, in a scratch file per sample (float32 confidences: about 14 bytes per pixel for two
   modalities, deleted as they are used);
2. **thresholds** — a second read of the scratch files gives the exact ``k_c``-th largest confidence of
   every class over the WHOLE dataset (``alpha = alpha0``: the end of the ramp);
3. **write** — every sample's ``W_l`` and scores become its score map, its row of the ranked table, the
   reference metrics and, with ``--clean``, its cleaned label.

The model runs once per sample; the other passes only read the scratch files. Everything is written into
a temporary sibling folder that replaces ``DIR`` only when the audit is complete: an interrupted audit
leaves no half output (and an earlier audit untouched).
"""

from __future__ import annotations

import copy
import heapq
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cromss.audit.scoring as scoring
from cromss.audit.cleaning import CleanWriter
from cromss.audit.maps import write_score_map
from cromss.audit.ranking import TABLE_FILE, SampleRow, ranked, ranking_agreement, write_table
from cromss.audit.reference import BinnedScores, flag_quality
from cromss.audit.samples import (
    AuditSample,
    SplitReader,
    audit_data_config,
    iterate,
    open_splits,
    stack_inputs,
)
from cromss.errors import ConfigError, DataError, OutputError
from cromss.outputs import atomic_write_text, prepare_output_dir
from cromss.schema import IGNORE_INDEX

SUMMARY_FILE = "audit.json"
MAPS_DIR = "scores"
PANELS_DIR = "panels"
THRESHOLDS: tuple[str, ...] = ("dataset", "batch")


@dataclass
class AuditOptions:
    """What ``cromss audit`` was asked to do (defaults: docs/audit.md)."""

    data: str | None = None  # --data: another dataset than the run's pretraining data
    thresholds: str = "dataset"  # per-class thresholds over the whole dataset, or per batch as in training
    combine: str = "mean"  # combined score across modalities (scoring.COMBINE)
    score: str = "weight"  # what a pixel's score is (scoring.SCORES); flags always come from 1 - W_l
    flag: float = 0.5  # a pixel is flagged when its combined score >= flag (i.e. W_l <= 1 - flag)
    batch_size: int | None = None  # default: the run's data.batch_size
    device: str = "cpu"
    panels: int = 8  # worst samples drawn as panels for the report
    splits: list[str] | None = None  # default: train, val (+ test where the data has one)
    maps: bool = True  # write the score GeoTIFFs
    progress: bool = True
    clean: str | None = None  # --clean OUT
    relabel: bool = False  # --relabel: flagged pixels -> consensus class instead of ignored
    overwrite: bool = False
    clean_mode: str | None = None  # API only: 'none' exports the raw labels in the cleaned format

    def validate(self) -> None:
        if self.thresholds not in THRESHOLDS:
            raise ConfigError(f"--thresholds {self.thresholds!r} is not one of {list(THRESHOLDS)}")
        if self.combine not in scoring.COMBINE:
            raise ConfigError(f"--combine {self.combine!r} is not one of {list(scoring.COMBINE)}")
        if self.score not in scoring.SCORES:
            raise ConfigError(f"--score {self.score!r} is not one of {list(scoring.SCORES)}")
        if self.score == "ratio" and self.thresholds != "dataset":
            raise ConfigError("--score ratio needs --thresholds dataset (the ratio to the class threshold is "
                              "continued above it, which per-batch W_l values no longer hold)")
        if not 0.0 < self.flag <= 1.0:
            raise ConfigError(f"--flag {self.flag} must be in (0, 1] (a score: 1 - W_l)")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be >= 1")
        if self.panels < 0:
            raise ConfigError(f"--panels {self.panels} must be >= 0")
        if self.relabel and self.clean is None:
            raise ConfigError("--relabel needs --clean OUT (it says how the cleaned labels are made)")


# ----------------------------------------------------------------------------- output folders
def _check_output(path: Path, what: str, flag: str, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputError(f"{what} {path} already exists: pass --overwrite to replace it, or choose another path")
    prepare_output_dir(path.parent, f"the folder of {flag}")


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


def _commit(partial: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``partial`` folder (the old one is removed only afterwards)."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the model
def load_run(run: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The final network of a pretraining run and its :class:`~cromss.training.PretrainConfig`."""
    from cromss.config import from_dict
    from cromss.training import PretrainConfig
    from cromss.weights import load_cromss_net

    net, config = load_cromss_net(Path(run))
    if "data" not in config or "method" not in config:
        raise DataError(f"{run}: not a cromss pretraining run folder (its config has no data/method section); "
                        "an audit needs the run's data and selection settings")
    cfg = from_dict(PretrainConfig, copy.deepcopy(config))
    return net.to(device).eval(), cfg


def predict_probs(net: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Softmax ``[B, C, H, W]`` per modality; inputs of any size (padded to a multiple of 32, cropped back)."""
    from cromss.models import ENCODER_DEPTH, pad_to_multiple

    height, width = next(iter(inputs.values())).shape[-2:]
    padded = {m: pad_to_multiple(x, 2 ** ENCODER_DEPTH)[0] for m, x in inputs.items()}
    with torch.inference_mode():
        logits = net(padded)
    return {m: logits[m][..., :height, :width].float().softmax(dim=1) for m in logits}


# ----------------------------------------------------------------------------- progress
class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False)
            self.bar.start()

    def task(self, name: str, total: int) -> Any:
        return self.bar.add_task(name, total=total) if self.bar else None

    def advance(self, task: Any, count: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(task, count)

    def finish(self, task: Any) -> None:
        if self.bar is not None:
            self.bar.update(task, completed=self.bar.tasks[task].total)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ----------------------------------------------------------------------------- the audit
def run_audit(run: str | Path, out: str | Path, options: AuditOptions | None = None) -> dict[str, Any]:
    """Audit the labels of the run's pretraining data (or ``options.data``); write ``out``; return the summary."""
    options = options or AuditOptions()
    options.validate()
    out = Path(out)
    clean = Path(options.clean) if options.clean is not None else None
    _check_output(out, "audit folder", "--out", options.overwrite)
    if clean is not None:
        if clean.resolve() == out.resolve() or out.resolve() in clean.resolve().parents \
                or clean.resolve() in out.resolve().parents:
            raise OutputError(f"--clean {clean} and --out {out} must be separate folders (neither inside the other)")
        _check_output(clean, "cleaned dataset", "--clean", options.overwrite)
    net, cfg = load_run(run, options.device)
    data_cfg = audit_data_config(cfg.data, options.data)
    readers = open_splits(data_cfg, options.splits)
    modalities = list(cfg.model.modalities or [])
    num_classes = int(cfg.model.num_classes)
    from cromss.data.resolution import class_table_of

    classes = class_table_of(cfg.data)
    if len(classes.names) != num_classes:
        raise DataError(f"{run}: the model has {num_classes} classes but its data lists {len(classes.names)}")
    started = time.perf_counter()
    work, clean_work = _partial(out), (_partial(clean) if clean is not None else None)
    try:
        summary = _audit(net, cfg, data_cfg, readers, modalities, classes, options, work, clean_work,
                         final_out=out, final_clean=clean, run=Path(run))
        summary["seconds"]["total"] = round(time.perf_counter() - started, 2)
        atomic_write_text(work / SUMMARY_FILE, json.dumps(summary, indent=2, default=str) + "\n", what="summary")
        if clean_work is not None:
            _commit(clean_work, clean)
        _commit(work, out)
    finally:
        for folder in (work, clean_work):
            if folder is not None and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    return summary


def _image_source(reader: SplitReader) -> tuple[bool, dict[str, Path], dict[str, dict[str, Any]], dict]:
    """Whether a cleaned dataset can reference the images (generic GeoTIFFs), their statistics files,
    nodata rules and declared band lists."""
    from cromss.data.generic import GenericDataset

    dataset = reader.dataset
    if not isinstance(dataset, GenericDataset):
        return False, {}, {}, {}
    description = dataset.description
    stats, nodata, bands = {}, {}, {}
    for modality in dataset.modalities:
        explicit = (dataset.cfg.stats or {}).get(modality)
        path = explicit if explicit is not None else description.stats_path(modality)
        if path is not None:
            stats[modality] = Path(path)
        rule = description.nodata_rule(modality)
        nodata[modality] = {"value": rule.value, "rule": rule.rule}
        bands[modality] = description.bands(modality)
    return True, stats, nodata, bands


def _audit(net: Any, cfg: Any, data_cfg: Any, readers: list[SplitReader], modalities: list[str], classes: Any,
           options: AuditOptions, work: Path, clean_work: Path | None, final_out: Path, final_clean: Path | None,
           run: Path) -> dict[str, Any]:
    from cromss.selection import cross_modal_enhance, label_confidence, label_weights

    num_classes = len(classes.names)
    alpha = float(cfg.method.alpha0)
    enhance = bool(cfg.method.enhance) and len(modalities) > 1
    batch_size = options.batch_size or int(cfg.data.batch_size)
    cache = work / ".cache"  # scratch: float32 confidences per modality, p_y, consensus, labels
    cache.mkdir(parents=True)
    selectors = {m: scoring.DatasetThresholds(num_classes, alpha, IGNORE_INDEX) for m in modalities}
    writer = None
    if clean_work is not None:
        referenced, stats, nodata, declared = _image_source(readers[0])
        bands = declared if referenced else {m: tuple(readers[0].dataset.bands_of(m)) if not readers[0].stream
                                             else tuple(readers[0].dataset.view.bands_of(m)) for m in modalities}
        mode = options.clean_mode or ("relabel" if options.relabel else "ignore")
        writer = CleanWriter(clean_work, mode, list(classes.names), list(classes.colors), bands, referenced,
                             stats, nodata, source=str(data_cfg.root))
        writer.name = final_clean.name if final_clean is not None else clean_work.name
    infos: list[Any] = []
    images_of: dict[int, dict[str, str]] = {}
    has_reference = False
    progress = _Progress(options.progress)
    seconds: dict[str, float] = {}
    try:
        # ------------------------------------------------------------------ pass 1: score
        started = time.perf_counter()
        task = progress.task("audit: scoring", sum(len(r) for r in readers))
        buffer: list[AuditSample] = []

        def flush() -> None:
            nonlocal has_reference
            if not buffer:
                return
            inputs = {m: x.to(next(net.parameters()).device) for m, x in stack_inputs(buffer).items()}
            probs = {m: p.cpu() for m, p in predict_probs(net, inputs).items()}
            labels = torch.stack([s.label for s in buffer])
            conf = [label_confidence(probs[m], labels, IGNORE_INDEX) for m in modalities]
            conf = cross_modal_enhance(conf) if enhance else conf
            if options.thresholds == "batch":
                values = [label_weights(c, labels, alpha, num_classes, IGNORE_INDEX) for c in conf]
            else:
                values = conf
            stacked = torch.stack([v.float() for v in values])  # [M, B, H, W]
            raw = torch.stack([c.float() for c in conf]) if options.thresholds == "batch" else None
            if options.thresholds == "dataset":
                for index, m in enumerate(modalities):
                    selectors[m].add_coarse(stacked[index], labels)
            p_label = scoring.quantize(scoring.label_probability(probs, labels, IGNORE_INDEX))
            consensus = scoring.consensus_class(probs)
            for b, sample in enumerate(buffer):
                arrays = {"conf": stacked[:, b].numpy().astype(np.float32),
                          "p_label": p_label[b].numpy().astype(np.uint16),
                          "consensus": consensus[b].numpy().astype(np.int16),
                          "label": sample.label.numpy().astype(np.int16)}
                if raw is not None:  # per-batch W_l in "conf": keep the confidences for --score confidence
                    arrays["raw"] = raw[:, b].numpy().astype(np.float32)
                if sample.reference is not None:
                    arrays["reference"] = sample.reference.numpy().astype(np.int16)
                    has_reference = True
                np.savez(cache / f"{sample.info.index}.npz", **arrays)
                if writer is not None:
                    images_of[sample.info.index] = writer.write_images(sample)
                infos.append(sample.info)
            progress.advance(task, len(buffer))
            buffer.clear()

        for sample in iterate(readers):
            if buffer and (len(buffer) >= batch_size or sample.label.shape != buffer[0].label.shape):
                flush()
            buffer.append(sample)
        flush()
        progress.finish(task)
        if not infos:
            raise DataError(f"{data_cfg.root}: no samples to audit")
        seconds["score"] = round(time.perf_counter() - started, 2)

        # ------------------------------------------------------------------ pass 2: write
        started = time.perf_counter()
        thresholds = None
        if options.thresholds == "dataset":
            # the second radix pass over the scratch files: the exact k_c-th largest confidence per class
            for m in modalities:
                selectors[m].end_coarse()
            task = progress.task("audit: thresholds", len(infos))
            for info in infos:
                arrays = np.load(cache / f"{info.index}.npz")
                label = torch.from_numpy(arrays["label"].astype(np.int64))
                for i, m in enumerate(modalities):
                    selectors[m].add_fine(torch.from_numpy(arrays["conf"][i]), label)
                progress.advance(task)
            thresholds = {m: selectors[m].thresholds for m in modalities}
        combined_names = [f"combined_{how}" for how in scoring.COMBINE]
        # every score kind's combined mean is measured too, so the summary says which ranks best here
        score_kinds = [k for k in scoring.SCORES if k != "ratio" or thresholds is not None]
        metric_names = [*modalities, *combined_names, "self_confidence", *[f"{k}_mean" for k in score_kinds]]
        binned = BinnedScores(metric_names, num_classes) if has_reference else None
        rows: list[SampleRow] = []
        worst: list[tuple[tuple[float, float, int], int]] = []  # max-heap of the panels' samples
        totals = {"labelled": 0, "flagged": 0, "estimated_wrong": 0.0, "expected_wrong": 0.0, "reference_pixels": 0,
                  "wrong": 0, "flagged_wrong": 0}
        task = progress.task("audit: writing", len(infos))
        for info in infos:
            arrays = np.load(cache / f"{info.index}.npz")
            label = torch.from_numpy(arrays["label"].astype(np.int64))
            conf = torch.from_numpy(arrays["conf"])
            labelled = label != IGNORE_INDEX
            if thresholds is not None:
                weights = torch.stack([scoring.weights_from_thresholds(conf[i], label, thresholds[m], IGNORE_INDEX)
                                       for i, m in enumerate(modalities)])
            else:
                weights = conf  # per-batch W_l, computed in pass 1
            raw = torch.from_numpy(arrays["raw"]) if "raw" in arrays.files else conf
            kinds = {"weight": torch.where(labelled, 1.0 - weights, torch.zeros_like(weights))}
            kinds["confidence"] = torch.stack([scoring.pixel_scores(raw[i], label, torch.zeros(num_classes),
                                                                    IGNORE_INDEX, "confidence")
                                               for i in range(len(modalities))])
            if thresholds is not None:
                kinds["ratio"] = torch.stack([scoring.pixel_scores(conf[i], label, thresholds[m], IGNORE_INDEX,
                                                                   "ratio") for i, m in enumerate(modalities)])
            scores = kinds[options.score]
            combos = {f"combined_{how}": scoring.combine_scores(scores, how) for how in scoring.COMBINE}
            combined = combos[f"combined_{options.combine}"]
            p_label = torch.from_numpy(arrays["p_label"].astype(np.float32)) / scoring.LEVELS
            # flags come from the method's own trust whatever --score ranks by: --clean is the same
            flag_score = scoring.combine_scores(kinds["weight"], options.combine)
            flagged = labelled & (flag_score >= options.flag - 1e-7)
            count = int(labelled.sum())
            row = SampleRow(
                info.index, info.location, info.time, info.split, count, int(flagged.sum()),
                float(combined[labelled].sum()), float((1.0 - p_label)[labelled].sum()),
                float(combined[labelled].mean()) if count else 0.0,
                {m: float(scores[i][labelled].mean()) if count else 0.0 for i, m in enumerate(modalities)},
            )
            if options.maps:
                relative = f"{MAPS_DIR}/{info.name}.tif"
                write_score_map(work / relative, combined.numpy(), {m: scores[i].numpy() for i, m in
                                                                    enumerate(modalities)},
                                labelled.numpy(), info.transform, info.crs, options.combine, options.score)
                row.score_map = relative
            if "reference" in arrays.files:
                reference = torch.from_numpy(arrays["reference"].astype(np.int64))
                known = labelled & (reference != IGNORE_INDEX)
                wrong = known & (reference != label)
                row.reference_wrong_pixels = int(wrong.sum())
                row.flagged_wrong_pixels = int((wrong & flagged).sum())
                totals["reference_pixels"] += int(known.sum())
                totals["wrong"] += row.reference_wrong_pixels
                totals["flagged_wrong"] += row.flagged_wrong_pixels
                if binned is not None:
                    named = {m: scores[i] for i, m in enumerate(modalities)} | combos
                    named["self_confidence"] = 1.0 - p_label
                    for kind, values in kinds.items():
                        named[f"{kind}_mean"] = values.mean(dim=0)
                    binned.add(named, label, wrong, known)
            totals["labelled"] += count
            totals["flagged"] += row.flagged_pixels
            totals["estimated_wrong"] += row.estimated_wrong_pixels
            totals["expected_wrong"] += row.expected_wrong_pixels
            if writer is not None:
                writer.add(info, images_of[info.index], arrays["label"].astype(np.int64), flagged.numpy(),
                           arrays["consensus"].astype(np.int64),
                           arrays["reference"].astype(np.int64) if "reference" in arrays.files else None)
            rows.append(row)
            key = row.sort_key()
            if options.panels:
                # keep the `panels` best-ranked rows: a heap of negated keys pops the worst-ranked
                entry = (tuple(-v for v in key), info.index)
                if len(worst) < options.panels:
                    heapq.heappush(worst, entry)
                else:
                    heapq.heappushpop(worst, entry)
            (cache / f"{info.index}.npz").unlink()
            progress.advance(task)
        progress.finish(task)
        shutil.rmtree(cache, ignore_errors=True)
        write_table(work / TABLE_FILE, rows, modalities, has_reference)
        seconds["write"] = round(time.perf_counter() - started, 2)
    finally:
        progress.stop()

    # ---------------------------------------------------------------------- panels and summary
    order = ranked(rows)
    rank_of = {row.position: rank for rank, row in enumerate(order, start=1)}
    panel_files = []
    if options.panels and worst:
        from cromss.audit.panels import draw_panels

        chosen = sorted((index for _, index in worst), key=lambda i: rank_of[i])
        panel_files = draw_panels(work / PANELS_DIR, readers, [infos[i] for i in chosen],
                                  [rank_of[i] for i in chosen], work, classes, cfg, modalities)
    summary: dict[str, Any] = {
        "format": "cromss-audit", "version": 1, "run": str(run.resolve()), "out": str(final_out.resolve()),
        "data": {"root": str(data_cfg.root), "kind": data_cfg.kind, "format": data_cfg.format,
                 "splits": [r.split for r in readers]},
        "modalities": modalities, "classes": list(classes.names), "class_colors": list(classes.colors),
        "samples": len(rows), "labelled_pixels": totals["labelled"],
        "settings": {"alpha": alpha, "gamma": 1.0, "enhance": enhance, "thresholds": options.thresholds,
                     "score": options.score, "combine": options.combine, "flag": options.flag, "batch_size": batch_size,
                     "selection_in_training": bool(cfg.method.selection)},
        "flagged_pixels": totals["flagged"],
        "flagged_fraction": totals["flagged"] / totals["labelled"] if totals["labelled"] else None,
        "estimated_wrong_pixels": round(totals["estimated_wrong"], 1),
        "estimated_wrong_fraction": totals["estimated_wrong"] / totals["labelled"] if totals["labelled"] else None,
        "expected_wrong_pixels": round(totals["expected_wrong"], 1),
        "files": {"table": TABLE_FILE, "score_maps": MAPS_DIR if options.maps else None,
                  "panels": [str(p.relative_to(work)) for p in panel_files]},
        "georeferenced_maps": sum(1 for i in infos if i.transform is not None or i.crs is not None),
        "seconds": seconds,
        "seconds_per_sample": round(seconds["score"] / max(len(rows), 1), 4),
        "worst": [asdict(r) | {"rank": rank_of[r.position]} for r in order[:20]],
    }
    if thresholds is not None:
        summary["class_thresholds"] = {
            m: {classes.names[c]: (float(t) if int(n) > 0 else None)
                for c, (t, n) in enumerate(zip(thresholds[m].tolist(), selectors[m].counts.tolist()))}
            for m in modalities}
    if has_reference:
        summary["reference"] = {
            "pixels": totals["reference_pixels"], "wrong": totals["wrong"],
            "wrong_fraction": totals["wrong"] / totals["reference_pixels"] if totals["reference_pixels"] else None,
            "scores": binned.metrics(classes.names) if binned is not None else {},
            "flagged": flag_quality(totals["flagged"], totals["flagged_wrong"], totals["wrong"]),
            "estimated_over_true_wrong": (totals["estimated_wrong"] / totals["wrong"]) if totals["wrong"] else None,
            "expected_over_true_wrong": (totals["expected_wrong"] / totals["wrong"]) if totals["wrong"] else None,
            "ranking": ranking_agreement(rows),
        }
    if writer is not None:
        summary["clean"] = writer.finish() | {"root": str(final_clean.resolve()) if final_clean else None}
    return summary
