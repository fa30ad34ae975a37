"""Transfer learning (paper Sec. IV-A): pretrained ResNet encoders in smp segmentation frameworks.

One fine-tuning run = one encoder source x frozen/fine-tuned x one seed, in its own folder::

    <output_dir>/<name>/<encoder-label>/<frozen|finetuned>/seed<k>/
        config.yaml      resolved FinetuneConfig of this run
        metrics.json     test-set metrics of the best-validation checkpoint (incl. confusion matrix)
        checkpoints/     best.ckpt (highest validation mIoU) and last.ckpt
        logs/            Lightning CSV logs (losses, validation metrics per epoch)

and ``<output_dir>/<name>/<encoder-label>/<frozen|finetuned>/aggregate.{json,csv}`` holds mean +/- std
over the seeds. Validation is a seeded hold-out of the TRAIN split (``data.val_fraction``); the test
split is only used once, with the best-validation checkpoint.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import glob
import json
import math
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from cromss.checkpoints import safe_torch_load
from cromss.config import dump_config, from_dict, load_config, to_dict
from cromss.data import DataConfig
from cromss.errors import CheckpointError, ConfigError, DataError
from cromss.metrics import SCALAR_METRICS, SegmentationMetrics
from cromss.schema import CLASS_TABLES, IGNORE_INDEX

FRAMEWORKS: tuple[str, ...] = ("pspnet", "deeplabv3plus", "fpn", "unet", "upernet")
#: Column titles of the paper's tables, in order.
METRIC_TITLES: dict[str, str] = {"oa": "OA", "aa": "AA", "miou": "mIoU", "mf1": "mF1"}
MODES: tuple[str, ...] = ("frozen", "finetuned")
MODE_TITLES: dict[str, str] = {"frozen": "Frozen", "finetuned": "Fine-tuned"}


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainerConfig:
    """Options passed to ``lightning.Trainer`` (YAML section ``trainer:``)."""

    accelerator: str = "auto"
    devices: int | str = 1
    precision: str = "32-true"
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    #: Fraction or number of test batches evaluated after fitting (None = all).
    limit_test_batches: int | float | None = None
    log_every_n_steps: int = 10
    deterministic: bool = False
    enable_progress_bar: bool = True

    def validate(self) -> None:
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"config key 'trainer.{key}' must be > 0 (or null for all), got {value}")
        if self.log_every_n_steps < 1:
            raise ConfigError(f"config key 'trainer.log_every_n_steps' must be >= 1, got {self.log_every_n_steps}")


@dataclass
class FinetuneConfig:
    """A downstream fine-tuning task (top-level YAML of ``cromss finetune``).

    ``modality`` and ``s2_bands`` decide the input; they override ``data.modalities`` and
    ``data.s2_bands``. ``weights`` is the encoder source (``random``, a pretrain run folder, an exported
    ``.safetensors`` file, an official CromSS checkpoint or an SSL4EO-S12/torchgeo ResNet file).
    ``seeds``: a count n (seeds ``seed .. seed+n-1``) or an explicit list.
    """

    name: str = "finetune"
    seed: int = 0
    output_dir: str = "runs/finetune"
    #: the downstream set; give at least ``kind`` and ``root`` in YAML (other keys: DataConfig defaults)
    data: DataConfig = field(default_factory=lambda: DataConfig(kind="dw", crop_size=None))
    framework: Literal["pspnet", "deeplabv3plus", "fpn", "unet", "upernet"] = "deeplabv3plus"
    encoder: str = "resnet50"
    weights: str = "random"
    #: Folder name of the encoder source in the run tree (default: derived from ``weights``).
    weights_label: str | None = None
    modality: Literal["s1", "s2"] = "s2"
    s2_bands: int = 13
    #: None = the size of the class table of ``data.kind``.
    num_classes: int | None = None
    lr: float = 5e-4
    weight_decay: float = 0.0
    #: 'constant' (paper text) or 'cosine' (authors' code: cosine decay to min_lr over cosine_epochs).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 1e-5
    cosine_epochs: int = 40
    epochs: int = 50
    frozen: bool = False
    seeds: int | list[int] = 3
    #: Dice form of the CE + Dice loss: 'paper' (eq. 6), 'per_class' (authors' code) or 'none'.
    dice: Literal["paper", "per_class", "none"] = "paper"
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        if self.s2_bands not in (13, 9):
            raise ConfigError(f"config key 's2_bands' must be 13 or 9, got {self.s2_bands}")
        if self.data.kind not in CLASS_TABLES or self.data.kind == "nol":
            raise ConfigError(
                f"config key 'data.kind' must be a downstream set ('dw', 'osm', 'dfc2020'), got {self.data.kind!r}"
            )
        table_size = CLASS_TABLES[self.data.kind].num_classes
        if self.num_classes is not None and self.num_classes != table_size:
            raise ConfigError(
                f"config key 'num_classes' is {self.num_classes} but data.kind '{self.data.kind}' has "
                f"{table_size} classes"
            )
        for key in ("lr", "min_lr"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key '{key}' must be > 0, got {getattr(self, key)}")
        if self.weight_decay < 0:
            raise ConfigError(f"config key 'weight_decay' must be >= 0, got {self.weight_decay}")
        if self.epochs < 1 or self.cosine_epochs < 1:
            raise ConfigError(f"config keys 'epochs'/'cosine_epochs' must be >= 1, got {self.epochs}/{self.cosine_epochs}")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ConfigError(f"config key 'seeds' must be a count >= 1 or a list of seeds, got {self.seeds}")
        if isinstance(self.seeds, list) and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"config key 'seeds' must be a non-empty list of distinct seeds, got {self.seeds}")
        if not self.data.val_fraction > 0:
            raise ConfigError(
                "config key 'data.val_fraction' must be > 0: fine-tuning picks the best checkpoint on a "
                "validation split held out from train (the test split is never used for that)"
            )
        if self.weights_label is not None and not re.fullmatch(r"[A-Za-z0-9._+-]+", self.weights_label):
            raise ConfigError(
                f"config key 'weights_label' {self.weights_label!r} may only hold letters, digits and . _ + -"
            )

    # -- derived values
    @property
    def in_channels(self) -> int:
        return 2 if self.modality == "s1" else self.s2_bands

    @property
    def classes(self) -> int:
        return self.num_classes or CLASS_TABLES[self.data.kind].num_classes

    @property
    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, int):
            return list(range(self.seed, self.seed + self.seeds))
        return list(self.seeds)

    @property
    def label(self) -> str:
        return self.weights_label or weights_label(self.weights)

    @property
    def mode(self) -> str:
        return "frozen" if self.frozen else "finetuned"

    def group_dir(self) -> Path:
        """``<output_dir>/<name>/<encoder-label>/<frozen|finetuned>``."""
        return Path(self.output_dir) / self.name / self.label / self.mode

    def run_dir(self, seed: int) -> Path:
        return self.group_dir() / f"seed{seed}"


def weights_label(source: str) -> str:
    """A folder-safe short name of an encoder source: ``random`` or the file/folder stem."""
    if source == "random":
        return "random"
    path = Path(source)
    stem = path.name
    for suffix in (".safetensors", ".ckpt", ".pth", ".pt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem) or "weights"


def load_finetune_config(
    path_or_cfg: str | Path | FinetuneConfig | None, overrides: list[str] | None = None
) -> FinetuneConfig:
    """A FinetuneConfig from a YAML path (with dotted overrides) or a copy of a given config."""
    if isinstance(path_or_cfg, FinetuneConfig):
        cfg = copy.deepcopy(path_or_cfg)
        if overrides:
            from cromss.config import apply_overrides

            cfg = from_dict(FinetuneConfig, apply_overrides(to_dict(cfg), overrides))
        return cfg
    return load_config(FinetuneConfig, path_or_cfg, overrides)


def _resolved_data_config(cfg: FinetuneConfig) -> DataConfig:
    """The data section with the input of the task (one modality, the chosen S2 bands)."""
    data = copy.deepcopy(cfg.data)
    data.modalities = [cfg.modality]
    data.s2_bands = cfg.s2_bands
    return data


# ----------------------------------------------------------------------------- model
def build_segmentation_model(framework: str, encoder: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """An smp model with smp's default decoder settings and NO downloaded weights.

    smp defaults kept on purpose (they are what the paper's smp models used): PSPNet
    ``encoder_depth=3`` (layer3/layer4 stay in the encoder, unused, so full ResNet weights still load
    strictly), DeepLabV3+ ``encoder_output_stride=16``.
    """
    import segmentation_models_pytorch as smp

    classes = {
        "pspnet": smp.PSPNet, "deeplabv3plus": smp.DeepLabV3Plus, "fpn": smp.FPN,
        "unet": smp.Unet, "upernet": smp.UPerNet,
    }
    if framework not in classes:
        raise ConfigError(f"framework {framework!r} is not one of {list(classes)}")
    try:
        return classes[framework](
            encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
        )
    except (KeyError, ValueError) as err:
        raise ConfigError(f"cannot build {framework} with encoder {encoder!r}: {err}") from None


def load_encoder_weights(
    model: torch.nn.Module, source: str, modality: str, in_channels: int, encoder_name: str | None = None
) -> dict[str, Any]:
    """Load an encoder source into ``model.encoder`` (strict); returns the source's info dict.

    ``source='random'`` leaves smp's random initialisation. Every other source goes through
    :func:`cromss.weights.encoder_state_dict`, which maps it to smp/timm ResNet keys.
    """
    if source == "random":
        return {"source": "random"}
    from cromss.weights import encoder_state_dict

    state_dict, info = encoder_state_dict(source, modality=modality, in_channels=in_channels)
    pretrained_name = info.get("encoder") if isinstance(info, dict) else None
    if pretrained_name and encoder_name and pretrained_name != encoder_name:
        raise CheckpointError(
            f"{source} holds a {pretrained_name} encoder but the config asks for {encoder_name}: "
            f"set encoder={pretrained_name}"
        )
    target_keys = set(model.encoder.state_dict())
    missing = sorted(target_keys - set(state_dict))
    unexpected = sorted(set(state_dict) - target_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"encoder weights from {source} do not fit the model's encoder: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); is the config's 'encoder' the pretrained architecture?"
        )
    try:
        model.encoder.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"encoder weights from {source} do not fit the model's encoder: {err}") from None
    if not isinstance(info, dict):
        return {"source": source, "info": str(info)}
    # the pretraining config and export metadata stay in the source; keep what identifies it
    keep = ("source", "layout", "modality", "in_channels", "encoder", "bands", "prefix")
    return {key: info[key] for key in keep if key in info}


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad ``[B, C, H, W]`` at the bottom/right (reflect) so H and W divide by ``multiple``."""
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (height, width)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def _lightning_module_class() -> type:
    import lightning.pytorch as pl

    from cromss.losses import segmentation_loss

    class FinetuneModule(pl.LightningModule):
        """An smp segmentation model trained with CE + Dice on labelled pixels (eq. 6 with one-hot targets).

        Frozen mode: encoder parameters get no gradient and the encoder's BatchNorm layers stay in
        eval mode (running statistics unchanged); re-applied at every training epoch and batch start
        because Lightning toggles train()/eval() around validation.
        """

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.cfg = from_dict(FinetuneConfig, copy.deepcopy(config))
            self.model = build_segmentation_model(
                self.cfg.framework, self.cfg.encoder, self.cfg.in_channels, self.cfg.classes
            )
            self.val_metrics = SegmentationMetrics(self.cfg.classes)
            self.apply_freeze()

        def apply_freeze(self) -> None:
            if self.cfg.frozen:
                self.model.freeze_encoder()

        def forward(self, x: Tensor) -> Tensor:
            multiple = int(getattr(self.model.encoder, "output_stride", 32))
            padded, (height, width) = pad_to_multiple(x, multiple)
            return self.model(padded)[..., :height, :width]

        def _inputs(self, batch: dict[str, Any]) -> Tensor:
            if self.cfg.modality not in batch:
                raise DataError(f"batch has no '{self.cfg.modality}' input (keys: {sorted(batch)})")
            return batch[self.cfg.modality]

        def _loss(self, logits: Tensor, label: Tensor) -> Tensor:
            labelled = label != IGNORE_INDEX
            one_hot = F.one_hot(torch.where(labelled, label, 0), self.cfg.classes).permute(0, 3, 1, 2)
            return segmentation_loss(logits, one_hot.to(logits.dtype), labelled.to(logits.dtype), dice=self.cfg.dice)

        def on_train_epoch_start(self) -> None:
            self.apply_freeze()

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.apply_freeze()

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
            logits = self(self._inputs(batch))
            loss = self._loss(logits, batch["label"])
            self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=logits.shape[0])
            return loss

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            logits = self(self._inputs(batch))
            loss = self._loss(logits, batch["label"])
            self.log("val_loss", loss, on_epoch=True, batch_size=logits.shape[0])
            self.val_metrics.update(logits, batch["label"])

        def on_validation_epoch_end(self) -> None:
            result = self.val_metrics.compute()
            self.val_metrics.reset()
            for name in SCALAR_METRICS:
                value = result[name]
                self.log(f"val_{name}", 0.0 if math.isnan(value) else value, sync_dist=False)

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            if self.cfg.lr_schedule == "constant":
                return optimizer
            floor = self.cfg.min_lr / self.cfg.lr
            span = self.cfg.cosine_epochs

            def factor(epoch: int) -> float:
                # cosine from lr to min_lr over `span` epochs, then flat at min_lr
                progress = min(epoch, span) / span
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    return FinetuneModule


