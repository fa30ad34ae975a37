"""Controlled-noise studies (paper Sec. IV-C, Tables V and VI, and a noise-rate sweep).

An experiment config (``configs/experiments/*.yaml``, :class:`ExperimentConfig`) names a base
pretraining config and a base fine-tuning config plus dotted overrides (the sizes), the noise rates
and the pretraining variants. :func:`run_experiment` then runs every *cell* that is not finished yet:

* a **data** cell per noise rate: the demo scenes of :mod:`cromss.data.demo` written with that noise
  rate. Truth, images and the downstream set are the SAME for every rate (per-location seeds), so
  only the label noise changes between rates;
* a **pretrain** cell per (noise rate, variant): :func:`cromss.training.pretrain`, followed by the
  noise-detection measurement (ROC-AUC and average precision of ``1 - W_l`` for flagging the truly
  mislabelled pixels, :func:`measure_noise_detection`);
* a **fine-tune** cell per (encoder, input modality, frozen/fine-tuned, seed):
  :func:`cromss.transfer.finetune_once` on the downstream split with true labels.

Cell folders under ``<output_dir>``::

    data/dw/                                    downstream tiles (true labels), shared by all rates
    data/noise40/nol/, data/noise40/info.json   pretraining set with 40 % label noise
    pretrain/noise40/<variant>/                 pretrain run folder (+ noise_detection.json, cell.json)
    finetune/dw-<s1|s2>/<label>/<frozen|finetuned>/seed<k>/   fine-tune run (metrics.json, cell.json)
    <name>.md, <name>.csv, <name>.json          the study's table

A cell is finished when its result file (``info.json``, ``noise_detection.json``, ``metrics.json``)
and ``cell.json`` (the config it was made with) exist; finished cells are skipped, so an interrupted
study resumes where it stopped (an interrupted pretraining continues from its ``last.ckpt``). A
finished cell whose recorded config differs from the one asked for raises ConfigError instead of
being reused silently. Cells are claimed with a lock file, so several ``cromss experiment`` processes
may share one ``output_dir`` (the studies share cells: CromSS-midF at 40 % noise is a row of all three).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cromss.config import apply_overrides, from_dict, load_config, read_yaml, to_dict
from cromss.errors import ConfigError, DataError
from cromss.locks import FolderLock, LockHeld
from cromss.textfiles import read_json

MODES: tuple[str, ...] = ("frozen", "finetuned")
LAYOUTS: tuple[str, ...] = ("ablation", "smoothing", "noise_sweep")
CELL_FILE = "cell.json"
NOISE_FILE = "noise_detection.json"
#: Seconds between checks while another process holds a cell's lock.
LOCK_POLL_S = 2.0


# ----------------------------------------------------------------------------- configuration
@dataclass
class DemoDataSpec:
    """YAML section ``data:`` — size of the controlled-noise demo data (see :mod:`cromss.data.demo`).

    ``locations`` pretraining locations (4 seasons each) of ``size`` px; ``dw_train``/``dw_test``
    downstream tiles of ``dw_size`` px (None = ``size``); ``seed`` fixes scenes, images and noise.
    """

    locations: int = 32
    size: int = 64
    dw_train: int = 24
    dw_test: int = 16
    dw_size: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.locations < 2:
            raise ConfigError(f"config key 'data.locations': {self.locations} must be >= 2")
        if self.size < 32:
            raise ConfigError(f"config key 'data.size': {self.size} must be >= 32 px (the U-Net downsamples 32x)")
        if self.dw_train < 2 or self.dw_test < 1:
            raise ConfigError(
                f"config keys 'data.dw_train'/'data.dw_test': {self.dw_train}/{self.dw_test} must be >= 2 / >= 1"
            )
        if self.dw_size is not None and self.dw_size < 32:
            raise ConfigError(f"config key 'data.dw_size': {self.dw_size} must be >= 32 or null")


@dataclass
class PretrainSpec:
    """YAML section ``pretrain:`` — base pretraining config and overrides shared by every variant."""

    base: str = "configs/demo/pretrain-cromss-midf.yaml"
    overrides: list[str] = field(default_factory=list)


@dataclass
class FinetuneSpec:
    """YAML section ``finetune:`` — base fine-tuning config, overrides, seeds and modes."""

    base: str = "configs/demo/finetune-dw.yaml"
    overrides: list[str] = field(default_factory=list)
    #: a count n (seeds 0..n-1) or an explicit list
    seeds: int | list[int] = 3
    modes: list[str] = field(default_factory=lambda: list(MODES))
    #: add randomly initialised encoders as a baseline row per input modality
    random: bool = True

    def validate(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ConfigError(f"config key 'finetune.modes': {self.modes} must be a non-empty subset of {list(MODES)}")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ConfigError(f"config key 'finetune.seeds': {self.seeds} must be >= 1")
        if isinstance(self.seeds, list) and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"config key 'finetune.seeds': {self.seeds} must list distinct seeds")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass
class VariantSpec:
    """One pretraining variant (a row of Table V/VI): a name, overrides of the pretrain config and
    the input modalities whose encoders are transferred (``transfer``; default: the model's)."""

    name: str
    overrides: list[str] = field(default_factory=list)
    transfer: list[str] | None = None

    def validate(self) -> None:
        if not self.name or any(ch in self.name for ch in "/\\ ") or self.name == "random":
            raise ConfigError(
                f"config key 'variants[].name': {self.name!r} must be a folder name without '/', spaces, "
                "and not 'random' (reserved for the random-init baseline)"
            )
        if self.transfer is not None and (not self.transfer or not all(isinstance(m, str) and m for m in self.transfer)):
            raise ConfigError(f"config key 'variants[{self.name}].transfer': {self.transfer} must list modality names")


@dataclass
class ExperimentConfig:
    """Top-level config of ``cromss experiment``: one study (one table).

    ``layout`` picks the table: 'ablation' (Table V: OA/AA/mIoU frozen and fine-tuned per input
    modality and variant, plus the noise-flagging AUC/AP), 'smoothing' (Table VI: mIoU per (mu, beta))
    or 'noise_sweep' (one block per noise rate). ``output_dir`` is the cell store; studies with the same
    ``output_dir`` reuse each other's finished cells. ``threads``: torch CPU threads (None = torch's
    default). ``measure_noise``: compute ``noise_detection.json`` for every pretrain cell.
    ``keep_finetune_checkpoints``: keep best/last.ckpt of the fine-tune cells (off: ~60 MB each).
    """

    name: str = "ablation"
    layout: Literal["ablation", "smoothing", "noise_sweep"] = "ablation"
    output_dir: str = "runs/experiments/demo"
    seed: int = 0
    noise_rates: list[float] = field(default_factory=lambda: [0.4])
    data: DemoDataSpec = field(default_factory=DemoDataSpec)
    pretrain: PretrainSpec = field(default_factory=PretrainSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    variants: list[VariantSpec] = field(default_factory=list)
    measure_noise: bool = True
    #: keep the fine-tune checkpoints (best/last.ckpt) after metrics.json is written (the pretrain runs
    #: keep theirs: the encoders are transferred from them)
    keep_finetune_checkpoints: bool = False
    threads: int | None = None
    #: the user's own data instead of the generated demo data (both generic datasets, data.kind generic):
    #: ``pretrain_root`` — its ``label`` is the noisy label pretrained on, its ``reference`` (optional) the
    #: better label the noise-flagging AUC is measured against; ``finetune_root`` — its ``label`` is the
    #: downstream truth. Noise is then the data's own (``noise_rates`` and ``data`` are not used).
    pretrain_root: str | None = None
    finetune_root: str | None = None

    @property
    def own_data(self) -> bool:
        """True when the study runs on the user's generic datasets (``pretrain_root``/``finetune_root``)."""
        return self.pretrain_root is not None

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"config key 'name': {self.name!r} must be a plain file name")
        if (self.pretrain_root is None) != (self.finetune_root is None):
            raise ConfigError("config keys 'pretrain_root' and 'finetune_root': give both (own data) or neither")
        rates = [] if self.own_data else self.noise_rates  # own data: its own noise, nothing injected
        if not self.own_data and not self.noise_rates:
            raise ConfigError("config key 'noise_rates': give at least one noise rate, e.g. [0.4]")
        for rate in rates:
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"config key 'noise_rates': {rate} must be in [0, 1)")
        if len({noise_tag(r) for r in rates}) != len(rates):
            raise ConfigError(f"config key 'noise_rates': {self.noise_rates} repeats a rate (to the percent)")
        if not self.variants:
            raise ConfigError("config key 'variants': give at least one pretraining variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ConfigError(f"config key 'variants': names must be distinct, got {names}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"config key 'threads': {self.threads} must be >= 1 or null")


