"""Exporting one modality's pretrained encoder as a self-describing ``.safetensors`` file (+ JSON sidecar)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cromss import __version__
from cromss.errors import CheckpointError
from cromss.schema import CLASS_TABLES, DW_CLASSES
from cromss.textfiles import read_text
from cromss.weights.bands import normalization_stats
from cromss.weights.layouts import CROMSS_LAYOUTS, encoder_state_dict
from cromss.weights.loading import _load_strict, _make_encoder
from cromss.weights.sources import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, _plain


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
    data = config.get("data") if isinstance(config, Mapping) else None
    names = data.get("classes") if isinstance(data, Mapping) else None
    if isinstance(names, list) and names and (num_classes is None or len(names) == num_classes):
        colors = data.get("class_colors") if isinstance(data.get("class_colors"), list) else []
        return {"name": str(data.get("kind") or "dataset"), "names": [str(n) for n in names],
                "colors": [str(c) for c in colors]}
    if num_classes in (None, DW_CLASSES.num_classes):  # the pretraining labels are Dynamic World
        return {"name": DW_CLASSES.name, "names": list(DW_CLASSES.names), "colors": list(DW_CLASSES.colors)}
    return {"name": "unknown", "names": [f"class_{i}" for i in range(num_classes)], "colors": []}



def _normalization(config: Any, modality: str, bands: Sequence[str], where: str,
                   run_dir: Path | None = None) -> dict[str, Any]:
    """The input normalisation of a run: its dataset's band statistics (generic data, picked by band
    name: the file its config records, else the run's own copy in ``band_stats/``, else the dataset's
    ``stats/`` folder) or the packaged SSL4EO-S12 ones (built-in kinds)."""
    from cromss.bands import pick
    from cromss.data.run_stats import recorded_stats

    method = {"method": "clip to mean ± num_std·std, then scale linearly to [0, 1]", "num_std": 2.0}
    data = config.get("data") if isinstance(config, Mapping) else None
    if isinstance(data, Mapping) and data.get("kind") == "generic":
        explicit = (data.get("stats") or {}).get(modality) if isinstance(data.get("stats"), Mapping) else None
        candidates = [Path(explicit)] if explicit else []
        copy = recorded_stats(run_dir, modality) if run_dir is not None else None
        candidates += [copy] if copy is not None else []
        candidates.append(Path(str(data.get("root", ""))) / "stats" / f"{modality}_stats.json")
        path = next((c for c in candidates if c.is_file()), candidates[0])
        if not path.is_file():
            raise CheckpointError(
                f"{where}: the band statistics of its {modality} data ({path}) are gone; the export must record "
                f"its input normalisation (set data.stats.{modality} in the run's config.yaml)"
            )
        try:
            stats = json.loads(read_text(path, "band statistics file", CheckpointError))
            index = pick([str(b) for b in stats["bands"]], bands, modality)
            mean, std = [float(stats["mean"][i]) for i in index], [float(stats["std"][i]) for i in index]
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{where}: cannot read the band statistics {path} for {list(bands)}: {err}") from None
        return {**method, "mean": mean, "std": std, "statistics": f"dataset statistics ({path.name})"}
    mean, std = normalization_stats(modality, bands)
    return {**method, "mean": mean, "std": std, "statistics": "SSL4EO-S12 (50k-sample subset)"}


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

    from cromss.outputs import atomic_write_bytes, atomic_write_text, check_output_file, prepare_output_dir

    if not isinstance(modality, str) or not modality:
        raise CheckpointError(f"modality must be a modality name such as 's1' or 's2', got {modality!r}")
    out = Path(out)
    if out.is_dir():
        out = out / f"{modality}_encoder.safetensors"
    elif out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    for path in (out, out.with_suffix(".json")):
        check_output_file(path, "export", overwrite)
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
    source_path = Path(str(source))
    run_dir = source_path if source_path.is_dir() else (
        source_path.parent.parent if source_path.parent.name == "checkpoints" else None)
    normalization = _normalization(info["config"], modality, bands, str(source), run_dir)
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
        "normalization": normalization,
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


