"""Config sections of ``cromss pretrain``: the top-level :class:`PretrainConfig` and its parts.

One YAML file describes one pretraining run (one row of the paper's Tables V/VI); see
``configs/pretrain/`` and docs/pretraining.md. Loading is strict (``cromss.config.load_config``):
unknown keys and impossible values raise :class:`~cromss.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cromss.data import DataConfig
from cromss.errors import ConfigError
from cromss.models import ModelConfig
from cromss.schema import CLASS_TABLES
from cromss.trainer_options import validate_trainer_keys

SMOOTHING_MODES: tuple[str, ...] = ("none", "uniform", "spatial_temporal")
DICE_MODES: tuple[str, ...] = ("paper", "per_class", "none")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw")
SCHEDULERS: tuple[str, ...] = ("plateau", "none")


@dataclass
class MethodConfig:
    """YAML section ``method:`` — the CromSS switches and hyperparameters (paper Sec. III, IV-A).

    ``selection``: cross-modal sample selection (eqs. 8-12) on/off (off = every labelled pixel has
    weight 1: the 'midF'/'lateF' rows of Table V). ``consistency``: the KL terms of eq. (1)
    (multimodal only). ``smoothing``: 'none' (one-hot), 'uniform' (eq. 13 with mu forced to 0) or
    'spatial_temporal' (eq. 13-15). ``alpha0``/``rampup_epochs``: final selection ratio and ramp
    length n_s. ``mu``/``beta``/``sigma``: eq. (13) weights and Gaussian std in pixels.
    ``enhance``: cross-modal enhancement of eq. (10). ``sync_selection``: compute the eq. (11)
    thresholds over all ranks' batches (None = on when the world size is > 1).
    ``dice``: 'paper' (eq. 6), 'per_class' (the authors' code) or 'none' (CE only).
    """

    selection: bool = True
    consistency: bool = True
    smoothing: str = "spatial_temporal"
    alpha0: float = 0.5
    rampup_epochs: float = 80.0
    mu: float = 0.15
    beta: float = 0.05
    sigma: float = 3.0
    enhance: bool = True
    consistency_weight: float = 1.0
    sync_selection: bool | None = None
    dice: str = "paper"

    def validate(self) -> None:
        """Raise ConfigError naming the ``method.*`` key of an impossible value."""
        if self.smoothing not in SMOOTHING_MODES:
            raise ConfigError(f"config key 'method.smoothing': {self.smoothing!r} is not one of {list(SMOOTHING_MODES)}")
        if self.dice not in DICE_MODES:
            raise ConfigError(f"config key 'method.dice': {self.dice!r} is not one of {list(DICE_MODES)}")
        if not 0.0 < self.alpha0 <= 1.0:
            raise ConfigError(f"config key 'method.alpha0': {self.alpha0} must be in (0, 1]")
        if self.rampup_epochs < 0:
            raise ConfigError(f"config key 'method.rampup_epochs': {self.rampup_epochs} must be >= 0")
        for key in ("mu", "beta"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key 'method.{key}': {getattr(self, key)} must be in [0, 1]")
        if self.beta + self.effective_mu > 1.0:
            raise ConfigError(
                f"config keys 'method.beta' + 'method.mu': {self.beta} + {self.mu} > 1 "
                "(eq. 13 would give the one-hot label a negative weight)"
            )
        if self.sigma <= 0:
            raise ConfigError(f"config key 'method.sigma': {self.sigma} must be > 0 (pixels)")
        if self.consistency_weight < 0:
            raise ConfigError(f"config key 'method.consistency_weight': {self.consistency_weight} must be >= 0")

    @property
    def effective_mu(self) -> float:
        """mu as used: 0 unless smoothing is 'spatial_temporal'."""
        return self.mu if self.smoothing == "spatial_temporal" else 0.0

    @property
    def effective_beta(self) -> float:
        """beta as used: 0 when smoothing is 'none'."""
        return 0.0 if self.smoothing == "none" else self.beta


@dataclass
class OptimConfig:
    """YAML section ``optim:`` — Adam with ReduceLROnPlateau on the validation loss (paper IV-A)."""

    optimizer: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 1e-8
    scheduler: str = "plateau"
    factor: float = 0.5
    patience: int = 30

    def validate(self) -> None:
        """Raise ConfigError naming the ``optim.*`` key of an impossible value."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"config key 'optim.optimizer': {self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"config key 'optim.scheduler': {self.scheduler!r} is not one of {list(SCHEDULERS)}")
        if self.lr <= 0:
            raise ConfigError(f"config key 'optim.lr': {self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ConfigError(f"config key 'optim.weight_decay': {self.weight_decay} must be >= 0")
        if not 0.0 < self.factor < 1.0:
            raise ConfigError(f"config key 'optim.factor': {self.factor} must be in (0, 1)")
        if self.patience < 0:
            raise ConfigError(f"config key 'optim.patience': {self.patience} must be >= 0")


@dataclass
class TrainerConfig:
    """YAML section ``trainer:`` — passed to ``lightning.Trainer`` (see docs/pretraining.md).

    ``precision`` 'auto' = 'bf16-mixed' on a GPU that supports it ('16-mixed' otherwise) and
    '32-true' on CPU. ``channels_last`` None = on for GPUs. ``devices``/``num_nodes``/``strategy``
    as Lightning ('auto' strategy = DDP when more than one device). ``limit_*_batches``: an int
    (batches) or a float (fraction) or null (all). ``checkpoint_every_n_epochs`` k: also keep
    ``checkpoints/epoch=N.ckpt`` every k epochs (N = Lightning's 0-based epoch: k=10 keeps epoch=9,
    epoch=19, ...), e.g. for ``cromss analyze bn-kl`` curves over epochs; None = only last/best.ckpt.
    ``last_checkpoint_every_n_epochs`` k: rewrite ``last.ckpt`` every k epochs (and always after the
    final one); ``last_checkpoint_every_n_steps`` n: also every n optimizer steps, for exact mid-epoch
    resume with ``data.format: stream``. ``best.ckpt`` is written only when ``val/loss`` improves.
    """

    max_epochs: int = 200
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    log_every_n_steps: int = 50
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    check_val_every_n_epoch: int = 1
    num_sanity_val_steps: int = 2
    deterministic: bool | str = False
    gradient_clip_val: float | None = None
    progress_bar: bool = True
    checkpoint_every_n_epochs: int | None = None
    last_checkpoint_every_n_epochs: int = 1
    last_checkpoint_every_n_steps: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the ``trainer.*`` key of an impossible value."""
        if self.max_epochs < 1:
            raise ConfigError(f"config key 'trainer.max_epochs': {self.max_epochs} must be >= 1")
        if self.num_nodes < 1:
            raise ConfigError(f"config key 'trainer.num_nodes': {self.num_nodes} must be >= 1")
        # precision / accelerator / strategy against Lightning's own tables, devices' form
        validate_trainer_keys(self.precision, self.accelerator, self.devices, self.strategy, extra_precisions=("auto",))
        if self.check_val_every_n_epoch < 1:
            raise ConfigError(
                f"config key 'trainer.check_val_every_n_epoch': {self.check_val_every_n_epoch} must be >= 1"
            )
        if self.log_every_n_steps < 1:
            raise ConfigError(f"config key 'trainer.log_every_n_steps': {self.log_every_n_steps} must be >= 1")
        for key in ("limit_train_batches", "limit_val_batches"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"config key 'trainer.{key}': {value} must be > 0 or null")
        if isinstance(self.deterministic, str) and self.deterministic != "warn":
            raise ConfigError(f"config key 'trainer.deterministic': {self.deterministic!r} must be true, false or 'warn'")
        if self.checkpoint_every_n_epochs is not None and self.checkpoint_every_n_epochs < 1:
            raise ConfigError(
                f"config key 'trainer.checkpoint_every_n_epochs': {self.checkpoint_every_n_epochs} must be "
                ">= 1 or null (no periodic checkpoints)"
            )
        if self.last_checkpoint_every_n_epochs < 1:
            raise ConfigError(f"config key 'trainer.last_checkpoint_every_n_epochs': "
                              f"{self.last_checkpoint_every_n_epochs} must be >= 1")
        if self.last_checkpoint_every_n_steps is not None and self.last_checkpoint_every_n_steps < 1:
            raise ConfigError(f"config key 'trainer.last_checkpoint_every_n_steps': "
                              f"{self.last_checkpoint_every_n_steps} must be >= 1 or null")
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise ConfigError(f"config key 'trainer.gradient_clip_val': {self.gradient_clip_val} must be > 0 or null")


@dataclass
class PretrainConfig:
    """Top-level config of ``cromss pretrain``: one pretraining run.

    The run folder is ``<output_dir>/<name>`` (a fixed path, so that every DDP rank and a later
    ``--resume`` find the same folder; pick a new ``name`` for a new run).
    """

    name: str = "cromss-midf-13b"
    seed: int = 0
    output_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> None:
        """Cross-section checks; raise ConfigError naming the keys that disagree."""
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"config key 'name': {self.name!r} must be a plain folder name (no '/')")
        table = CLASS_TABLES.get(self.data.kind) if self.data.classes is None else None
        num_classes = self.model.num_classes
        if table is not None and num_classes is not None and num_classes != len(table):
            raise ConfigError(
                f"config key 'model.num_classes': {num_classes} does not match the "
                f"{len(table)} classes of data.kind '{self.data.kind}' ({table.name})"
            )
        if self.data.classes is not None and num_classes is not None and num_classes != len(self.data.classes):
            raise ConfigError(
                f"config key 'model.num_classes': {num_classes} does not match the {len(self.data.classes)} "
                f"classes of the dataset ({', '.join(self.data.classes)})"
            )
        model_modalities = self.model.modalities or self.data.modalities
        if model_modalities is not None:
            if self.model.fusion == "single" and len(model_modalities) != 1:
                raise ConfigError(
                    f"config key 'model.fusion': 'single' needs exactly one modality, got {model_modalities}"
                )
            if self.model.fusion != "single" and len(model_modalities) == 1:
                raise ConfigError(
                    f"config key 'model.fusion': {self.model.fusion!r} needs two or more modalities, got "
                    f"{model_modalities}; use fusion 'single' for one"
                )
        if (self.data.modalities is not None and self.model.modalities is not None
                and sorted(self.data.modalities) != sorted(self.model.modalities)):
            raise ConfigError(
                f"config keys 'data.modalities' {self.data.modalities} and 'model.modalities' "
                f"{self.model.modalities} must list the same modalities"
            )
        if "s2" in self.model.modality_list() and self.data.s2_bands != self.model.s2_bands:
            raise ConfigError(
                f"config keys 'data.s2_bands' ({self.data.s2_bands}) and 'model.s2_bands' "
                f"({self.model.s2_bands}) must agree"
            )


def resolve_pretrain_config(cfg: PretrainConfig) -> PretrainConfig:
    """A copy of ``cfg`` whose data and model facts are filled in from the dataset.

    ``data``: modalities, bands and classes (:func:`cromss.data.resolution.resolve_data_config`).
    ``model``: modalities = the data's, ``num_classes`` = the number of classes, ``bands`` = the data's
    band names where they differ from the Sentinel-1/2 tables. Set by hand, they must agree (ConfigError).
    A resolved config is returned unchanged without reading the dataset.
    """
    from dataclasses import replace

    from cromss.bands import modality_bands, same_bands
    from cromss.data.resolution import resolve_data_config

    data = resolve_data_config(cfg.data)
    model = cfg.model
    modalities = list(model.modalities) if model.modalities is not None else list(data.modalities)
    if sorted(modalities) != sorted(data.modalities):
        raise ConfigError(
            f"config keys 'data.modalities' {data.modalities} and 'model.modalities' {modalities} must list "
            "the same modalities"
        )
    num_classes = len(data.classes)
    if model.num_classes is not None and model.num_classes != num_classes:
        raise ConfigError(
            f"config key 'model.num_classes': {model.num_classes} does not match the {num_classes} classes of "
            f"the dataset ({', '.join(data.classes)})"
        )

    def table_bands(modality: str) -> list[str] | None:
        try:
            return list(modality_bands(modality, model.s2_bands))
        except ValueError:
            return None

    def differs(given: list[str] | None, fed: list[str], modality: str) -> bool:
        return given is None or not same_bands(given, fed, modality)

    bands = model.bands
    if bands is None and any(data.bands[m] != table_bands(m) for m in modalities):
        # the data's own spelling is recorded (B01 where its files say B01): the tables are not used
        bands = {m: list(data.bands[m]) for m in modalities}
    for modality in modalities:
        given = (bands or {}).get(modality) or table_bands(modality)
        if differs(given, data.bands[modality], modality):
            raise ConfigError(
                f"config key 'model.bands.{modality}': {given} differs from the bands fed by the data "
                f"{data.bands[modality]}"
            )
    model = replace(model, modalities=modalities, num_classes=num_classes, bands=bands)
    out = replace(cfg, data=data, model=model)
    out.validate()
    return out
