"""Fine-tuning configuration: ``FinetuneConfig`` (top-level YAML of ``cromss finetune``) and its parts."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cromss.baselines.registry import BASELINES, VIT_FRAMEWORKS, ViTConfig
from cromss.config import from_dict, load_config, to_dict
from cromss.data import DataConfig
from cromss.errors import ConfigError
from cromss.schema import CLASS_TABLES, modality_bands

FRAMEWORKS: tuple[str, ...] = ("pspnet", "deeplabv3plus", "fpn", "unet", "upernet", "segmenter")
#: Column titles of the paper's tables, in order.
METRIC_TITLES: dict[str, str] = {"oa": "OA", "aa": "AA", "miou": "mIoU", "mf1": "mF1"}
MODES: tuple[str, ...] = ("frozen", "finetuned")
MODE_TITLES: dict[str, str] = {"frozen": "Frozen", "finetuned": "Fine-tuned"}


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
    framework: Literal["pspnet", "deeplabv3plus", "fpn", "unet", "upernet", "segmenter"] = "deeplabv3plus"
    encoder: str = "resnet50"
    #: a comparison baseline of the paper (``cromss.baselines``): 'scalemae', 'satmae', 'satmae++', 'dofa'
    #: (ViT-Large; framework upernet or segmenter) or 'satlas' (ResNet-50, smp frameworks); ``weights`` is
    #: then its published file (or 'random')
    baseline: Literal["scalemae", "satmae", "satmae++", "dofa", "satlas"] | None = None
    #: ViT size and ViT decoder settings (used with a ViT baseline)
    vit: ViTConfig = field(default_factory=ViTConfig)
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
        if self.data.batch_size < 2:
            # the decoders' pooling branches (DeepLabV3+ ASPP, PSPNet PPM) reduce to 1x1 before a BatchNorm,
            # which cannot normalise a single value per channel in training
            raise ConfigError(
                f"config key 'data.batch_size': {self.data.batch_size} leaves one sample per BatchNorm batch; "
                "fine-tuning needs >= 2 (the last short batch of an epoch is dropped for the same reason)"
            )
        self._validate_baseline()
        if self.weights_label is not None and not re.fullmatch(r"[A-Za-z0-9._+-]+", self.weights_label):
            raise ConfigError(
                f"config key 'weights_label' {self.weights_label!r} may only hold letters, digits and . _ + -"
            )

    def _validate_baseline(self) -> None:
        if self.baseline is None:
            if self.framework in VIT_FRAMEWORKS and self.framework != "upernet":
                raise ConfigError(f"framework {self.framework!r} needs a ViT baseline (config key 'baseline')")
            return
        spec = BASELINES[self.baseline]
        spec.check_input(self.modality, self.input_bands)  # also refuses a modality it has no model of
        if spec.family == "group_vit":
            self.vit.check_group_width()
        if spec.is_vit and self.framework not in VIT_FRAMEWORKS:
            raise ConfigError(
                f"baseline '{self.baseline}' is a ViT: config key 'framework' must be one of {list(VIT_FRAMEWORKS)}, "
                f"got {self.framework!r}"
            )
        if not spec.is_vit and (self.framework == "segmenter" or self.encoder != "resnet50"):
            raise ConfigError(
                f"baseline '{self.baseline}' is a ResNet-50: set encoder: resnet50 and an smp framework "
                f"(got {self.encoder!r} in {self.framework!r})"
            )

    # -- derived values
    @property
    def input_bands(self) -> tuple[str, ...]:
        """Band names of the model input, in order."""
        return modality_bands(self.modality, self.s2_bands)

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
        if self.weights_label:
            return self.weights_label
        if self.baseline is not None:
            label = BASELINES[self.baseline].folder_label(self.modality)
            return label if self.weights != "random" else f"random_{label}"
        return weights_label(self.weights)

    @property
    def title(self) -> str:
        """Row name in tables: a baseline's paper name (e.g. 'satMAE++ (10B)') unless a label is given."""
        if self.baseline is not None and not self.weights_label:
            title = BASELINES[self.baseline].row_title(self.modality)
            return title if self.weights != "random" else f"random {title}"
        return self.label

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


def resolved_data_config(cfg: FinetuneConfig) -> DataConfig:
    """The data section with the input of the task (one modality, the chosen S2 bands)."""
    data = copy.deepcopy(cfg.data)
    data.modalities = [cfg.modality]
    data.s2_bands = cfg.s2_bands
    from cromss.data.description import resolve_stats  # record the statistics files used (run folder)

    return resolve_stats(data)
