"""Loading encoders: a ready smp encoder (:func:`load`) or the encoder of any smp model (:func:`load_into`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cromss.errors import CheckpointError
from cromss.weights.bands import normalization_stats
from cromss.weights.layouts import CROMSS_LAYOUTS, _first_conv_in_channels, encoder_state_dict
from cromss.weights.sources import _key_list


def _make_encoder(name: str, in_channels: int, depth: int = 5) -> nn.Module:
    import segmentation_models_pytorch as smp

    try:
        return smp.encoders.get_encoder(name, in_channels=in_channels, depth=depth, weights=None)
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f"cannot build smp encoder {name!r} with {in_channels} input bands: {err}"
        ) from None


def _load_strict(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a readable CheckpointError on mismatch."""
    own = module.state_dict()
    state = dict(state)
    for key in own:  # old checkpoints may lack BN counters; they carry no learned information
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing in the file: {_key_list(missing, 4)}")
        if unexpected:
            parts.append(f"not in the model: {_key_list(unexpected, 4)}")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        raise CheckpointError(f"weights of {where} do not fit the encoder — " + " | ".join(parts))
    module.load_state_dict(state, strict=True)



def _check_bands(bands: Sequence[str] | None, expect_bands: Sequence[str] | None, where: str,
                 modality: str | None = None) -> None:
    from cromss.bands import same_bands

    if expect_bands is None:
        return
    if bands is None:
        raise CheckpointError(
            f"{where} does not record its input bands; cannot check them against {list(expect_bands)}"
        )
    if not same_bands(bands, expect_bands, modality):
        raise CheckpointError(
            f"band mismatch: {where} was trained on bands {list(bands)}, but {list(expect_bands)} were "
            "requested (same bands in the same order are required)"
        )


def load(
    path: str | Path, expect_bands: Sequence[str] | None = None, modality: str | None = None
) -> tuple[nn.Module, Any]:
    """A ready smp encoder (eval mode) with CromSS weights, and its input transform.

    ``path`` is a cromss export (or a run folder / CromSS checkpoint with ``modality``). The transform
    is ``cromss.transforms.ClipNormalize`` for the file's bands: raw S1 dB / S2 L1C values → [0, 1].
    ``expect_bands`` (e.g. ``cromss.schema.S2_BANDS``) must equal the file's band list, else
    CheckpointError naming both.
    """
    from cromss.transforms import ClipNormalize

    state, info = encoder_state_dict(path, modality)
    if info["layout"] not in CROMSS_LAYOUTS:
        raise CheckpointError(
            f"{path} is a {info['layout']} file whose input normalisation cromss does not know; "
            "use cromss.weights.load_into(model, path) and that model's own preprocessing"
        )
    _check_bands(info["bands"], expect_bands, str(path), info.get("modality"))
    if info["encoder"] is None or info["bands"] is None:
        raise CheckpointError(f"{path}: cannot tell the encoder architecture or band list")
    encoder = _make_encoder(info["encoder"], info["in_channels"], info.get("depth", 5))
    _load_strict(encoder, state, str(path))
    meta_norm = (info.get("metadata") or {}).get("normalization")
    if meta_norm:
        transform = ClipNormalize(meta_norm["mean"], meta_norm["std"], meta_norm.get("num_std", 2.0))
    else:
        transform = ClipNormalize(*normalization_stats(info["modality"], info["bands"]))
    return encoder.eval(), transform


def load_into(
    model: nn.Module,
    source: str | Path,
    modality: str | None = None,
    expect_bands: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
    init_missing: str | None = None,
) -> dict[str, Any]:
    """Fill the encoder of an smp model (or a bare smp encoder) with the weights of ``source``.

    Any source of :func:`encoder_state_dict` works; the model's input channels pick/verify the
    modality. ``bands`` (the band names the model is fed) selects the first-conv channels BY NAME from
    the weights' bands (any subset / order; a band they lack raises unless ``init_missing`` is 'mean' or
    'zero', see :mod:`cromss.weights.bands`). ``expect_bands`` instead requires the weights' band list
    to be exactly that. Loading is strict; only stages an encoder built with a smaller ``encoder_depth``
    lacks may be skipped. Returns the ``info`` dict of :func:`encoder_state_dict`.
    """
    target = getattr(model, "encoder", model)
    own = target.state_dict()
    in_channels = _first_conv_in_channels(own)
    if bands is not None and in_channels is not None and len(bands) != in_channels:
        raise CheckpointError(f"bands {list(bands)} are {len(bands)} but the model has {in_channels} input channels")
    state, info = encoder_state_dict(source, modality, in_channels=in_channels, bands=bands, init_missing=init_missing)
    _check_bands(info["bands"], expect_bands, str(source), info.get("modality"))
    extra = [k for k in state if k not in own]
    if extra and getattr(target, "_depth", 5) < info.get("depth", 5):
        state = {k: v for k, v in state.items() if k in own}  # stages the shallower encoder never built
        info["skipped_keys"] = extra
    _load_strict(target, state, str(source))
    return info
