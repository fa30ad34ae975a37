"""What did the pretrained models learn? The analyses of Sec. IV-D/IV-E of the paper.

One concept per module, every public name importable from ``cromss.analysis``:

* :mod:`~cromss.analysis.divergence` — pure functions: :func:`bn_kl` (KL of batch-norm statistics,
  Fig. 8c, d), :func:`weight_kl` (discrete KL of weight histograms, Fig. 12) and :func:`neg_inv_log`;
* :mod:`~cromss.analysis.features` — :func:`pca_curve`, :func:`stage_features`, :func:`pca_curves`
  (Fig. 13) and :func:`load_encoder`, :func:`encoder_input` (the data's bands, by name, in the encoder's order);
* :mod:`~cromss.analysis.states` — checkpoints of runs: :func:`read_state_dict`, :func:`part_prefix`,
  :func:`checkpoint_series`, :func:`bn_kl_curve`, :func:`weight_kl_parts`, :func:`run_labels`;
* :mod:`~cromss.analysis.panels` — per-sample figures: :func:`mask_panels` (Fig. 11), :func:`map_panels`;
* :mod:`~cromss.analysis.plots` — curve figures: :func:`plot_bn_kl`, :func:`plot_weight_kl`, :func:`plot_pca`.

The definitions are documented in ``docs/analysis.md``.
"""

from __future__ import annotations

from cromss.analysis.divergence import (
    BN_BUFFER_SUFFIXES,
    WEIGHT_KL_EPS,
    bn_kl,
    bn_layers,
    gaussian_kl,
    neg_inv_log,
    weight_kl,
    weight_tensors,
)
from cromss.analysis.features import encoder_input, load_encoder, pca_curve, pca_curves, stage_features
from cromss.analysis.panels import (
    MASK_COLUMNS,
    image_rgb,
    label_rgb,
    map_panels,
    mask_panels,
    selection_masks,
)
from cromss.analysis.plots import plot_bn_kl, plot_pca, plot_weight_kl
from cromss.analysis.states import (
    bn_kl_curve,
    checkpoint_series,
    part_prefix,
    read_state_dict,
    run_labels,
    sub_state,
    weight_kl_parts,
)

__all__ = [
    "BN_BUFFER_SUFFIXES", "MASK_COLUMNS", "WEIGHT_KL_EPS", "bn_kl", "bn_kl_curve", "bn_layers", "checkpoint_series",
    "encoder_input", "gaussian_kl", "image_rgb", "label_rgb", "load_encoder", "map_panels", "mask_panels",
    "neg_inv_log", "part_prefix", "pca_curve", "pca_curves", "plot_bn_kl", "plot_pca", "plot_weight_kl",
    "read_state_dict", "run_labels", "selection_masks", "stage_features", "sub_state", "weight_kl",
    "weight_kl_parts", "weight_tensors",
]