def load_experiment_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read an experiment YAML with dotted overrides (strict keys)."""
    return load_config(ExperimentConfig, path, overrides)


#: The pseudo noise rate of a study on the user's own data (its labels' own noise; folder tag 'own').
OWN_NOISE: float = -1.0


def study_rates(exp: ExperimentConfig) -> list[float]:
    """The noise rates of the study's cells: ``noise_rates``, or ``[OWN_NOISE]`` on the user's own data."""
    return [OWN_NOISE] if exp.own_data else list(exp.noise_rates)


def noise_tag(rate: float) -> str:
    """Folder tag of a noise rate: 0.4 -> 'noise40'; 'own' for the user's own data (:data:`OWN_NOISE`)."""
    return "own" if rate == OWN_NOISE else f"noise{round(100 * rate):02d}"


# ----------------------------------------------------------------------------- cells
def record_differences(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two cell records differ. A key missing on one side counts as equal when the
    other side holds None there: a setting added to a config class later, at its (no-op) default."""
    if isinstance(saved, dict) and isinstance(wanted, dict):
        keys = list(dict.fromkeys([*saved, *wanted]))
        out: list[str] = []
        for key in keys:
            if key not in saved and wanted[key] is None or key not in wanted and saved[key] is None:
                continue
            out += record_differences(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    return [] if saved == wanted else [prefix.rstrip(".")]


def _same_record(path: Path, record: dict[str, Any]) -> bool:
    """Whether the finished cell's ``cell.json`` holds ``record`` (raises if it holds another one)."""
    if not path.is_file():
        return False
    changed = record_differences(read_json(path, "experiment cell record"), json.loads(json.dumps(record)))
    if changed:
        raise ConfigError(
            f"cell {path.parent} was made with another config (differs in {changed[:5]}); use another "
            "output_dir, or delete that folder to recompute it"
        )
    return True


def run_cell(cell_dir: Path, done_file: Path, record: dict[str, Any], work: Callable[[], None],
             log: Callable[[str], None] = print, wait: bool = True) -> str:
    """Run ``work`` for one cell unless finished; returns 'skipped', 'ran' or (``wait=False``) 'locked'.

    The cell is finished when ``done_file`` and ``cell_dir/cell.json`` (== ``record``) exist. A lock file
    ``<cell_dir>.lock`` (:class:`cromss.locks.FolderLock`: pid and host) keeps two processes from running
    the same cell; a lock of a dead process on this host is taken over. A cell locked by a live process is waited for, or with ``wait=False``
    reported as 'locked' at once (the caller comes back to it later).
    """
    record_path = cell_dir / CELL_FILE
    lock = FolderLock(cell_dir.parent / f"{cell_dir.name}.lock", cell_dir, "cell")
    while True:
        if done_file.is_file() and _same_record(record_path, record):
            return "skipped"
        try:
            lock.acquire()
        except LockHeld as held:
            if not wait:
                return "locked"
            log(f"waiting for {cell_dir} (locked by pid {held.holder.pid} on {held.holder.host})")
            time.sleep(LOCK_POLL_S)
            continue
        try:
            if done_file.is_file() and _same_record(record_path, record):
                return "skipped"
            record_path.unlink(missing_ok=True)
            work()
            if not done_file.is_file():
                raise DataError(f"cell {cell_dir} finished without writing {done_file.name}")
            cell_dir.mkdir(parents=True, exist_ok=True)
            record_path.write_text(json.dumps(record, indent=2) + "\n")
            return "ran"
        finally:
            lock.release()


# ----------------------------------------------------------------------------- data
def write_controlled_data(root: Path, spec: DemoDataSpec, noise_rate: float) -> Path:
    """Write the demo pretraining set with ``noise_rate`` to ``root/<noise tag>/`` (and ``root/dw``).

    Built from the public pieces of :mod:`cromss.data.demo` with one random stream per location and
    purpose (scene, images, noise), so truth and images are identical for every noise rate and only the
    noisy labels change (``make_demo`` draws everything from one stream, so its scenes change with the
    rate). Returns the folder holding ``nol/``.
    """
    import numpy as np

    from cromss import schema
    from cromss.data import demo

    out = root / noise_tag(noise_rate)
    id_rng = np.random.default_rng([spec.seed, 0])
    ids = np.sort(id_rng.choice(np.arange(0, 251079), size=spec.locations, replace=False))
    locations = []
    for index, sample in enumerate(ids):
        scene = np.random.default_rng([spec.seed, 1, index])
        truth = demo.seasonal_truth(scene, demo.class_map(scene, spec.size))
        images = np.random.default_rng([spec.seed, 2, index])
        s1 = np.stack([demo.render_s1(images, truth[t], t) for t in range(schema.NUM_SEASONS)])
        s2 = np.stack([demo.render_s2(images, truth[t], t) for t in range(schema.NUM_SEASONS)])
        noisy = demo.noisy_labels(np.random.default_rng([spec.seed, 3, index]), truth, noise_rate)
        locations.append(demo.Location(f"{int(sample):07d}", truth, noisy, s1, s2))
    nol = out / "nol"
    if nol.exists():
        shutil.rmtree(nol)
    demo.write_nol(locations, nol, ("lmdb",), np.random.default_rng([spec.seed, 4]))
    dw = root / "dw"
    if not (dw / "done").is_file():
        if dw.exists():
            shutil.rmtree(dw)
        demo.write_dw_tiles(np.random.default_rng([spec.seed, 5]), dw, {"train": spec.dw_train, "test": spec.dw_test},
                            spec.dw_size or spec.size, 300000)
        (dw / "done").write_text("complete\n")
    truth = np.stack([loc.truth for loc in locations])
    noisy = np.stack([loc.noisy for loc in locations])
    info = {
        "generator": "cromss.experiments.write_controlled_data", "noise_rate_target": noise_rate,
        "noise_rate_measured": float((truth != noisy).mean()), "locations": spec.locations, "size": spec.size,
        "seed": spec.seed, "dw_train": spec.dw_train, "dw_test": spec.dw_test, "dw_size": spec.dw_size or spec.size,
    }
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


# ----------------------------------------------------------------------------- configs of the cells
def pretrain_config(exp: ExperimentConfig, variant: VariantSpec, noise_rate: float) -> Any:
    """The PretrainConfig of one (variant, noise rate) cell: base + study overrides + variant overrides."""
    from cromss.training import PretrainConfig

    root = Path(exp.output_dir)
    data = read_yaml(exp.pretrain.base)
    apply_overrides(data, list(exp.pretrain.overrides) + list(variant.overrides))
    apply_overrides(data, [
        f"name={variant.name}", f"seed={exp.seed}", f"output_dir={root / 'pretrain' / noise_tag(noise_rate)}",
    ])
    if exp.own_data:
        apply_overrides(data, ["data.kind=generic", f"data.root={exp.pretrain_root}", "data.format=auto"])
        from cromss.training.config import resolve_pretrain_config

        # modalities, bands and classes of the user's dataset (read from its dataset.yaml)
        return resolve_pretrain_config(from_dict(PretrainConfig, data))
    apply_overrides(data, [f"data.root={root / 'data' / noise_tag(noise_rate)}", "data.format=lmdb"])
    return from_dict(PretrainConfig, data)


def transfer_modalities(exp: ExperimentConfig, variant: VariantSpec, noise_rate: float) -> list[str]:
    """Input modalities whose encoders a variant transfers (its ``transfer`` or all its modalities)."""
    if variant.transfer is not None:
        return list(variant.transfer)
    return list(pretrain_config(exp, variant, noise_rate).model.modalities)


def encoder_label(variant: str, noise_rate: float | None) -> str:
    """Folder label of a transferred encoder: 'random' or '<noise tag>-<variant>'."""
    return "random" if noise_rate is None else f"{noise_tag(noise_rate)}-{variant}"


def finetune_config(exp: ExperimentConfig, modality: str, weights: str, label: str, mode: str) -> Any:
    """The FinetuneConfig of one fine-tune group (seeds are run one by one)."""
    from cromss.transfer import FinetuneConfig

    root = Path(exp.output_dir)
    data = read_yaml(exp.finetune.base)
    apply_overrides(data, list(exp.finetune.overrides))
    if exp.own_data:
        apply_overrides(data, [f"name=own-{modality}", f"output_dir={root / 'finetune'}", "data.kind=generic",
                               f"data.root={exp.finetune_root}"])
    else:
        apply_overrides(data, [f"name=dw-{modality}", f"output_dir={root / 'finetune'}",
                               f"data.root={root / 'data' / 'dw'}"])
    data.update(modality=modality, weights=weights, weights_label=label, frozen=(mode == "frozen"),
                seeds=exp.finetune.seed_list)
    return from_dict(FinetuneConfig, data)


# ----------------------------------------------------------------------------- noise detection
def measure_noise_detection(run_dir: str | Path, data_root: str | Path | None = None,
                            batch_size: int | None = None, enhance: bool | None = None) -> dict[str, Any]:
    """ROC-AUC and average precision of ``1 - W_l`` for flagging pixels whose noisy label is wrong.

    The final network of a pretrain run (``checkpoints/last.ckpt``) predicts every location and season
    of the run's pretraining set (train and validation split, no augmentation, full tiles). ``W_l`` is
    computed exactly as in training at the end of the ramp: eqs. (8)-(11) with ``alpha = alpha0``
    (the cross-modal enhancement of eq. 10 when the run has two modalities and ``method.enhance``),
    per-class thresholds over each batch of ``batch_size`` (default: the run's). For runs trained
    WITHOUT selection this is a measurement only (their training used ``W_l = 1``); a single-modal run
    has no enhancement. Positives are labelled pixels where the noisy label differs from the true one.
    ``enhance`` overrides the run's ``method.enhance`` (a diagnostic: each modality's own confidence).

    Returns ``{"alpha": a, "pixels": n, "noise_rate": r, "modalities": {m: {"auc", "ap"}}, ...}``.
    """
    import numpy as np
    import torch
    from sklearn.metrics import average_precision_score, roc_auc_score
    from torch.utils.data import DataLoader

    from cromss.data import build_dataset
    from cromss.schema import IGNORE_INDEX
    from cromss.selection import selection_weights
    from cromss.training import PretrainConfig
    from cromss.weights import load_cromss_net

    net, config = load_cromss_net(Path(run_dir))
    cfg = from_dict(PretrainConfig, copy.deepcopy(config))
    use_enhance = cfg.method.enhance if enhance is None else enhance
    data_cfg = copy.deepcopy(cfg.data)
    if data_root is not None:
        data_cfg.root = str(data_root)
    data_cfg.crop_size, data_cfg.eval_crop, data_cfg.eval_seasons, data_cfg.max_samples = None, None, "all", None
    batch = batch_size or data_cfg.batch_size
    modalities = list(cfg.model.modalities)
    scores: dict[str, list[Any]] = {m: [] for m in modalities}
    targets: list[Any] = []
    for split in ("train", "val"):
        dataset = build_dataset(data_cfg, split, train=False)
        for sample in DataLoader(dataset, batch_size=batch, shuffle=False):
            if "label_true" not in sample:
                raise DataError(
                    f"{data_cfg.root}: the pretraining set has no true labels (dw_labels_true, or the 'reference' "
                    "column of generic data), so the noise-detection AUC cannot be measured"
                )
            labels, truth = sample["label"], sample["label_true"]
            with torch.no_grad():
                logits = net({m: sample[m] for m in modalities})
            probs = {m: logits[m].float().softmax(dim=1) for m in modalities}
            weights = selection_weights(probs, labels, cfg.method.alpha0, 1.0, cfg.model.num_classes,
                                        IGNORE_INDEX, enhance=use_enhance)
            known = (labels != IGNORE_INDEX) & (truth != IGNORE_INDEX)
            targets.append((labels != truth)[known].numpy())
            for m in modalities:
                scores[m].append((1.0 - weights[m]["w_l"])[known].numpy())
    target = np.concatenate(targets) if targets else np.zeros(0, bool)
    result: dict[str, Any] = {
        "run_dir": str(run_dir), "alpha": cfg.method.alpha0, "selection_in_training": cfg.method.selection,
        "enhance": use_enhance and len(modalities) > 1, "pixels": int(target.size),
        "noise_rate": float(target.mean()) if target.size else math.nan, "modalities": {},
    }
    for m in modalities:
        score = np.concatenate(scores[m])
        if target.size and 0 < target.sum() < target.size:
            result["modalities"][m] = {"auc": float(roc_auc_score(target, score)),
                                       "ap": float(average_precision_score(target, score)),
                                       "flagged_fraction": float((score > 0).mean())}
        else:  # no noisy (or no clean) pixel: both scores are undefined
            result["modalities"][m] = {"auc": None, "ap": None, "flagged_fraction": float((score > 0).mean())}
    return result


# ----------------------------------------------------------------------------- the study
@dataclass
class Row:
    """One table row: an encoder (variant at a noise rate, or random) for one input modality."""

    variant: str
    modality: str
    noise_rate: float | None
    label: str
    run_dir: Path | None = None


def plan(exp: ExperimentConfig) -> list[Row]:
    """Every table row of the study (random rows first per modality, then the variants per rate)."""
    rows: list[Row] = []
    modalities: list[str] = []
    variant_rows: list[Row] = []
    for rate in study_rates(exp):
        for variant in exp.variants:
            cfg = pretrain_config(exp, variant, rate)
            for modality in transfer_modalities(exp, variant, rate):
                if modality not in cfg.model.modalities:
                    raise ConfigError(
                        f"config key 'variants[{variant.name}].transfer': {modality} is not a modality of its "
                        f"model {cfg.model.modalities}"
                    )
                modalities.append(modality)
                variant_rows.append(Row(variant.name, modality, rate, encoder_label(variant.name, rate),
                                        Path(cfg.output_dir) / cfg.name))
    if exp.finetune.random:
        rows += [Row("random", m, None, "random") for m in dict.fromkeys(sorted(modalities))]
    return rows + variant_rows


def _run_pretrain_cell(exp: ExperimentConfig, variant: VariantSpec, rate: float, log: Callable[[str], None],
                       wait: bool = True) -> str:
    from cromss.training import pretrain
    from cromss.training.run import run_dir_of

    cfg = pretrain_config(exp, variant, rate)
    run_dir = run_dir_of(cfg)

    def work() -> None:
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        log(f"pretrain {run_dir}" + (" (resuming)" if resume else ""))
        pretrain(cfg, resume=resume)
        if exp.measure_noise:
            result = measure_noise_detection(run_dir)
            (run_dir / NOISE_FILE).write_text(json.dumps(result, indent=2) + "\n")

    done = run_dir / (NOISE_FILE if exp.measure_noise else "summary.json")
    return run_cell(run_dir, done, {"kind": "pretrain", "config": to_dict(cfg), "measure_noise": exp.measure_noise},
                    work, log, wait)


def _run_finetune_cells(exp: ExperimentConfig, row: Row, log: Callable[[str], None], wait: bool = True) -> list[str]:
    """Fine-tune cells of one row; with ``wait=False`` a locked cell ends the row early ('locked' in the list)."""
    from cromss.transfer import finetune_once, write_aggregate

    weights = "random" if row.run_dir is None else str(row.run_dir)
    states = []
    for mode in exp.finetune.modes:
        cfg = finetune_config(exp, row.modality, weights, row.label, mode)
        results = []
        for seed in exp.finetune.seed_list:
            run_dir = cfg.run_dir(seed)

            def work(cfg: Any = cfg, seed: int = seed, run_dir: Path = run_dir) -> None:
                log(f"finetune {run_dir}")
                finetune_once(cfg, seed, overwrite=True)  # an unfinished cell is recomputed (run_cell)
                if not exp.keep_finetune_checkpoints:
                    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):
                        checkpoint.unlink()

            record = {"kind": "finetune", "config": {k: v for k, v in to_dict(cfg).items() if k != "seeds"},
                      "seed": seed}
            states.append(run_cell(run_dir, run_dir / "metrics.json", record, work, log, wait))
            if states[-1] == "locked":
                return states
            results.append(read_json(run_dir / "metrics.json", "fine-tuning metrics"))
        write_aggregate(cfg.group_dir(), results)
    return states


