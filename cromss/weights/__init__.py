"""Publishable encoder weights: export, safe loading, and every encoder source behind one entry point.

* :func:`export_encoder` writes one modality's pretrained encoder as ``.safetensors`` (keys exactly
  as ``smp_model.encoder.state_dict()``) with self-describing metadata (bands, normalisation,
  architecture, classes, pretraining config) in the file and in a JSON sidecar.
* :func:`encoder_state_dict` reads an encoder from any supported source — our export, a
  ``cromss pretrain`` run folder or checkpoint, the official CromSS checkpoints, torchgeo /
  SSL4EO-S12 ResNet weights (MoCo, DINO, DeCUR) — and returns it in smp/timm ResNet key layout.
* :func:`load` gives a ready smp encoder plus its input transform; :func:`load_into` fills the
  encoder of any smp model (U-Net, FPN, PSPNet, DeepLabV3+, ...) in one call;
  :func:`load_cromss_net` rebuilds a whole pretraining network (ours or the official one).

Pickles are never trusted: ``.ckpt``/``.pth`` files are read with ``torch.load(weights_only=True)``
with the allow-list of :func:`cromss.checkpoints.trusted_globals` (``argparse.Namespace``, stored by
the official checkpoints, and Lightning's ``AttributeDict``).

Package layout (one concept per module): ``sources`` (reading files, run folders, exports), ``layouts``
(finding the encoder in each known layout, :func:`encoder_state_dict`), ``bands`` (band tables of known
weights, first-conv channels selected by band name), ``loading`` (:func:`load`, :func:`load_into`),
``export`` (:func:`export_encoder`), ``networks`` (:func:`load_cromss_net`). Every name is importable
from ``cromss.weights``.
"""

from __future__ import annotations

from cromss.weights.bands import (
    INIT_MISSING,
    KNOWN_BAND_TABLES,
    known_bands,
    normalization_stats,
    select_input_channels,
)
from cromss.weights.export import export_encoder
from cromss.weights.layouts import CROMSS_LAYOUTS, encoder_state_dict, infer_resnet_name
from cromss.weights.loading import load, load_into
from cromss.weights.networks import load_cromss_net
from cromss.weights.sources import (
    FORMAT_NAME,
    FORMAT_VERSION,
    METADATA_KEY,
    RUN_CHECKPOINTS,
    _read_source,
    find_run_checkpoint,
    read_export,
)

__all__ = [
    "CROMSS_LAYOUTS", "FORMAT_NAME", "FORMAT_VERSION", "INIT_MISSING", "KNOWN_BAND_TABLES", "METADATA_KEY",
    "RUN_CHECKPOINTS", "_read_source", "encoder_state_dict", "export_encoder", "find_run_checkpoint",
    "infer_resnet_name", "known_bands", "load", "load_cromss_net", "load_into", "normalization_stats",
    "read_export", "select_input_channels",
]
