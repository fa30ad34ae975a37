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
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from cromss import __version__
from cromss.checkpoints import safe_torch_load
from cromss.errors import CheckpointError, ConfigError
from cromss.schema import CLASS_TABLES, DW_CLASSES, S1_MEAN, S1_STD, S2_BANDS, S2_MEAN, S2_STD, modality_bands

FORMAT_NAME = "cromss-encoder"
FORMAT_VERSION = 1
#: Key of the JSON metadata inside the safetensors header.
METADATA_KEY = "cromss"
#: Checkpoint file names looked for in a run folder's ``checkpoints/``, in order of preference.
RUN_CHECKPOINTS = ("last.ckpt", "best.ckpt")
#: Layouts whose input normalisation is the CromSS one (SSL4EO-S12 mean ± 2σ → [0, 1]).
CROMSS_LAYOUTS = (
    "cromss-export",
    "cromss-checkpoint",
    "cromss-net",
    "cromss-official-mid",
    "cromss-official-late",
)

# prefix → (layout, modality) of the CromSS layouts, most specific first
_CROMSS_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("net.encoders.s1.", "cromss-checkpoint", "s1"),
    ("net.encoders.s2.", "cromss-checkpoint", "s2"),
    ("encoders.s1.", "cromss-net", "s1"),
    ("encoders.s2.", "cromss-net", "s2"),
    ("net.model1.encoder.", "cromss-official-late", "s1"),
    ("net.model2.encoder.", "cromss-official-late", "s2"),
    ("net.encoder1.", "cromss-official-mid", "s1"),
    ("net.encoder.", "cromss-official-mid", "s2"),
)
# block counts per stage → torchvision/timm ResNet name
_RESNETS: dict[tuple[bool, tuple[int, ...]], str] = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}
_BLOCK_CONV1 = re.compile(r"layer\d+\.\d+\.$")


# ============================================================================ reading files
def _flatten(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """Nested dicts → flat ``{'a.b.c': tensor}`` (non-tensor leaves are skipped)."""
    flat: dict[str, Tensor] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(value, Tensor):
                flat[f"{prefix}{key}"] = value
            elif isinstance(value, Mapping):
                flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _plain(obj: Any) -> Any:
    """Hyper-parameters (Namespaces, tuples, paths, ...) → JSON-compatible values."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    return str(obj)


def find_run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of a ``cromss pretrain`` run folder: ``checkpoints/last.ckpt``, else ``best.ckpt``.

    ``last`` is preferred because the paper's encoders are the final-epoch weights.
    """
    folder = run_dir / "checkpoints"
    for name in RUN_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.ckpt")) if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    raise CheckpointError(
        f"{run_dir} is not a cromss pretrain run folder: no checkpoints/last.ckpt or checkpoints/best.ckpt"
        + (f" (found {[p.name for p in found]}; pass one of them directly)" if found else "")
    )


def _read_run_config(run_dir: Path | None, hyper: Any) -> dict[str, Any] | None:
    """The resolved config of a run: ``config.yaml`` of the folder, else ``hyper_parameters['config']``."""
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        from cromss.config import read_yaml

        try:
            return read_yaml(run_dir / "config.yaml")
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
    if isinstance(hyper, Mapping) and isinstance(hyper.get("config"), Mapping):
        return _plain(hyper["config"])
    if hyper is not None:
        plain = _plain(hyper)
        return plain if isinstance(plain, dict) and plain else None
    return None