def run_experiment(exp: ExperimentConfig, log: Callable[[str], None] = print, dry_run: bool = False) -> dict[str, Any]:
    """Run (or with ``dry_run`` only list) every unfinished cell of ``exp``; write and return the table.

    Returns ``{"table": markdown, "files": [...], "cells": {"ran": n, "skipped": n}}``.
    """
    if exp.threads is not None:
        import torch

        torch.set_num_threads(exp.threads)
    root = Path(exp.output_dir)
    rows = plan(exp)
    if dry_run:
        lines = [] if exp.own_data else [f"data   {root / 'data' / noise_tag(r)}" for r in exp.noise_rates]
        lines += [f"pretrain {row.run_dir}" for row in rows if row.run_dir is not None]
        lines += [f"finetune {row.label} {row.modality} x {exp.finetune.modes} x seeds {exp.finetune.seed_list}"
                  for row in rows]
        return {"table": "\n".join(dict.fromkeys(lines)) + "\n", "files": [], "cells": {}}
    counts = {"ran": 0, "skipped": 0}
    started = time.perf_counter()
    for rate in [] if exp.own_data else exp.noise_rates:  # own data: nothing to generate
        out = root / "data" / noise_tag(rate)
        record = {"kind": "data", "spec": to_dict(exp.data), "noise_rate": rate}
        state = run_cell(out, out / "info.json", record,
                         lambda rate=rate: write_controlled_data(root / "data", exp.data, rate), log)
        counts[state] += 1
    # cells another process is running are deferred, not waited for: first everything free, then the rest
    deferred = []
    for rate in study_rates(exp):
        for variant in exp.variants:
            state = _run_pretrain_cell(exp, variant, rate, log, wait=False)
            if state == "locked":
                deferred.append((variant, rate))
            else:
                counts[state] += 1
    pending = [row for row in rows if row.run_dir is None or (row.run_dir / CELL_FILE).is_file()]
    later = [row for row in rows if row not in pending]
    deferred_rows = []
    for row in pending:
        states = _run_finetune_cells(exp, row, log, wait=False)
        if "locked" in states:
            deferred_rows.append(row)
        for state in states:
            if state != "locked":
                counts[state] += 1
    for variant, rate in deferred:
        counts[_run_pretrain_cell(exp, variant, rate, log)] += 1
    for row in later + deferred_rows:
        for state in _run_finetune_cells(exp, row, log):
            counts[state] += 1
    table = write_study_table(exp, rows)
    table["cells"] = counts
    table["wall_time_s"] = round(time.perf_counter() - started, 1)
    log(f"cells: {counts['ran']} run, {counts['skipped']} already finished ({table['wall_time_s']} s)")
    return table