_MODULE_CLASS: type | None = None


def finetune_module_class() -> type:
    """The LightningModule class (built lazily so importing cromss.transfer stays light)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _lightning_module_class()
    return _MODULE_CLASS


def build_module(cfg: FinetuneConfig, load_weights: bool = True) -> Any:
    """The FinetuneModule of ``cfg``, with the encoder source loaded when ``load_weights``."""
    module = finetune_module_class()(to_dict(cfg))
    if load_weights:
        module.weights_info = load_encoder_weights(
            module.model, cfg.weights, cfg.modality, cfg.in_channels, encoder_name=cfg.encoder
        )
        module.apply_freeze()
    return module


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_model(
    module: Any, loader: Any, num_classes: int, modality: str, limit_batches: int | float | None = None
) -> dict[str, Any]:
    """Confusion-matrix metrics of ``module`` over a whole data loader (eval mode, no augmentation)."""
    was_training = module.training
    module.eval()
    metrics = SegmentationMetrics(num_classes)
    device = next(module.parameters()).device
    total = len(loader) if hasattr(loader, "__len__") else None
    if isinstance(limit_batches, float) and total is not None:
        limit_batches = max(1, int(limit_batches * total))
    for index, batch in enumerate(loader):
        if limit_batches is not None and index >= limit_batches:
            break
        if modality not in batch:
            raise DataError(f"batch has no '{modality}' input (keys: {sorted(batch)})")
        logits = module(batch[modality].to(device))
        metrics.update(logits, batch["label"].to(device))
    module.train(was_training)
    return metrics.compute()


def _json_safe(value: Any) -> Any:
    """NaN -> None recursively (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(data), indent=2) + "\n")


