"""Panels of the worst-ranked samples of an audit (image, label, score, reference) and the report section.

:func:`draw_panels` writes one PNG per sample into the audit folder (at audit time, so the report
needs neither the data nor the model); :func:`audit_section` is the HTML section ``cromss report``
adds when a run folder holds an audit (``RUN/audit/``) or ``--audit DIR`` names one.
"""

from __future__ import annotations

import html
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cromss.schema import IGNORE_INDEX

#: Band names tried, in order, for a true-colour composite (R, G, B).
_RGB = (("B4", "B3", "B2"), ("B04", "B03", "B02"), ("red", "green", "blue"), ("R", "G", "B"))


def _composite(image: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """``[H, W, 3]`` in [0, 1] from a normalised ``[C, H, W]`` image: RGB bands by name, else the first
    three bands, else the first band in grey."""
    index = {str(b).lower(): i for i, b in enumerate(bands)}
    for names in _RGB:
        if all(n.lower() in index for n in names):
            return np.clip(np.stack([image[index[n.lower()]] for n in names], axis=-1), 0, 1)
    if image.shape[0] >= 3:
        return np.clip(np.moveaxis(image[:3], 0, -1), 0, 1)
    return np.clip(np.repeat(image[:1], 3, axis=0).transpose(1, 2, 0), 0, 1)


def _label_rgb(label: np.ndarray, colors: Sequence[str]) -> np.ndarray:
    from matplotlib.colors import to_rgb

    table = np.array([to_rgb(c) for c in colors] + [(1.0, 1.0, 1.0)])
    index = np.where((label >= 0) & (label < len(colors)), label, len(colors))
    return table[index]


def draw_panels(folder: Path, readers: Sequence[Any], infos: Sequence[Any], ranks: Sequence[int], audit_dir: Path,
                classes: Any, cfg: Any, modalities: Sequence[str]) -> list[Path]:
    """One PNG per sample of ``infos`` (read again from its split), named ``rank<NNN>_<sample>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio

    by_split = {reader.split: reader for reader in readers}
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for info, rank in zip(infos, ranks):
        sample = by_split[info.split].read(info.entry, info.season, info.index)
        modality = "s2" if "s2" in sample.inputs else next(iter(sample.inputs))
        bands = _band_names(cfg, modality, sample.inputs[modality].shape[0])
        label = sample.label.numpy()
        panels = [(f"{modality} image", _composite(sample.inputs[modality].numpy(), bands), None),
                  ("label", _label_rgb(label, classes.colors), None)]
        score_file = audit_dir / "scores" / f"{info.name}.tif"
        if score_file.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with rasterio.open(score_file) as src:
                    score = src.read(1)
            panels.append(("score (1 − W_l)", score, "magma"))
        if sample.reference is not None:
            reference = sample.reference.numpy()
            panels.append(("reference", _label_rgb(reference, classes.colors), None))
            wrong = (label != IGNORE_INDEX) & (reference != IGNORE_INDEX) & (label != reference)
            panels.append(("label ≠ reference", wrong.astype(float), "gray"))
        fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.7))
        for ax, (title, data, cmap) in zip(np.atleast_1d(axes), panels):
            if cmap is None:
                ax.imshow(data, interpolation="nearest")
            else:
                ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        when = f" @ {info.time}" if info.time else ""
        fig.suptitle(f"#{rank}: {info.location}{when} ({info.split})", fontsize=9)
        fig.tight_layout()
        path = folder / f"rank{rank:03d}_{info.name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def _band_names(cfg: Any, modality: str, count: int) -> list[str]:
    bands = (cfg.data.bands or {}).get(modality) or (cfg.model.bands or {}).get(modality)
    if bands:
        return list(bands)
    try:
        from cromss.schema import modality_bands

        names = list(modality_bands(modality, count))
    except (ValueError, KeyError):
        names = []
    return names if len(names) == count else [str(i) for i in range(count)]


# ----------------------------------------------------------------------------- report section
def find_audit(run: Path) -> Path | None:
    """The audit folder of a run folder (``RUN/audit/audit.json``), or None."""
    candidate = run / "audit"
    return candidate if (candidate / "audit.json").is_file() else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


def audit_section(audit_dir: Path, max_rows: int = 20) -> str:
    """HTML of one audit: settings and totals, the reference metrics, the top of the ranked table, the panels."""
    import base64
    import csv

    from cromss.errors import DataError

    summary_file = audit_dir / "audit.json"
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read the audit summary {summary_file}: {err}") from None
    settings = summary.get("settings", {})
    parts = [f'<section class="run"><h2>label audit: {html.escape(audit_dir.name)}</h2>',
             f'<p class="muted">{html.escape(str(audit_dir.resolve()))} · run {html.escape(str(summary.get("run")))}</p>',
             "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in [
                 ("samples", summary.get("samples")), ("labelled pixels", summary.get("labelled_pixels")),
                 ("flagged pixels", summary.get("flagged_pixels")),
                 ("flagged fraction", summary.get("flagged_fraction")),
                 ("estimated wrong pixels", summary.get("estimated_wrong_pixels")),
                 ("thresholds", settings.get("thresholds")), ("combined score", settings.get("combine")),
                 ("flag: combined score ≥", settings.get("flag")), ("alpha", settings.get("alpha"))]) + "</table>"]
    reference = summary.get("reference")
    if reference:
        parts.append(f"<h3>against the reference label ({_fmt(reference.get('wrong'))} of "
                     f"{_fmt(reference.get('pixels'))} labelled pixels wrong, "
                     f"{_fmt(reference.get('wrong_fraction'))})</h3>")
        rows = []
        for name, metrics in reference.get("scores", {}).items():
            top = metrics.get("precision_at") or {}
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(metrics.get('auc'))}</td>"
                        f"<td>{_fmt(metrics.get('ap'))}</td>" + "".join(f"<td>{_fmt(v)}</td>" for v in top.values())
                        + "</tr>")
        heads = next(iter(reference.get("scores", {}).values()), {}).get("precision_at", {})
        parts.append("<table><tr><th>score</th><th>ROC-AUC</th><th>AP</th>"
                     + "".join(f"<th>precision @ top {html.escape(k)}</th>" for k in heads) + "</tr>"
                     + "".join(rows) + "</table>")
        flagged = reference.get("flagged") or {}
        parts.append(f"<p>flagged pixels: precision {_fmt(flagged.get('precision'))}, recall "
                     f"{_fmt(flagged.get('recall'))}, F1 {_fmt(flagged.get('f1'))}</p>")
    table = audit_dir / "ranking.csv"
    if table.is_file():
        with table.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            body = [row for _, row in zip(range(max_rows), reader)]
        keep = [i for i, h in enumerate(header) if h != "score_map"]
        parts.append(f"<h3>samples to relabel first (top {len(body)} of ranking.csv)</h3><table><tr>"
                     + "".join(f"<th>{html.escape(header[i])}</th>" for i in keep) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(row[i])}</td>" for i in keep) + "</tr>"
                               for row in body) + "</table>")
    panels = sorted((audit_dir / "panels").glob("*.png")) if (audit_dir / "panels").is_dir() else []
    if panels:
        parts.append("<h3>worst samples</h3><div class='grid'>" + "".join(
            f'<figure><img alt="{html.escape(p.name)}" src="data:image/png;base64,'
            f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
            for p in panels) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)