# ----------------------------------------------------------------------------- tables
def _stats(values: list[float]) -> dict[str, float] | None:
    from cromss.transfer import mean_std

    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None
    mean, std = mean_std(clean)
    return {"mean": mean, "std": std, "n": len(clean)}


def collect_row(exp: ExperimentConfig, row: Row) -> dict[str, Any]:
    """Metrics of one row: per mode the mean/std over seeds of OA, AA, mIoU, mF1; noise AUC/AP;
    pretraining-stage mIoU against the true labels (validation split)."""
    weights = "random" if row.run_dir is None else str(row.run_dir)
    record: dict[str, Any] = {"variant": row.variant, "input": row.modality, "noise_rate": row.noise_rate,
                              "label": row.label}
    for mode in exp.finetune.modes:
        cfg = finetune_config(exp, row.modality, weights, row.label, mode)
        results = []
        for seed in exp.finetune.seed_list:
            path = cfg.run_dir(seed) / "metrics.json"
            if path.is_file():
                results.append(read_json(path, "fine-tuning metrics"))
        record[mode] = {m: _stats([r.get(m) for r in results]) for m in ("oa", "aa", "miou", "mf1")}
        record[mode]["seeds"] = [r.get("seed") for r in results]
    record["auc"] = record["ap"] = record["pretrain_miou_true"] = None
    if row.run_dir is not None:
        cfg = pretrain_config(exp, next(v for v in exp.variants if v.name == row.variant), row.noise_rate)
        record["selection"] = cfg.method.selection
        record["mu"], record["beta"] = cfg.method.effective_mu, cfg.method.effective_beta
        noise_file = row.run_dir / NOISE_FILE
        if noise_file.is_file():
            found = read_json(noise_file, "noise-detection record")["modalities"].get(row.modality, {})
            record["auc"], record["ap"] = found.get("auc"), found.get("ap")
        summary = row.run_dir / "summary.json"
        if summary.is_file():
            record["pretrain_miou_true"] = read_json(summary, "run summary")["metrics"].get(f"val/miou_true_{row.modality}")
    return record


