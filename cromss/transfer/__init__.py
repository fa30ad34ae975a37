"""Transfer learning (paper Sec. IV-A): pretrained encoders in segmentation frameworks.

ResNet encoders go into smp frameworks; the comparison baselines (``cromss.baselines``: ViT-Large
scaleMAE / satMAE / satMAE++ / DOFA in UPerNet or Segmenter, Satlas ResNet-50) are chosen with the
config key ``baseline``.

One fine-tuning run = one encoder source x frozen/fine-tuned x one seed, in its own folder::

    <output_dir>/<name>/<encoder-label>/<frozen|finetuned>/seed<k>/
        config.yaml      resolved FinetuneConfig of this run
        metrics.json     test-set metrics of the best-validation checkpoint (incl. confusion matrix)
        checkpoints/     best.ckpt (highest validation mIoU) and last.ckpt
        logs/            Lightning CSV logs (losses, validation metrics per epoch)

and ``<output_dir>/<name>/<encoder-label>/<frozen|finetuned>/aggregate.{json,csv}`` holds mean +/- std
over the seeds. Validation is a seeded hold-out of the TRAIN split (``data.val_fraction``); the test
split is only used once, with the best-validation checkpoint.

Package layout (one concept per module): ``config`` (FinetuneConfig), ``models`` (smp models, encoder
weights), ``module`` (the Lightning module, evaluation of a module), ``results`` (JSON, aggregates),
``run`` (one run, repeats over seeds), ``tables`` (the paper's tables), ``evaluate`` (evaluate a finished
run), ``compare`` (several encoder sources side by side). Every name is re-exported here.
"""

from __future__ import annotations

from cromss.transfer.compare import run_comparison
from cromss.transfer.config import (
    FRAMEWORKS,
    METRIC_TITLES,
    MODE_TITLES,
    MODES,
    FinetuneConfig,
    TrainerConfig,
    load_finetune_config,
    resolve_finetune_config,
    resolved_data_config,
    weights_label,
)
from cromss.transfer.evaluate import evaluate_run, format_metrics, load_run
from cromss.transfer.models import (
    build_model,
    build_segmentation_model,
    load_encoder_weights,
    load_source_weights,
    pad_to_multiple,
)
from cromss.transfer.module import build_module, evaluate_model, finetune_module_class
from cromss.transfer.results import aggregate, mean_std, write_aggregate, write_json
from cromss.transfer.run import finetune, finetune_once
from cromss.transfer.tables import (
    collect_table,
    format_cell,
    per_class_rows,
    render_markdown,
    table_rows,
    write_table,
)

__all__ = [
    "FRAMEWORKS", "METRIC_TITLES", "MODES", "MODE_TITLES", "FinetuneConfig", "TrainerConfig",
    "aggregate", "build_model", "build_module", "build_segmentation_model", "collect_table", "evaluate_model",
    "evaluate_run", "finetune", "finetune_module_class", "finetune_once", "format_cell", "format_metrics",
    "load_encoder_weights", "load_finetune_config", "load_source_weights", "load_run", "mean_std",
    "pad_to_multiple", "per_class_rows", "render_markdown", "resolve_finetune_config", "resolved_data_config",
    "run_comparison", "table_rows", "weights_label",
    "write_aggregate", "write_json", "write_table",
]
