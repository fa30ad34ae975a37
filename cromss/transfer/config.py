"""Fine-tuning configuration: ``FinetuneConfig`` (top-level YAML of ``cromss finetune``) and its parts."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cromss.bands import duplicate_text, same_bands
from cromss.baselines.registry import BASELINES, VIT_FRAMEWORKS, ViTConfig
from cromss.config import from_dict, load_config, to_dict
from cromss.data import DataConfig
from cromss.errors import ConfigError
from cromss.schema import CLASS_TABLES, modality_bands
from cromss.trainer_options import validate_trainer_keys

#: data kinds fine-tuning reads (every kind with test labels: not the pretraining set 'nol')
DOWNSTREAM_KINDS: tuple[str, ...] = ("dw", "osm", "dfc2020", "generic")
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
        validate_trainer_keys(self.precision, self.accelerator, self.devices)  # Lightning's own tables
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"config key 'trainer.{key}' must be > 0 (or null for all), got {value}")
        if self.log_every_n_steps < 1:
            raise ConfigError(f"config key 'trainer.log_every_n_steps' must be >= 1, got {self.log_every_n_steps}")


@dataclass
class FinetuneConfig:
    """A downstream fine-tuning task (top-level YAML of ``cromss finetune``).

    ``modality`` (any modality name of the dataset) and its band names decide the input; they override
    ``data.modalities`` and ``data.bands`` / ``data.s2_bands``. Built-in kinds take ``s2_bands`` (13 or 9);
    ``data.kind: generic`` takes ``bands`` (a subset / order BY NAME of the modality's bands; None = all).
    The number of classes comes from the data (the built-in class table or ``dataset.yaml``);
    :func:`resolve_finetune_config` records classes, colours and bands in the run's config.yaml.
    ``weights`` is the encoder source (``random``, a pretrain run folder, an exported
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
    modality: str = "s2"
    s2_bands: int = 13
    #: band names of ``modality`` fed to the model (generic data); None = all bands of the dataset
    bands: list[str] | None = None
    #: None = the number of classes of the data (built-in table or dataset.yaml)
    num_classes: int | None = None
    #: first-conv channels of bands the encoder weights lack: None = error naming them; 'mean' | 'zero'
    init_missing: Literal["mean", "zero"] | None = None
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
        if self.data.kind not in DOWNSTREAM_KINDS:
            raise ConfigError(
                f"config key 'data.kind' must be a downstream set ({', '.join(map(repr, DOWNSTREAM_KINDS))}), "
                f"got {self.data.kind!r}"
            )
        if not self.modality or not self.modality.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"config key 'modality': {self.modality!r} is not a modality name")
        if self.data.kind != "generic" and self.modality not in ("s1", "s2"):
            raise ConfigError(
                f"config key 'modality': {self.modality!r} must be 's1' or 's2' for data.kind "
                f"'{self.data.kind}' (use data.kind 'generic' for other sensors)"
            )
        if self.bands is not None:
            twice = duplicate_text(self.bands, self.modality) if self.bands else None
            if not self.bands or twice:
                raise ConfigError(f"config key 'bands': {self.bands!r} must list distinct band names"
                                  + (f" ({twice})" if twice else ""))
            if self.data.kind != "generic" and not same_bands(self.bands, self._table_bands(), self.modality):
                raise ConfigError(
                    f"config key 'bands': {self.bands} differs from the {self.modality} bands of data.kind "
                    f"'{self.data.kind}' {list(self._table_bands())}; built-in kinds choose S2 bands with "
                    "s2_bands (13 or 9)"
                )
        classes = self.data.classes
        if classes is None and self.data.kind in CLASS_TABLES:
            classes = list(CLASS_TABLES[self.data.kind].names)
        if self.num_classes is not None and classes is not None and self.num_classes != len(classes):
            raise ConfigError(
                f"config key 'num_classes' is {self.num_classes} but data.kind '{self.data.kind}' has "
                f"{len(classes)} classes ({', '.join(classes)})"
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
    def _table_bands(self) -> tuple[str, ...]:

        return modality_bands(self.modality, self.s2_bands)

    @property
    def band_names(self) -> list[str]:
        """Band names of the model input: ``bands``, else the resolved ``data.bands``, else the S1/S2 table."""
        if self.bands is not None:
            return list(self.bands)
        if self.data.bands and self.modality in self.data.bands:
            return list(self.data.bands[self.modality])
        return list(self._table_bands())

    @property
    def input_bands(self) -> tuple[str, ...]:
        """Band names of the model input, in order (as :attr:`band_names`)."""
        return tuple(self.band_names)

    @property
    def in_channels(self) -> int:
        if self.data.kind == "generic" or self.bands is not None:
            return len(self.band_names)
        return 2 if self.modality == "s1" else self.s2_bands

    @property
    def classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.data.classes is not None:
            return len(self.data.classes)
        if self.data.kind in CLASS_TABLES:
            return CLASS_TABLES[self.data.kind].num_classes
        raise ConfigError("the number of classes is unknown until the config is resolved from the data")

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


def resolve_finetune_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """A copy of ``cfg`` whose input and classes are filled in from the data (like
    :func:`cromss.training.config.resolve_pretrain_config`).

    ``data``: modalities = [modality], the chosen S2 bands, then modalities, bands, classes and colours
    from the dataset (:func:`cromss.data.resolution.resolve_data_config`); ``bands`` = the input band
    names; ``num_classes`` = the number of classes. A band the dataset lacks, a modality it does not hold
    or a class count that differs is a ConfigError naming the key. A resolved config comes back unchanged.
    """
    from cromss.data.resolution import resolve_data_config

    cfg.validate()
    out = copy.deepcopy(cfg)
    data = out.data
    data.modalities = [cfg.modality]
    data.s2_bands = cfg.s2_bands
    given = cfg.bands or (data.bands or {}).get(cfg.modality)
    data.bands = {cfg.modality: list(given)} if given else None
    data = resolve_data_config(data)
    out.data = data
    out.bands = list(data.bands[cfg.modality]) if cfg.data.kind == "generic" else None
    if out.num_classes is not None and out.num_classes != len(data.classes):
        raise ConfigError(
            f"config key 'num_classes' is {out.num_classes} but the dataset has {len(data.classes)} classes "
            f"({', '.join(data.classes)})"
        )
    out.num_classes = len(data.classes)
    out.validate()
    return out


def resolved_data_config(cfg: FinetuneConfig) -> DataConfig:
    """The data section with the input of the task (one modality, its bands, the dataset's classes)."""
    return resolve_finetune_config(cfg).data