def _pct(stats: dict[str, float] | None, std: bool = True) -> str:
    if stats is None:
        return "–"
    return f"{100 * stats['mean']:.2f}±{100 * stats['std']:.2f}" if std else f"{100 * stats['mean']:.2f}"


def _num(value: float | None, marker: str = "") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}{marker}"


def render_table(exp: ExperimentConfig, records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the study's table in its ``layout``."""
    modes = exp.finetune.modes
    titles = {"frozen": "Frozen", "finetuned": "Fine-tuned"}

    def noise_cells(rec: dict[str, Any]) -> list[str]:
        marker = "" if rec.get("selection", True) else "*"
        return [_num(rec["auc"], marker), _num(rec["ap"], marker)]

    if exp.layout == "smoothing":
        header = ["μ (spatial-temporal)", "β (uniform)", "Input"] + [f"{titles[m]} mIoU" for m in modes]
        header += ["AUC(1−W_l)", "AP(1−W_l)"]
        rows = [[_num(r.get("mu")).rstrip("0").rstrip(".") if r.get("mu") is not None else "–",
                 _num(r.get("beta")).rstrip("0").rstrip(".") if r.get("beta") is not None else "–", r["input"]]
                + [_pct(r[m]["miou"]) for m in modes] + noise_cells(r)
                for r in records if r["variant"] != "random"]
        rows += [["random", "", r["input"]] + [_pct(r[m]["miou"]) for m in modes] + ["–", "–"]
                 for r in records if r["variant"] == "random"]
        return header, rows
    if exp.layout == "noise_sweep":
        header = ["Noise rate", "Input", "Weights"] + [f"{titles[m]} mIoU" for m in modes]
        header += ["Pretrain mIoU (true)", "AUC(1−W_l)", "AP(1−W_l)"]
        rows = []
        for r in records:
            rate = "–" if r["noise_rate"] is None else (
                "own" if r["noise_rate"] == OWN_NOISE else f"{round(100 * r['noise_rate'])} %")
            pre = "–" if r["pretrain_miou_true"] is None else f"{100 * r['pretrain_miou_true']:.2f}"
            rows.append([rate, r["input"], r["variant"]] + [_pct(r[m]["miou"]) for m in modes] + [pre]
                        + noise_cells(r))
        return header, rows
    header = ["Inputs", "Weights"] + [f"{titles[m]} {t}" for m in modes for t in ("OA", "AA", "mIoU")]
    header += ["AUC(1−W_l)", "AP(1−W_l)"]
    ordered = sorted(records, key=lambda r: r["input"])
    rows = [[r["input"].upper(), r["variant"]] + [_pct(r[m][k]) for m in modes for k in ("oa", "aa", "miou")]
            + noise_cells(r) for r in ordered]
    return header, rows


def write_study_table(exp: ExperimentConfig, rows: list[Row] | None = None) -> dict[str, Any]:
    """Collect every row's results and write ``<output_dir>/<name>.{md,csv,json}``; returns the paths
    and the Markdown."""
    from cromss.transfer import render_markdown

    rows = plan(exp) if rows is None else rows
    records = [collect_row(exp, row) for row in rows]
    header, table_rows = render_table(exp, records)
    markdown = render_markdown(header, table_rows)
    seeds = exp.finetune.seed_list
    notes = [
        f"Values: mean±std (%) over fine-tuning seeds {seeds}; pretraining seed {exp.seed}; "
        + (f"the data's own labels ({exp.pretrain_root}; fine-tuned on {exp.finetune_root})." if exp.own_data
           else f"noise rate(s) {exp.noise_rates}."),
        "AUC/AP: ROC-AUC and average precision of 1 − W_l (alpha = alpha0) for flagging truly mislabelled "
        "pretraining pixels; * = variant trained without selection (W_l computed for the measurement only).",
    ]
    markdown = markdown + "\n" + "\n".join(notes) + "\n"
    root = Path(exp.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = [root / f"{exp.name}.md", root / f"{exp.name}.csv", root / f"{exp.name}.json"]
    # several worker processes of one study may write the table at once: replace, never truncate
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(table_rows)
    texts = [markdown, buffer.getvalue(),
             json.dumps({"config": to_dict(exp), "rows": records}, indent=2, default=str) + "\n"]
    for path, text in zip(files, texts, strict=True):
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        partial.write_text(text, newline="")
        os.replace(partial, path)
    return {"table": markdown, "files": [str(f) for f in files]}
