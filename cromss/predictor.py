"""The model of a run for ``cromss predict``: network, class table, band statistics and nodata rules.

:func:`load_predictor` rebuilds the network of a pretraining run, an official CromSS checkpoint or a
fine-tuning run; :func:`run_class_table`, :func:`run_normalizers` and :func:`run_nodata_rules` answer,
from the run's resolved config, which classes it maps and how its datasets normalised and masked the
input, so that a prediction sees exactly what the run's evaluation saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cromss.errors import DataError
from cromss.schema import CLASS_TABLES, DW_CLASSES, ClassTable


class _FinetunedNet:
    """Adapter giving a fine-tuned smp model (cromss.transfer) the ``forward_modality`` interface."""

    def __init__(self, module: Any, cfg: Any) -> None:
        from types import SimpleNamespace

        self.module = module
        self.modalities = [cfg.modality]

        def band_names(modality: str) -> tuple[str, ...]:
            # the run's own input: its bands (subset and order) as its checkpoint recorded them
            if modality != cfg.modality:
                raise DataError(f"the fine-tuned model reads {cfg.modality!r}, not {modality!r}")
            try:
                return tuple(cfg.band_names)
            except ValueError:
                raise DataError(f"the fine-tuned model's input {modality!r} has no band names in its config") from None

        self.cfg = SimpleNamespace(num_classes=cfg.classes, in_channels=lambda m: cfg.in_channels,
                                   band_names=band_names)

    def to(self, device: str) -> _FinetunedNet:
        self.module.to(device)
        return self

    def eval(self) -> _FinetunedNet:
        self.module.eval()
        return self

    def forward_modality(self, modality: str, x: Any) -> Any:
        return self.module(x)


def load_predictor(checkpoint: str | Path) -> tuple[Any, ClassTable, str, dict[str, Any]]:
    """A model for :func:`predict_scene`, its class table, its kind (``'pretrain'``/``'finetune'``)
    and its resolved config dict (for a fine-tuning run, ``data.modalities`` is its one modality).

    Tries, in order: a pretraining run folder / checkpoint or an official CromSS checkpoint
    (:func:`cromss.weights.load_cromss_net`; each modality's U-Net can map), then a fine-tuning
    run folder / checkpoint (:func:`cromss.transfer.load_run`; its one modality and class table).
    The class table is the run's own (:func:`run_class_table`).
    """
    from cromss.errors import CheckpointError, ConfigError
    from cromss.weights import load_cromss_net

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint or run folder not found: {path}")
    try:
        net, config = load_cromss_net(path)
        return net, run_class_table(config, int(net.cfg.num_classes)), "pretrain", config
    except CheckpointError as pretrain_err:
        try:
            from cromss.transfer import load_run

            module, cfg, _ = load_run(path)
        except (CheckpointError, ConfigError) as finetune_err:
            raise CheckpointError(f"{path} is neither a pretraining checkpoint ({pretrain_err}) nor a "
                                  f"fine-tuning checkpoint ({finetune_err})") from None
        from cromss.config import to_dict

        config = to_dict(cfg)
        config["data"]["modalities"] = [cfg.modality]
        config["data"]["s2_bands"] = cfg.s2_bands
        return _FinetunedNet(module, cfg), run_class_table(config, int(cfg.classes)), "finetune", config


def run_class_table(config: Mapping[str, Any], num_classes: int) -> ClassTable:
    """The class names and colours of a run: ``data.classes`` / ``data.class_colors`` of its resolved
    config, else the table of its built-in ``data.kind``, else Dynamic World for a 9-class model without a
    data section (official checkpoints), else ``class_0 ..`` — always ``num_classes`` long."""
    from types import SimpleNamespace

    from cromss.data.resolution import class_table_of

    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    table = None
    if data.get("classes"):
        table = class_table_of(SimpleNamespace(kind=data.get("kind"), classes=list(data["classes"]),
                                               class_colors=data.get("class_colors")))
    elif data.get("kind") in CLASS_TABLES:
        table = CLASS_TABLES[data["kind"]]
    elif not data and num_classes == len(DW_CLASSES):
        table = DW_CLASSES
    if table is None or len(table) != num_classes:
        table = _generic_classes(num_classes)
    return table


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder of a run folder or of ``<run>/checkpoints/*.ckpt`` (None for a lone checkpoint)."""
    from cromss.data.run_stats import run_folder_of as folder_of

    return folder_of(checkpoint)


def run_normalizers(config: Mapping[str, Any], bands: Mapping[str, tuple[str, ...]],
                    overrides: Mapping[str, str | Path] | None = None, source: str = "the run",
                    run_dir: str | Path | None = None) -> dict[str, Any]:
    """The normalisers a run's data pipeline used, per modality, its statistics picked by band name.

    In order: ``overrides`` (modality -> JSON, ``--stats``); the copy the run made when it started
    (``<run_dir>/band_stats/<modality>_stats.json``, :func:`cromss.data.run_stats.record_run_stats`); the
    file its resolved config names, as the dataset core finds it (:func:`cromss.data.run_stats.stats_file`:
    ``data.s1_stats`` / ``data.s2_stats``, None = packaged; generic: ``data.stats`` or the dataset's own
    file). A file that cannot be found now is a DataError naming it and the ``--stats`` remedy.
    """
    from cromss.data.run_stats import recorded_stats, stats_file
    from cromss.transforms import ClipNormalize

    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    overrides = dict(overrides or {})
    unknown = [m for m in overrides if m not in bands]
    if unknown:
        raise DataError(f"--stats {unknown[0]}=...: the prediction reads no modality {unknown[0]!r} "
                        f"(it reads {list(bands)})")
    out = {}
    for modality, names in bands.items():
        recorded = None if run_dir is None else recorded_stats(run_dir, modality)
        if modality in overrides:
            path, key = Path(overrides[modality]), "--stats"
        elif recorded is not None:
            path, key = recorded, "the run's copy"
        else:
            try:
                path, key = stats_file(data, modality)
            except DataError as err:
                raise DataError(f"{source} normalised {modality} with the statistics of its dataset, which are "
                                f"not found now ({err}); give the same file with --stats {modality}=FILE") from None
        if path is not None and not path.is_file():
            raise DataError(
                f"{source} normalised {modality} with the band statistics {path} ({key}), which are not found "
                f"now; give the same file with --stats {modality}=FILE"
            )
        out[modality] = ClipNormalize.for_bands(modality, names, path)
    return out


def run_nodata_rules(config: Mapping[str, Any], modalities: list[str], source: str = "the run") -> dict[str, Any]:
    """Nodata rule per modality as the run's datasets applied them.

    A run records them in its resolved config (``data.nodata``: value and rule per modality). Runs made
    before that: a generic dataset's ``nodata`` of its dataset.yaml when it is still there, else (with
    one warning line, never silently) the built-in defaults; built-in kinds: S1 'any' band, others 'all'.
    """
    from cromss.data.description import NodataRule, load_description
    from cromss.errors import warn

    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    recorded = data.get("nodata") if isinstance(data.get("nodata"), Mapping) else {}
    description = None
    missing = [m for m in modalities if m not in recorded]
    if data.get("kind") == "generic" and missing:
        try:
            description = load_description(data.get("root"))
        except DataError:
            warn(f"{source} records no nodata rules for {missing} and its dataset {data.get('root')} is not "
                 "found: its files' own nodata values are masked when every band holds them (rule 'all'); "
                 "give --nodata to override", once=False)
    out = {}
    for m in modalities:
        if m in recorded and isinstance(recorded[m], Mapping):
            value = recorded[m].get("value")
            out[m] = NodataRule(None if value is None else float(value), str(recorded[m].get("rule", "all")))
        elif description is not None and m in description.modalities:
            out[m] = description.nodata_rule(m)
        elif data.get("kind") == "generic":
            out[m] = NodataRule()
        else:
            out[m] = NodataRule(rule="any" if m == "s1" else "all")
    return out


def _generic_classes(num_classes: int) -> ClassTable:
    colors = DW_CLASSES.colors
    return ClassTable("classes", tuple(f"class_{i}" for i in range(num_classes)),
                      tuple(colors[i % len(colors)] for i in range(num_classes)))
