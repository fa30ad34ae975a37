"""Reading weight sources: safetensors exports (+ JSON sidecar), run folders, Lightning / plain checkpoints."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from cromss import __version__
from cromss.checkpoints import safe_torch_load
from cromss.errors import CheckpointError, ConfigError
from cromss.textfiles import read_json

FORMAT_NAME = "cromss-encoder"
FORMAT_VERSION = 1
#: Key of the JSON metadata inside the safetensors header.
METADATA_KEY = "cromss"
#: Checkpoint file names looked for in a run folder's ``checkpoints/``, in order of preference.
RUN_CHECKPOINTS = ("last.ckpt", "best.ckpt")


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
            candidate = read_json(sidecar, "export metadata", CheckpointError)
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



def _key_list(keys: Sequence[str], limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")

