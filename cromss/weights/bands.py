"""Band names of encoder weights and first-conv input channels selected BY BAND NAME.

A pretrained encoder's first convolution has one input channel per band it was trained on. Loading it
into a model fed other bands (a 4-band RGB+NIR model, a 12-band L2A model without B10, the same bands in
another order) takes, for every band of the model, the donor's channel of the SAME NAME. Band names come
from the weights' metadata, never from channel counts:

* cromss exports: ``bands`` of the metadata;
* ``cromss pretrain`` run folders / checkpoints: the run's resolved config (``model.bands``, else the
  Sentinel-1 / Sentinel-2 tables of ``model.s2_bands``);
* official CromSS and SSL4EO-S12 checkpoints: their published band tables (:data:`KNOWN_BAND_TABLES`:
  Sentinel-1 VV, VH; Sentinel-2 L1C, 13 bands or the 9-band subset of the CromSS release).

A band of the model that the weights lack is a CheckpointError naming it, unless ``init_missing`` asks
for a documented initialisation of its channel (:data:`INIT_MISSING`):

* ``'mean'``: the mean of the donor's first-conv kernels over all its input channels (the response of
  an average band; keeps the scale of the layer's output for a band correlated with the others);
* ``'zero'``: zeros (the new band contributes nothing until fine-tuning teaches it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cromss import bands as band_ids
from cromss.errors import CheckpointError, warn

#: Initialisations of first-conv channels for bands the weights lack (``init_missing``).
INIT_MISSING: tuple[str, ...] = ("mean", "zero")
#: Band tables of weights that carry no band metadata, by (modality, input channels): the official
#: CromSS checkpoints and the SSL4EO-S12 ResNets (Sentinel-2 L1C; S1 GRD VV/VH). From cromss.bands.
KNOWN_BAND_TABLES: dict[tuple[str, int], tuple[str, ...]] = {
    ("s1", len(band_ids.S1_BANDS)): band_ids.S1_BANDS,
    ("s2", 13): band_ids.s2_band_names(13),
    ("s2", 9): band_ids.s2_band_names(9),
}


def known_bands(modality: str | None, channels: int | None) -> list[str] | None:
    """The published band table of weights of ``modality`` with ``channels`` inputs, else None."""
    if modality is None or channels is None:
        return None
    table = KNOWN_BAND_TABLES.get((modality, channels))
    return list(table) if table is not None else None


def normalization_stats(modality: str, bands: Sequence[str]) -> tuple[list[float], list[float]]:
    """SSL4EO-S12 mean and std (cromss.schema) of ``bands`` of ``modality``, in band order, BY NAME."""
    from cromss.schema import S1_MEAN, S1_STD, S2_MEAN, S2_STD

    table, mean, std = ((band_ids.S1_BANDS, S1_MEAN, S1_STD) if modality == "s1"
                        else (band_ids.S2_L1C_BANDS, S2_MEAN, S2_STD))
    try:
        index = band_ids.pick(table, bands, modality)
    except ValueError as err:
        raise CheckpointError(f"the SSL4EO-S12 {modality} statistics {err} (they hold {list(table)})") from None
    return [mean[i] for i in index], [std[i] for i in index]


def first_conv_key(state: Mapping[str, Tensor]) -> str | None:
    """Key of the first convolution's weight: ``conv1.weight``, else the first 4-D weight."""
    if "conv1.weight" in state:
        return "conv1.weight"
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4:
            return key
    return None


def select_input_channels(
    state: Mapping[str, Tensor],
    weight_bands: Sequence[str],
    model_bands: Sequence[str],
    init_missing: str | None = None,
    where: str = "the weights",
    modality: str | None = None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``state`` with its first-conv input channels rearranged for ``model_bands``, BY NAME.

    Names are compared through :mod:`cromss.bands` in ``modality``'s sensor context (``B01`` is ``B1``), so
    a spelling never drops or re-initialises a channel. Channel ``i`` of the result is the donor's channel
    of band ``model_bands[i]``. A band missing from ``weight_bands`` raises CheckpointError naming the truly
    missing bands, unless ``init_missing`` is 'mean' or 'zero' (module docstring); initialised bands are
    announced in one warning line. Returns ``(state, report)``; ``report`` lists ``weight_bands``,
    ``model_bands``, ``dropped`` (donor bands not fed) and ``initialised`` (band -> ``init_missing``).
    """
    if init_missing is not None and init_missing not in INIT_MISSING:
        raise CheckpointError(f"init_missing must be one of {list(INIT_MISSING)} or null, got {init_missing!r}")
    key = first_conv_key(state)
    if key is None:
        raise CheckpointError(f"{where}: no first convolution found to select input bands in")
    weight = state[key]
    weight_bands, model_bands = list(weight_bands), list(model_bands)
    if weight.shape[1] != len(weight_bands):
        raise CheckpointError(
            f"{where}: the first convolution has {weight.shape[1]} input channels but the weights list "
            f"{len(weight_bands)} bands {weight_bands}"
        )
    twice = band_ids.duplicate_text(model_bands, modality)
    if twice:
        raise CheckpointError(f"model bands {model_bands}: {twice}")
    found = band_ids.positions(weight_bands, model_bands, modality)
    missing = [b for b, p in zip(model_bands, found, strict=True) if p is None]
    if missing and init_missing is None:
        which = f"band {missing[0]!r} of the model is" if len(missing) == 1 else f"bands {missing} of the model are"
        raise CheckpointError(
            f"{which} not in {where} (trained on {weight_bands}); feed only bands the weights know, or set "
            f"init_missing: mean | zero to initialise {'its' if len(missing) == 1 else 'their'} first-conv "
            f"channel{'' if len(missing) == 1 else 's'}"
        )
    if missing and init_missing == "mean":
        fill = weight.mean(dim=1)
    else:
        fill = torch.zeros_like(weight[:, 0])
    channels = [weight[:, p] if p is not None else fill for p in found]
    out = dict(state)
    out[key] = torch.stack(channels, dim=1).contiguous()
    used = {p for p in found if p is not None}
    report = {
        "weight_bands": weight_bands, "model_bands": model_bands,
        "dropped": [b for i, b in enumerate(weight_bands) if i not in used],
        "initialised": {b: init_missing for b in missing},
    }
    if missing:
        warn(f"{modality or 'input'}: initialised the first-conv channel(s) of band(s) {missing} with "
             f"init_missing '{init_missing}' ({where} was trained on {weight_bands})")
    return out, report