# ----------------------------------------------------------------------------- one run
def finetune_once(cfg: FinetuneConfig, seed: int) -> dict[str, Any] | None:
    """Fit one seed, then test the best-validation checkpoint; returns the metrics.json content.

    With several devices only global rank 0 tests and returns the result (others return None).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from cromss.checkpoints import AtomicCheckpointIO
    from cromss.data import CromSSDataModule

    run_cfg = copy.deepcopy(cfg)
    run_cfg.seed = seed
    run_cfg.seeds = [seed]
    run_cfg.data = _resolved_data_config(cfg)
    run_dir = cfg.run_dir(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    # a re-run replaces the run: stale best.ckpt would make Lightning write best-v1.ckpt instead
    for stale in (run_dir / "checkpoints").glob("*.ckpt"):
        stale.unlink()
    dump_config(run_cfg, run_dir / "config.yaml")

    pl.seed_everything(seed, workers=True, verbose=False)
    datamodule = CromSSDataModule(run_cfg.data)
    module = build_module(run_cfg)
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val_miou", mode="max",
        save_last=True, auto_insert_metric_name=False,
    )
    options = run_cfg.trainer
    trainer = pl.Trainer(
        max_epochs=run_cfg.epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        precision=options.precision,
        limit_train_batches=options.limit_train_batches,
        limit_val_batches=options.limit_val_batches,
        log_every_n_steps=options.log_every_n_steps,
        deterministic=options.deterministic,
        enable_progress_bar=options.enable_progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[checkpoint],
        # checkpoints via <file>.tmp + rename: a crash mid-save never leaves a truncated best.ckpt
        plugins=[AtomicCheckpointIO()],
        logger=CSVLogger(save_dir=run_dir, name="logs", version=""),
        default_root_dir=run_dir,
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        # a frozen encoder's BatchNorm layers are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - started

    if not trainer.is_global_zero:  # multi-device: rank 0 alone tests and writes the results
        return None
    best_path = checkpoint.best_model_path or checkpoint.last_model_path
    state = safe_torch_load(Path(best_path), what="fine-tuning checkpoint")
    module.load_state_dict(state["state_dict"])
    datamodule.setup("test")
    test = evaluate_model(
        module, datamodule.test_dataloader(), run_cfg.classes, run_cfg.modality, options.limit_test_batches
    )
    result = {
        "task": cfg.name,
        "encoder_label": cfg.label,
        "encoder_source": cfg.weights,
        "frozen": cfg.frozen,
        "mode": cfg.mode,
        "seed": seed,
        "split": "test",
        "checkpoint": str(Path(best_path).name),
        "best_epoch": int(state.get("epoch", -1)),
        "best_val_miou": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "fit_seconds": round(fit_seconds, 2),
        "class_names": list(CLASS_TABLES[run_cfg.data.kind].names),
        "weights_info": _plain(getattr(module, "weights_info", {})),
        **test,
    }
    write_json(result, run_dir / "metrics.json")
    return result


def _plain(value: Any) -> Any:
    """Best-effort JSON-able copy of an info dict (tensors and paths become strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# ----------------------------------------------------------------------------- repeats and aggregates
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single run)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +/- std over runs of each scalar metric (fractions), with the per-seed values."""
    summary: dict[str, Any] = {}
    for name in SCALAR_METRICS:
        values = [r.get(name) for r in results]
        mean, std = mean_std([v for v in values if v is not None])
        summary[name] = {"mean": mean, "std": std, "values": values}
    return summary


def write_aggregate(group_dir: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``aggregate.json`` and ``aggregate.csv`` (metric, mean %, std %, n) into ``group_dir``."""
    first = results[0]
    data = {
        "task": first.get("task"), "encoder_label": first.get("encoder_label"),
        "encoder_source": first.get("encoder_source"), "mode": first.get("mode"),
        "seeds": [r.get("seed") for r in results], "metrics": aggregate(results),
    }
    write_json(data, group_dir / "aggregate.json")
    with open(group_dir / "aggregate.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "mean_pct", "std_pct", "n"])
        for name, stats in data["metrics"].items():
            writer.writerow([METRIC_TITLES[name], f"{100 * stats['mean']:.2f}", f"{100 * stats['std']:.2f}", len(results)])
    return data


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run every seed of ``cfg`` (each in its own folder) and write the aggregate; returns it."""
    results = [finetune_once(cfg, seed) for seed in cfg.seed_list]
    if any(result is None for result in results):  # not rank 0
        return {"seeds": cfg.seed_list, "metrics": {}}
    return write_aggregate(cfg.group_dir(), results)


# ----------------------------------------------------------------------------- tables
def _collect_metrics_files(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        for match in matches:
            path = Path(match)
            if path.is_file() and path.name == "metrics.json":
                files.append(path)
            elif path.is_dir():
                files.extend(sorted(path.rglob("metrics.json")))
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise DataError(f"no metrics.json found under {', '.join(patterns)}")
    return unique


def _run_identity(path: Path, data: dict[str, Any]) -> tuple[str, str, str]:
    """(task, encoder label, mode) of a metrics.json, from its fields or its run-folder path."""
    parts = path.parent.parts  # .../<task>/<label>/<mode>/seed<k>
    mode = data.get("mode") or ("frozen" if data.get("frozen") else None)
    if mode is None and "frozen" in data:
        mode = "finetuned"
    if mode is None and len(parts) >= 2 and parts[-2] in MODES:
        mode = parts[-2]
    label = data.get("encoder_label") or (parts[-3] if len(parts) >= 3 else None)
    task = data.get("task") or (parts[-4] if len(parts) >= 4 else "")
    if mode not in MODES or not label:
        raise DataError(
            f"{path}: cannot tell encoder label and frozen/finetuned (expected fields 'encoder_label' and "
            "'mode' or a path <task>/<label>/<frozen|finetuned>/seed<k>/metrics.json)"
        )
    return str(task), str(label), str(mode)


def collect_table(patterns: list[str]) -> dict[str, Any]:
    """Group metrics.json files under ``patterns`` by (task, label, mode); mean/std per metric."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seen: dict[tuple[str, str, str, Any], Path] = {}
    for path in _collect_metrics_files(patterns):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is not valid JSON: {err}") from None
        missing = [name for name in SCALAR_METRICS if name not in data]
        if missing:
            raise DataError(f"{path} lacks metric(s) {missing}")
        identity = _run_identity(path, data)
        seed_key = (*identity, data.get("seed", path.parent.name))
        if seed_key in seen:
            raise DataError(
                f"seed {seed_key[3]} of {identity[1]}/{identity[2]} appears twice ({seen[seed_key]} and {path}); "
                "pass folders or globs that select one experiment"
            )
        seen[seed_key] = path
        groups.setdefault(identity, []).append(data)
    return {key: aggregate(results) | {"n": len(results)} for key, results in groups.items()}


def format_cell(stats: dict[str, float] | None) -> str:
    """``mean±std`` in percent with two decimals (the paper's format); '–' when missing."""
    if stats is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    return f"{100 * stats['mean']:.2f}±{100 * stats['std']:.2f}"


def table_rows(patterns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper's layout: weights | Frozen OA AA mIoU mF1 | Fine-tuned OA AA mIoU mF1."""
    groups = collect_table(patterns)
    tasks = list(dict.fromkeys(task for task, _, _ in groups))
    rows_by_key: dict[tuple[str, str], list[str]] = {}
    for task, label in dict.fromkeys((task, label) for task, label, _ in groups):
        name = label if len(tasks) == 1 else f"{task}: {label}"
        cells = [name]
        for mode in MODES:
            stats = groups.get((task, label, mode))
            cells += [format_cell(stats[m] if stats else None) for m in SCALAR_METRICS]
        rows_by_key[(task, label)] = cells
    header = ["Weights"] + [f"{MODE_TITLES[mode]} {METRIC_TITLES[m]}" for mode in MODES for m in SCALAR_METRICS]
    return header, list(rows_by_key.values())


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table(patterns: list[str], out_prefix: str | Path | None = None) -> str:
    """The aggregate table as Markdown (returned) and, with ``out_prefix``, ``<prefix>.md``/``.csv``."""
    header, rows = table_rows(patterns)
    markdown = render_markdown(header, rows)
    if out_prefix is not None:
        prefix = Path(out_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}.md").write_text(markdown)
        with open(f"{prefix}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return markdown


# ----------------------------------------------------------------------------- evaluate a run
def load_run(run_or_ckpt: str | Path) -> tuple[Any, FinetuneConfig, Path]:
    """FinetuneModule, config and checkpoint path of a run folder (best.ckpt) or a checkpoint file."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise CheckpointError(f"{run_or_ckpt} holds no checkpoints/best.ckpt or checkpoints/last.ckpt")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = safe_torch_load(path, what="fine-tuning checkpoint")
    config = (state.get("hyper_parameters") or {}).get("config") if isinstance(state, dict) else None
    if not isinstance(config, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a cromss fine-tuning checkpoint (no hyper_parameters.config)")
    cfg = from_dict(FinetuneConfig, dict(config))
    module = finetune_module_class()(to_dict(cfg))
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model of its config: {err}") from None
    return module, cfg, path


def evaluate_run(
    run_or_ckpt: str | Path, data_root: str | Path | None = None, kind: str | None = None,
    split: str = "test", batch_size: int | None = None, num_workers: int | None = None,
) -> dict[str, Any]:
    """Metrics of a fine-tuned run on ``split`` of a dataset (default: the run's own data root)."""
    from torch.utils.data import DataLoader

    from cromss.data import build_dataset

    module, cfg, ckpt = load_run(run_or_ckpt)
    data_cfg = copy.deepcopy(cfg.data)
    if data_root is not None:
        data_cfg.root = str(data_root)
    if kind is not None:
        if CLASS_TABLES.get(kind, None) is None or CLASS_TABLES[kind].num_classes != cfg.classes:
            raise ConfigError(
                f"--kind {kind!r} does not match the {cfg.classes}-class model of {ckpt} (trained on '{cfg.data.kind}')"
            )
        data_cfg.kind = kind
    if batch_size is not None:
        data_cfg.batch_size = batch_size
    if num_workers is not None:
        data_cfg.num_workers = num_workers
    if hasattr(data_cfg, "validate"):
        data_cfg.validate()
    dataset = build_dataset(data_cfg, split, train=False)
    loader = DataLoader(dataset, batch_size=data_cfg.batch_size, shuffle=False, num_workers=data_cfg.num_workers)
    result = evaluate_model(module, loader, cfg.classes, cfg.modality)
    return {
        "checkpoint": str(ckpt), "data_root": str(data_cfg.root), "kind": data_cfg.kind, "split": split,
        "modality": cfg.modality, "encoder_label": cfg.label, "mode": cfg.mode,
        "class_names": list(CLASS_TABLES[data_cfg.kind].names), **result,
    }


def format_metrics(result: dict[str, Any]) -> str:
    """A plain-text table: the four scalar metrics, then per-class IoU / F1 / recall / support."""
    lines = ["  ".join(f"{METRIC_TITLES[m]} {100 * result[m]:6.2f}" for m in SCALAR_METRICS)]
    names = result.get("class_names") or [str(i) for i in range(len(result["iou"]))]
    lines.append(f"{'class':<32}{'IoU %':>8}{'F1 %':>8}{'recall %':>10}{'pixels':>12}")
    for index, name in enumerate(names):
        cells = []
        for key in ("iou", "f1", "recall"):
            value = result[key][index]
            cells.append("–" if value is None or math.isnan(value) else f"{100 * value:.2f}")
        lines.append(f"{name:<32}{cells[0]:>8}{cells[1]:>8}{cells[2]:>10}{result['support'][index]:>12}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- comparison (demo)
def run_comparison(
    config_path_or_cfg: str | Path | FinetuneConfig,
    encoders: dict[str, str],
    modality: str = "s2",
    seeds: int | list[int] = 1,
    out_dir: str | Path = "runs/compare",
    modes: tuple[str, ...] = MODES,
) -> str:
    """Fine-tune every encoder source frozen and fine-tuned for each seed; returns the Markdown table.

    ``encoders`` maps a row label (e.g. ``'random'``, ``'CromSS'``) to a source. Runs land in
    ``<out_dir>/<name>/<label>/<mode>/seed<k>/`` and the table in ``<out_dir>/<name>/table.{md,csv}``.
    """
    base = load_finetune_config(config_path_or_cfg)
    base.output_dir = str(out_dir)
    base.modality = modality  # type: ignore[assignment]
    base.seeds = seeds
    base.validate()
    for label, source in encoders.items():
        for mode in modes:
            if mode not in MODES:
                raise ConfigError(f"mode {mode!r} is not one of {list(MODES)}")
            cfg = dataclasses.replace(base, weights=source, weights_label=label, frozen=(mode == "frozen"))
            cfg.validate()
            finetune(cfg)
    task_dir = Path(out_dir) / base.name
    labels = [str(task_dir / label) for label in encoders]
    return write_table(labels, task_dir / "table")