def read_export(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Tensors and cromss metadata (None for a plain safetensors file) of a ``.safetensors`` file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        tensors: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as safetensors: {err}") from None
    meta = None
    if METADATA_KEY in header:
        try:
            meta = json.loads(header[METADATA_KEY])
        except json.JSONDecodeError as err:
            raise CheckpointError(
                f"{path}: corrupt cromss metadata in the safetensors header: {err}"
            ) from None
    else:
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                candidate = json.loads(sidecar.read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{sidecar}: not valid JSON: {err}") from None
            if candidate.get("format") == FORMAT_NAME:
                meta = candidate
    if meta is not None and int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses encoder format version {meta['format_version']}; this cromss ({__version__}) "
            f"reads up to version {FORMAT_VERSION} — update cromss"
        )
    return tensors, meta


def _read_source(source: str | Path) -> tuple[dict[str, Tensor], Any, dict[str, Any] | None, Path]:
    """source → (flat tensors, hyper-parameters or export metadata, run config, checkpoint path)."""
    from cromss.fetch import resolve_weights  # a published name (cromss/13b-midf) -> its cached file

    path = Path(resolve_weights(source))
    if path.is_dir():
        ckpt = find_run_checkpoint(path)
        obj = safe_torch_load(ckpt, what="weights file")
        hyper = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
        flat = (
            _flatten(obj["state_dict"]) if isinstance(obj, Mapping) and "state_dict" in obj else _flatten(obj)
        )
        return flat, hyper, _read_run_config(path, hyper), ckpt
    if not path.is_file():
        raise CheckpointError(f"weight source not found: {path} (expected a file or a run folder)")
    if path.suffix == ".safetensors":
        tensors, meta = read_export(path)
        return tensors, meta, (meta or {}).get("pretraining_config"), path
    obj = safe_torch_load(path, what="weights file")
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        hyper = obj.get("hyper_parameters")
        return _flatten(obj["state_dict"]), hyper, _read_run_config(None, hyper), path
    if isinstance(obj, Mapping):
        skip = {"optimizer", "optimizer_states", "lr_schedulers", "loops", "callbacks"}
        return _flatten({k: v for k, v in obj.items() if k not in skip}), None, None, path
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint or state dict")


# ============================================================================ layouts
def _sub_state_dict(flat: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}


def _first_conv_in_channels(state: Mapping[str, Tensor]) -> int | None:
    """Input channels of an encoder state dict: ``conv1.weight`` or the first 4-D weight."""
    if "conv1.weight" in state:
        return int(state["conv1.weight"].shape[1])
    for key, value in state.items():
        if key.endswith("weight") and value.ndim == 4:
            return int(value.shape[1])
    return None


def infer_resnet_name(state: Mapping[str, Tensor]) -> str | None:
    """'resnet18' ... 'resnet152' from the block counts of a ResNet state dict, else None."""
    counts = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(len(blocks))
    bottleneck = "layer1.0.conv3.weight" in state
    return _RESNETS.get((bottleneck, tuple(counts)))


def _third_party_candidates(flat: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """prefix → ResNet sub-state-dict for every top-level ``<prefix>conv1.weight`` in ``flat``."""
    prefixes = [k[: -len("conv1.weight")] for k in flat if k.endswith("conv1.weight")]
    prefixes = [p for p in prefixes if not _BLOCK_CONV1.search(p) and f"{p}layer1.0.conv1.weight" in flat]
    # momentum encoders (MoCo) and DINO students are training-time copies: keep the released branch
    prefixes = [p for p in prefixes if "encoder_k." not in p]
    if any("teacher" in p for p in prefixes):
        prefixes = [p for p in prefixes if "student" not in p]
    candidates = {}
    for prefix in prefixes:
        sub = _sub_state_dict(flat, prefix)
        candidates[prefix] = {k: v for k, v in sub.items() if re.match(r"(conv1|bn1|layer\d)\.", k)}
    return candidates


def _third_party_layout(prefix: str) -> str:
    if "encoder_q" in prefix:
        return "ssl4eo-moco"
    if re.search(r"backbone_\d\.$", prefix):
        return "ssl4eo-decur"
    if "backbone." in prefix:
        return "ssl4eo-dino"
    if prefix == "":
        return "resnet"
    if prefix.endswith("encoder."):
        return "smp-model"
    return f"resnet (prefix {prefix!r})"


def _expected_channels_text(modality: str | None, in_channels: int | None) -> str:
    if in_channels is not None:
        implied = _modality_for_channels(in_channels)
        return f"{in_channels}" + (f" ({implied})" if implied else "")
    return "2 (s1)" if modality == "s1" else "13 or 9 (s2)"


def _check_channels(found: int | None, modality: str | None, in_channels: int | None, where: str) -> None:
    if found is None or (modality is None and in_channels is None):
        return
    ok = found == in_channels if in_channels is not None else found in ((2,) if modality == "s1" else (13, 9))
    if not ok:
        raise CheckpointError(
            f"{where} has {found} input bands, "
            f"the model expects {_expected_channels_text(modality, in_channels)}"
        )


def _modality_for_channels(channels: int | None) -> str | None:
    return {2: "s1", 13: "s2", 9: "s2"}.get(channels) if channels is not None else None


def _bands_for(modality: str | None, channels: int | None) -> list[str] | None:
    if modality is None or channels is None:
        return None
    try:
        bands = list(modality_bands(modality, channels if modality == "s2" else 13))
    except ValueError:
        return None
    return bands if len(bands) == channels else None


def _key_list(keys: Sequence[str], limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def _num_classes(flat: Mapping[str, Tensor]) -> int | None:
    for key, value in flat.items():
        if re.search(r"(heads\.[^.]+|segmentation_head)\.0\.weight$", key) and value.ndim == 4:
            return int(value.shape[0])
    return None


def encoder_state_dict(
    source: str | Path, modality: str | None = None, in_channels: int | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The encoder weights of ``source`` in smp/timm key layout, plus a description.

    Args:
        source: a cromss ``.safetensors`` export; a ``cromss pretrain`` run folder or its Lightning
            checkpoint; an official CromSS checkpoint (``weights-cromss-13B-midFusion-epoch=199.ckpt``
            and siblings); a torchgeo / SSL4EO-S12 ResNet file (plain timm state dict, or full MoCo /
            DINO / DeCUR checkpoints).
        modality: ``'s1'`` or ``'s2'``; picks the encoder of a two-encoder file (may be left out when
            ``in_channels`` decides it).
        in_channels: input channels of the model the weights are meant for; a mismatch raises.

    Returns:
        ``(state_dict, info)`` — keys like ``conv1.weight``, ``bn1.*``, ``layer1.0.*`` (no ``fc``);
        ``info`` has ``source``, ``layout``, ``modality``, ``in_channels``, ``encoder`` (name or None),
        ``bands`` (list or None), ``config`` (pretraining config or None), ``num_classes``, ``prefix``.

    Raises:
        CheckpointError: unreadable / unsafe file, unknown layout, ambiguous or mismatched modality or
            band count.
    """
    if modality not in (None, "s1", "s2"):
        raise CheckpointError(f"modality must be 's1' or 's2', got {modality!r}")
    flat, hyper, config, ckpt_path = _read_source(source)
    where = str(source)
    if not flat:
        raise CheckpointError(f"{where} holds no tensors")

    # ---- our own export
    if isinstance(hyper, Mapping) and hyper.get("format") == FORMAT_NAME:
        meta = dict(hyper)
        if modality is not None and meta.get("modality") != modality:
            raise CheckpointError(f"{where} holds the {meta.get('modality')} encoder, not {modality}")
        found = int(meta["architecture"]["in_channels"])
        _check_channels(found, meta.get("modality"), in_channels, where)
        info = {
            "source": where,
            "layout": "cromss-export",
            "modality": meta.get("modality"),
            "in_channels": found,
            "encoder": meta["architecture"]["encoder"],
            "depth": int(meta["architecture"].get("depth", 5)),
            "bands": list(meta.get("bands") or []) or None,
            "config": meta.get("pretraining_config"),
            "num_classes": len(meta.get("classes", {}).get("names", [])) or None,
            "prefix": "",
            "metadata": meta,
        }
        return dict(flat), info

    # ---- CromSS layouts (ours and the official release)
    present = [(p, layout, m) for p, layout, m in _CROMSS_PREFIXES if any(k.startswith(p) for k in flat)]
    if present:
        available = [m for _, _, m in present]
        if modality is None:
            by_channels = _modality_for_channels(in_channels)
            if len(available) == 1:
                modality = available[0]
            elif by_channels in available:
                modality = by_channels
            else:
                raise CheckpointError(
                    f"{where} holds encoders for {available}: pass modality='s1' or 's2' (--modality)"
                )
        chosen = [(p, layout) for p, layout, m in present if m == modality]
        if not chosen:
            raise CheckpointError(f"{where} has no {modality} encoder (it holds {available})")
        prefix, layout = chosen[0]
        state = _sub_state_dict(flat, prefix)
        found = _first_conv_in_channels(state)
        _check_channels(found, modality, in_channels, f"{where} ({modality} encoder)")
        model_cfg = (config or {}).get("model", {}) if isinstance(config, Mapping) else {}
        encoder_name = model_cfg.get("encoder") if isinstance(model_cfg, Mapping) else None
        info = {
            "source": where,
            "layout": layout,
            "modality": modality,
            "in_channels": found,
            "encoder": encoder_name or infer_resnet_name(state),
            "depth": 5,
            "bands": _bands_for(modality, found),
            "config": config,
            "num_classes": _num_classes(flat),
            "prefix": prefix,
            "checkpoint": str(ckpt_path),
        }
        return state, info

    # ---- third-party ResNets (torchgeo / SSL4EO-S12 / timm / torchvision / smp models)
    candidates = _third_party_candidates(flat)
    if not candidates:
        raise CheckpointError(
            f"unknown weight layout in {where}: no CromSS, smp/timm ResNet, MoCo, DINO or DeCUR encoder "
            f"found. First keys: {_key_list(list(flat))}"
        )
    if len(candidates) > 1:
        wanted = in_channels
        matching = {
            p: s
            for p, s in candidates.items()
            if (
                _first_conv_in_channels(s) == wanted
                if wanted is not None
                else _modality_for_channels(_first_conv_in_channels(s)) == modality
            )
        }
        if len(matching) != 1:
            described = ", ".join(
                f"{p or '<root>'} ({_first_conv_in_channels(s)} bands)" for p, s in candidates.items()
            )
            raise CheckpointError(
                f"{where} holds several encoders: {described}; "
                "pass the modality or in_channels that picks one"
            )
        candidates = matching
    prefix, state = next(iter(candidates.items()))
    found = _first_conv_in_channels(state)
    _check_channels(found, modality, in_channels, where)
    info = {
        "source": where,
        "layout": _third_party_layout(prefix),
        "modality": modality or _modality_for_channels(found),
        "in_channels": found,
        "encoder": infer_resnet_name(state),
        "depth": 5,
        "bands": _bands_for(modality or _modality_for_channels(found), found),
        "config": None,
        "num_classes": None,
        "prefix": prefix,
    }
    return state, info


# ============================================================================ export
def normalization_stats(modality: str, bands: Sequence[str]) -> tuple[list[float], list[float]]:
    """SSL4EO-S12 mean and std (cromss.schema) of ``bands`` of ``modality``, in band order."""
    if modality == "s1":
        return list(S1_MEAN), list(S1_STD)
    index = [S2_BANDS.index(b) for b in bands]
    return [S2_MEAN[i] for i in index], [S2_STD[i] for i in index]


def _class_table(config: Any, num_classes: int | None) -> dict[str, Any]:
    """Class table of the pretraining labels: named in the config if possible, else DW by size."""
    candidates: list[Any] = []
    if isinstance(config, Mapping):
        data = config.get("data")
        if isinstance(data, Mapping):
            candidates += [data.get(k) for k in ("labels", "label_schema", "classes", "label_source")]
    for name in candidates:
        if (
            isinstance(name, str)
            and name in CLASS_TABLES
            and (num_classes is None or CLASS_TABLES[name].num_classes == num_classes)
        ):
            table = CLASS_TABLES[name]
            return {"name": table.name, "names": list(table.names), "colors": list(table.colors)}
    if num_classes in (None, DW_CLASSES.num_classes):  # the pretraining labels are Dynamic World
        return {"name": DW_CLASSES.name, "names": list(DW_CLASSES.names), "colors": list(DW_CLASSES.colors)}
    return {"name": "unknown", "names": [f"class_{i}" for i in range(num_classes)], "colors": []}


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


def export_encoder(source: str | Path, modality: str, out: str | Path, overwrite: bool = False) -> Path:
    """Write the ``modality`` encoder of ``source`` as a self-describing ``.safetensors`` file.

    ``source`` is a ``cromss pretrain`` run folder, its checkpoint, or an official CromSS checkpoint.
    ``out`` gets the suffix ``.safetensors`` if it has none; an existing directory receives
    ``<modality>_encoder.safetensors``. A JSON sidecar with the same metadata is written next to it
    (``out`` with suffix ``.json``). Returns the path of the ``.safetensors`` file.

    An existing export is refused (OutputError) unless ``overwrite``; both files are written atomically
    with the usual ``0666 & ~umask`` permissions (0644), so the team can read them.
    """
    from safetensors.torch import save

    from cromss.outputs import atomic_write_bytes, atomic_write_text, prepare_output_dir, refuse_existing

    if modality not in ("s1", "s2"):
        raise CheckpointError(f"modality must be 's1' or 's2', got {modality!r}")
    out = Path(out)
    if out.is_dir():
        out = out / f"{modality}_encoder.safetensors"
    elif out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    for path in (out, out.with_suffix(".json")):
        refuse_existing(path, "export", overwrite)
    prepare_output_dir(out.parent, "export folder")
    state, info = encoder_state_dict(source, modality)
    if info["layout"] not in CROMSS_LAYOUTS:
        raise CheckpointError(
            f"{source} is a {info['layout']} file, not a CromSS pretraining result; its input normalisation "
            "is not the CromSS one, so export-encoder refuses it. Use cromss.weights.load_into() to use it."
        )
    if info["encoder"] is None:
        raise CheckpointError(
            f"cannot tell the encoder architecture of {source}: no model.encoder in its config"
        )
    bands = info["bands"]
    if bands is None:
        raise CheckpointError(
            f"{source}: the {modality} encoder has {info['in_channels']} input bands, "
            f"which matches no known band list of {modality}"
        )
    encoder = _make_encoder(info["encoder"], info["in_channels"], info["depth"])
    _load_strict(encoder, state, str(source))  # proves the one-line load works before publishing
    mean, std = normalization_stats(modality, bands)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "cromss_version": __version__,
        "architecture": {
            "library": "segmentation_models_pytorch",
            "encoder": info["encoder"],
            "depth": info["depth"],
            "in_channels": info["in_channels"],
        },
        "modality": modality,
        "bands": bands,
        "normalization": {
            "method": "clip to mean ± num_std·std, then scale linearly to [0, 1]",
            "num_std": 2.0,
            "mean": mean,
            "std": std,
            "statistics": "SSL4EO-S12 (50k-sample subset)",
        },
        "classes": _class_table(info["config"], info["num_classes"]),
        "pretraining_config": _plain(info["config"]) if info["config"] is not None else None,
        "source": {"path": str(source), "layout": info["layout"], "prefix": info["prefix"]},
        "usage": "model.encoder.load_state_dict(safetensors.torch.load_file(PATH)) for an smp model "
        f"with encoder_name='{info['encoder']}', in_channels={info['in_channels']}",
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    text = json.dumps(meta, indent=2, ensure_ascii=False)
    # safetensors' save_file creates 0600 files; our atomic write gives 0666 & ~umask
    atomic_write_bytes(out, save(tensors, metadata={METADATA_KEY: text}), "encoder export")
    atomic_write_text(out.with_suffix(".json"), text + "\n", "encoder export metadata")
    return out


# ============================================================================ loading
def _check_bands(bands: Sequence[str] | None, expect_bands: Sequence[str] | None, where: str) -> None:
    if expect_bands is None:
        return
    if bands is None:
        raise CheckpointError(
            f"{where} does not record its input bands; cannot check them against {list(expect_bands)}"
        )
    if list(bands) != list(expect_bands):
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
    _check_bands(info["bands"], expect_bands, str(path))
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
) -> dict[str, Any]:
    """Fill the encoder of an smp model (or a bare smp encoder) with the weights of ``source``.

    Any source of :func:`encoder_state_dict` works; the model's input channels pick/verify the
    modality. Loading is strict; only stages an encoder built with a smaller ``encoder_depth``
    lacks may be skipped. Returns the ``info`` dict of :func:`encoder_state_dict`.
    """
    target = getattr(model, "encoder", model)
    own = target.state_dict()
    in_channels = _first_conv_in_channels(own)
    state, info = encoder_state_dict(source, modality, in_channels=in_channels)
    _check_bands(info["bands"], expect_bands, str(source))
    extra = [k for k in state if k not in own]
    if extra and getattr(target, "_depth", 5) < info.get("depth", 5):
        state = {k: v for k, v in state.items() if k in own}  # stages the shallower encoder never built
        info["skipped_keys"] = extra
    _load_strict(target, state, str(source))
    return info


def _official_to_cromss_keys(flat: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Official CromSS checkpoint keys → CromSSNet keys; returns (state, fusion)."""
    if any(k.startswith("net.model1.") for k in flat):
        rename = {
            "net.model1.encoder.": "encoders.s1.",
            "net.model1.decoder.": "decoders.s1.",
            "net.model1.segmentation_head.": "heads.s1.",
            "net.model2.encoder.": "encoders.s2.",
            "net.model2.decoder.": "decoders.s2.",
            "net.model2.segmentation_head.": "heads.s2.",
        }
        fusion = "late"
    else:
        rename = {
            "net.encoder1.": "encoders.s1.",
            "net.encoder.": "encoders.s2.",
            "net.decoder.": "decoders.shared.",
            "net.segmentation_head.": "heads.shared.",
        }
        fusion = "mid"
    state = {}
    for key, value in flat.items():
        for old, new in rename.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = value
                break
    return state, fusion


def load_cromss_net(source: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a whole pretraining network (our run folder/checkpoint or an official CromSS checkpoint).

    Returns ``(net, config)``: a :class:`cromss.models.CromSSNet` in eval mode with the weights loaded
    strictly, and the config dict it was built from (the run's resolved config, or the settings read
    off an official checkpoint).
    """
    from cromss.config import from_dict
    from cromss.models import ModelConfig, build_model

    flat, hyper, config, _ = _read_source(source)
    if any(k.startswith("net.encoders.") for k in flat):
        state = _sub_state_dict(flat, "net.")
        if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
            raise CheckpointError(
                f"{source}: no model section in its config.yaml / hyper_parameters['config']"
            )
        try:
            model_cfg = from_dict(ModelConfig, dict(config["model"]), prefix="model.")
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}") from None
    elif any(k.startswith(("net.encoder1.", "net.model1.")) for k in flat):
        state, fusion = _official_to_cromss_keys(flat)
        s2_in = _first_conv_in_channels(_sub_state_dict(state, "encoders.s2."))
        encoder_name = infer_resnet_name(_sub_state_dict(state, "encoders.s2."))
        if encoder_name is None or s2_in not in (13, 9):
            raise CheckpointError(f"{source}: official CromSS layout but not a ResNet with 13/9 S2 bands")
        model_cfg = ModelConfig(
            encoder=encoder_name,
            fusion=fusion,
            modalities=["s1", "s2"],
            s2_bands=s2_in,
            num_classes=_num_classes(state) or DW_CLASSES.num_classes,
        )
        config = {
            "model": {
                "encoder": encoder_name,
                "fusion": fusion,
                "modalities": ["s1", "s2"],
                "s2_bands": s2_in,
                "num_classes": model_cfg.num_classes,
            },
            "official_hyper_parameters": _plain(hyper),
        }
    else:
        raise CheckpointError(
            f"{source} is not a CromSS pretraining checkpoint (no net.encoders.*, net.encoder1.* or "
            f"net.model1.* keys). First keys: {_key_list(list(flat))}"
        )
    net = build_model(model_cfg)
    _load_strict(net, state, str(source))
    return net.eval(), dict(config)
