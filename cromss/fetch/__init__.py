"""``cromss fetch``: the published NoLDO-S12 data and CromSS weights by name, verified, in cromss layouts.

* :data:`ARTEFACTS` (``registry``): names like ``noldo-s12/dw`` or ``cromss/13b-midf`` -> hub file.
* :func:`fetch_file` (``hub``): huggingface_hub download into its cache, sha256 check, fetch record.
* :func:`fetch`: the above, then archives unpacked atomically into ``--dest`` and checked (``unpack``).
* :func:`resolve_weights`: what the weight loaders call: a registry name -> the verified cached file;
  every other source is returned unchanged. Nothing here downloads at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cromss.fetch.hub import Fetched, FetchError, fetch_file, is_offline, read_manifest
from cromss.fetch.registry import ARTEFACTS, CITATION, NAME_PREFIXES, SSL4EO_NOTE, Artefact, known_names

__all__ = [
    "ARTEFACTS", "CITATION", "SSL4EO_NOTE", "Artefact", "FetchError", "FetchResult", "Fetched",
    "artefact", "fetch", "fetch_file", "is_offline", "known_names", "next_steps", "read_manifest",
    "resolve_weights",
]

#: Default folder for unpacked datasets (relative to the working directory).
DEFAULT_DEST = "data"


@dataclass
class FetchResult:
    """A fetched artefact: the verified file and, for datasets, the checked layout."""

    artefact: Artefact
    file: Fetched
    layout: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def artefact(name: str) -> Artefact:
    """The registry entry of ``name``; FetchError listing the known names otherwise."""
    try:
        return ARTEFACTS[name]
    except KeyError:
        raise FetchError(f"unknown artefact {name!r}; known: {', '.join(known_names())}") from None


def fetch(name: str, dest: str | Path | None = None, revision: str | None = None) -> FetchResult:
    """Fetch and verify ``name``; datasets are unpacked into ``dest`` (default ``./data``) and checked."""
    art = artefact(name)
    fetched = fetch_file(art, revision)
    if art.kind != "dataset":
        return FetchResult(art, fetched)
    from cromss.fetch.unpack import unpack

    record = read_manifest().get(art.name, {})
    layout, summary = unpack(art, Path(fetched.path), Path(dest or DEFAULT_DEST).absolute(), record)
    return FetchResult(art, fetched, layout, summary)


def resolve_weights(source: Any) -> Any:
    """A published weight name (``cromss/13b-midf``) -> path of the verified file in the hub cache.

    Existing paths, ``'random'`` and non-strings are returned unchanged, so a local file or folder that
    happens to be called like a name still wins. Fetches the file if it is not cached and the network
    is allowed; raises FetchError (one line) offline with a cold cache or for an unknown
    ``cromss/...`` name.
    """
    if not isinstance(source, str) or Path(source).exists():
        return source
    if source in ARTEFACTS and ARTEFACTS[source].kind == "weights":
        return fetch_file(ARTEFACTS[source]).path
    if source.startswith(NAME_PREFIXES):
        raise FetchError(
            f"{source!r} is neither a file nor a published weight name; known: {', '.join(known_names('weights'))}"
        )
    return source


def next_steps(result: FetchResult) -> list[str]:
    """The config lines / commands to use a fetched artefact."""
    art = result.artefact
    if art.kind == "weights":
        bands = "9" if art.name.startswith("cromss/9b") else "13"
        return [
            f"cromss finetune --config configs/finetune/dw-deeplabv3plus.yaml --encoder {art.name} --modality s2 "
            f"s2_bands={bands}",
            f"cromss export-encoder {art.name} --modality s2 s2_encoder.safetensors",
            f'cromss.weights.load_into(model, "{art.name}", modality="s2")   # or modality="s1"',
        ]
    root = result.layout
    if art.data_kind in ("dw", "osm"):
        config = "dw-deeplabv3plus" if art.data_kind == "dw" else "osm-fpn"
        return [
            f"data:\n  kind: {art.data_kind}\n  root: {root}",
            f"cromss finetune --config configs/finetune/{config}.yaml --encoder cromss/13b-midf --modality s2 "
            f"data.root={root}",
        ]
    return [
        "the NoL zip holds labels only; get the SSL4EO-S12 v1.0 GeoTIFF tree (cromss fetch --list), then:",
        f"cromss data assemble-nol --s1 SSL4EO/s1 --s2 SSL4EO/s2c --labels {root}/dw_labels --out nol_report",
        f"put (or link) SSL4EO/s1 and SSL4EO/s2c beside {root}/dw_labels, then:",
        f"data:\n  kind: nol\n  format: geotiff\n  root: {root}",
    ]
