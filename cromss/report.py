"""``cromss report``: one self-contained HTML page summarising pretraining / fine-tuning runs.

Per run folder: the resolved ``config.yaml``, ``summary.json`` / ``metrics.json`` values, loss and
metric curves and the alpha/gamma schedules from Lightning's ``metrics.csv`` (logged values, or the
ramps recomputed from the config when they were not logged), and every PNG under ``RUN/analysis/``
(mask panels, maps, KL and PCA figures written by ``cromss analyze``). Optionally a metric table
(``cromss table`` markdown) and extra images. Figures are drawn with matplotlib (Agg) and embedded
as base64 PNG, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cromss.errors import DataError
from cromss.textfiles import read_json, read_text

#: Series drawn per curve panel at most (per-class metrics can add hundreds of columns).
MAX_SERIES: int = 10

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2733}
header{background:#1f3b57;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{padding:16px 32px;max-width:1400px}
section.run{background:#fff;border-radius:8px;box-shadow:0 1px 3px #0002;padding:16px 20px;margin:18px 0}
h2{margin:0 0 8px;font-size:19px;color:#1f3b57}h3{font-size:15px;margin:16px 0 6px}
pre{background:#f0f2f5;padding:10px;border-radius:6px;font-size:12px;overflow:auto;max-height:420px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #d5d9de;padding:4px 8px;text-align:left}
th{background:#eef1f4}img{max-width:100%;border:1px solid #e3e6ea;border-radius:4px;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;flex:1 1 420px}
figcaption{font-size:12px;color:#556}.muted{color:#778;font-size:13px}
"""


# ----------------------------------------------------------------------------- metrics.csv
def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float, float]]]:
    """Lightning CSVLogger file -> ``{column: [(epoch, step, value), ...]}`` (empty cells skipped).

    Rows a resumed launch redid are left out (:func:`cromss.training.history.current_rows`).
    """
    from cromss.training.history import LAUNCH_COLUMN, current_rows

    path = Path(path)
    series: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    try:
        with io.StringIO(read_text(path, "metrics file"), newline="") as handle:
            rows = list(enumerate(csv.DictReader(handle), start=2))
            kept = {id(row) for row in current_rows([row for _, row in rows])}
            for line, row in rows:
                if id(row) not in kept:
                    continue
                epoch = _number(row.get("epoch"))
                step = _number(row.get("step"))
                for key, text in row.items():
                    if key in ("epoch", "step", LAUNCH_COLUMN) or key is None:
                        continue
                    value = _number(text)
                    if value is not None:
                        series[key].append((epoch if epoch is not None else math.nan,
                                            step if step is not None else float(line), value))
    except (OSError, csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"cannot read metrics file {path}: {err}") from None
    return dict(series)


def _number(text: Any) -> float | None:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def per_epoch(points: Sequence[tuple[float, float, float]]) -> tuple[list[float], list[float]]:
    """Average the values logged within each epoch: ``(epochs, means)``."""
    groups: dict[float, list[float]] = defaultdict(list)
    for epoch, _, value in points:
        groups[epoch].append(value)
    epochs = sorted(e for e in groups if not math.isnan(e))
    return epochs, [sum(groups[e]) / len(groups[e]) for e in epochs]


def group_columns(columns: Sequence[str]) -> dict[str, list[str]]:
    """Split metrics.csv columns into ``losses``, ``metrics``, ``schedules`` (alpha, gamma, lr),
    ``timing`` (``*_ms``, ``*_s``) and ``per_class`` (names with a class suffix, e.g. ``train/w_l_s2/water``). ``*_step`` columns with
    an ``*_epoch`` twin are dropped (the epoch mean is the readable curve)."""
    names = set(columns)
    groups: dict[str, list[str]] = {"losses": [], "metrics": [], "schedules": [], "timing": [],
                                     "per_class": []}
    for name in sorted(columns):
        if name.endswith("_step") and name[: -len("_step")] + "_epoch" in names:
            continue
        leaf = name.rsplit("/", 1)[-1]
        if name.count("/") >= 2:
            groups["per_class"].append(name)
        elif leaf.removesuffix("_epoch").removesuffix("_step") in ("alpha", "gamma", "lr"):
            groups["schedules"].append(name)
        elif leaf.removesuffix("_epoch").removesuffix("_step").endswith(("_ms", "_s", "seconds")):
            groups["timing"].append(name)
        elif "loss" in leaf:
            groups["losses"].append(name)
        else:
            groups["metrics"].append(name)
    return groups


# ----------------------------------------------------------------------------- figures
def _figure_png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_png(series: dict[str, list[tuple[float, float, float]]], columns: Sequence[str], title: str,
               ylabel: str = "") -> str | None:
    """Base64 PNG of per-epoch curves of ``columns`` (at most :data:`MAX_SERIES`), or None if empty."""
    drawn = [c for c in columns if per_epoch(series.get(c, []))[0]][:MAX_SERIES]
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    for column in drawn:
        epochs, values = per_epoch(series[column])
        ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, ms=3, label=column)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("epoch")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure_png(fig)


def schedule_png(config: dict[str, Any] | None, series: dict[str, list[tuple[float, float, float]]]) -> \
        tuple[str | None, str]:
    """The alpha/gamma schedules: logged values if present, else the ramps of the config's ``method``
    section (``cromss.selection.alpha_at``/``gamma_at``). Returns (png, note)."""
    logged = {name: points for name, points in series.items()
              if name.rsplit("/", 1)[-1].removesuffix("_step") in ("alpha", "gamma")}
    plt = _pyplot()
    if logged:
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        for name, points in sorted(logged.items()):
            epochs, values = per_epoch(points)
            ax.plot(epochs, values, label=name)
        note = "logged during training (mean per epoch)"
    else:
        method = (config or {}).get("method") or {}
        trainer = (config or {}).get("trainer") or {}
        if not method:
            return None, "no alpha/gamma logged and no method section in the config"
        from cromss.selection import alpha_at, gamma_at

        alpha0 = float(method.get("alpha0", 0.5))
        rampup = float(method.get("rampup_epochs", 80.0))
        max_epochs = int(trainer.get("max_epochs", max(rampup * 1.25, 1)))
        epochs = [max_epochs * i / 200 for i in range(201)]
        fig, ax = plt.subplots(figsize=(6.0, 3.2))
        ax.plot(epochs, [alpha_at(e, alpha0, rampup) for e in epochs], label="alpha (selection ratio)")
        ax.plot(epochs, [gamma_at(e, rampup) for e in epochs], label="gamma (entity moderator)")
        note = f"recomputed from the config: alpha0={alpha0}, rampup_epochs={rampup}"
    ax.set_xlabel("epoch")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("sample-selection schedules", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _figure_png(fig), note


# ----------------------------------------------------------------------------- HTML pieces
def _img(png_b64: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{png_b64}">{cap}</figure>'


def _file_png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _flat_items(data: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(data, dict):
        items: list[tuple[str, Any]] = []
        for key, value in data.items():
            items += _flat_items(value, f"{prefix}{key}.")
        return items
    return [(prefix.rstrip("."), data)]


def _kv_table(data: dict[str, Any], limit: int = 60) -> str:
    rows = []
    for key, value in _flat_items(data)[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, list) and len(value) > 8:
            value = f"[{len(value)} values]"
        rows.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def per_class_html(metrics: dict[str, Any], config: dict[str, Any] | None = None) -> str:
    """Per-class IoU / F1 / recall / pixels of a metrics.json, rows named by the data's classes with a
    swatch of their colours (``class_colors`` of the metrics, else of the run's config); '' if absent."""
    names = metrics.get("class_names")
    if not isinstance(names, list) or not names or not isinstance(metrics.get("iou"), list):
        return ""
    colors = metrics.get("class_colors")
    if not isinstance(colors, list) or len(colors) != len(names):
        data = (config or {}).get("data") or {}
        colors = data.get("class_colors") if isinstance(data, dict) else None
    if not isinstance(colors, list) or len(colors) != len(names):
        colors = [None] * len(names)

    def pct(key: str, index: int) -> str:
        values = metrics.get(key)
        value = values[index] if isinstance(values, list) and index < len(values) else None
        return "–" if not isinstance(value, int | float) or math.isnan(value) else f"{100 * value:.2f}"

    rows = []
    for index, (name, color) in enumerate(zip(names, colors)):
        swatch = (f'<span style="display:inline-block;width:12px;height:12px;border:1px solid #555;'
                  f'background:{html.escape(str(color))};margin-right:6px"></span>' if color else "")
        support = (metrics.get("support") or [None] * len(names))
        pixels = support[index] if index < len(support) else None
        rows.append(f"<tr><td>{swatch}{html.escape(str(name))}</td><td>{pct('iou', index)}</td>"
                    f"<td>{pct('f1', index)}</td><td>{pct('recall', index)}</td>"
                    f"<td>{'' if pixels is None else html.escape(str(pixels))}</td></tr>")
    return ("<h3>per class</h3><table><tr><th>class</th><th>IoU %</th><th>F1 %</th><th>recall %</th>"
            "<th>pixels</th></tr>" + "".join(rows) + "</table>")


def notes_html(metrics: dict[str, Any]) -> str:
    """What a reader must see next to a run's metrics: the first-conv bands the encoder weights lacked
    and were initialised (``init_missing``), the pretrained bands not fed, and a one-class evaluation."""
    lines = []
    selection = (metrics.get("weights_info") or {}).get("band_selection") if isinstance(
        metrics.get("weights_info"), dict) else None
    if isinstance(selection, dict):
        initialised = selection.get("initialised") or {}
        if initialised:
            lines.append("first-conv channels initialised (the encoder weights lack these bands): "
                         + ", ".join(f"{band} ({how})" for band, how in initialised.items()))
        if selection.get("dropped"):
            lines.append("pretrained bands not fed to the model: " + ", ".join(map(str, selection["dropped"])))
        if selection.get("checked") and not initialised:
            lines.append(f"every model band reused its pretrained first-conv channel "
                         f"({len(selection.get('model_bands') or [])} bands, by name)")
    if metrics.get("note"):
        lines.append(str(metrics["note"]))
    return "".join(f"<p class='muted'>{html.escape(line)}</p>" for line in lines)


def markdown_table_html(markdown: str) -> str:
    """A GitHub-markdown pipe table (as ``cromss table`` writes) -> an HTML table; other lines kept as text."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                                 for r in body) + "</table>")
            rows.clear()

    for line in markdown.splitlines():
        text = line.strip()
        if text.startswith("|"):
            cells = [c.strip() for c in text.strip("|").split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue  # the |---|---| separator
            rows.append(cells)
        else:
            flush()
            if text:
                out.append(f"<p>{html.escape(text.lstrip('# '))}</p>")
    flush()
    return "\n".join(out)


def run_section(run: Path, extra_images: Sequence[Path] = ()) -> str:
    """HTML of one run folder."""
    import yaml

    parts = [f'<section class="run"><h2>{html.escape(run.name)}</h2>',
             f'<p class="muted">{html.escape(str(run.resolve()))}</p>']
    config = None
    config_path = run / "config.yaml"
    if config_path.is_file():
        text = read_text(config_path, "run config")
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError:
            config = None
        parts.append(f"<details><summary>config.yaml</summary><pre>{html.escape(text)}</pre></details>")
    for name in ("summary.json", "metrics.json"):
        path = run / name
        if path.is_file():
            data = read_json(path, "run file")
            parts.append(f"<h3>{name}</h3>" + (_kv_table(data) if isinstance(data, dict)
                                                 else f"<pre>{html.escape(json.dumps(data, indent=1))}</pre>"))
            if isinstance(data, dict):
                parts.append(notes_html(data))
                parts.append(per_class_html(data, config if isinstance(config, dict) else None))
    metrics_files = sorted(run.rglob("metrics.csv"))
    if metrics_files:
        series = read_metrics_csv(metrics_files[-1])  # the latest logger version
        groups = group_columns(list(series))
        figures = [png for png in (
            curves_png(series, groups["losses"], "losses", "loss"),
            curves_png(series, groups["metrics"], "metrics"),
            curves_png(series, [c for c in groups["schedules"] if "lr" in c.rsplit("/", 1)[-1]],
                       "learning rate"),
            curves_png(series, groups["timing"], "timing"),
        ) if png]
        schedule, note = schedule_png(config if isinstance(config, dict) else None, series)
        parts.append("<h3>curves</h3><div class='grid'>" + "".join(_img(p) for p in figures)
                     + (_img(schedule, "alpha/gamma: " + note) if schedule else "") + "</div>")
        if groups["per_class"]:
            parts.append(f"<p class='muted'>{len(groups['per_class'])} per-class columns in "
                         f"{html.escape(str(metrics_files[-1].relative_to(run)))} are not drawn.</p>")
    elif isinstance(config, dict):
        schedule, note = schedule_png(config, {})
        if schedule:
            parts.append("<h3>schedules</h3>" + _img(schedule, "alpha/gamma: " + note))
    images = sorted((run / "analysis").rglob("*.png")) if (run / "analysis").is_dir() else []
    images += list(extra_images)
    if images:
        parts.append("<h3>analysis figures</h3><div class='grid'>"
                     + "".join(_img(_file_png(p), str(p.name)) for p in images) + "</div>")
    parts.append("</section>")
    return "\n".join(parts)


def build_report(runs: Sequence[str | Path], out: str | Path, title: str = "CromSS report",
                 table: str | Path | None = None, images: Sequence[str | Path] = (),
                 audits: Sequence[str | Path] = (), overwrite: bool = False) -> Path:
    """Write the self-contained HTML report of ``runs`` to ``out``.

    Args:
        runs: run folders (pretraining or fine-tuning).
        out: the HTML file to write.
        title: page title.
        table: optional ``cromss table`` markdown file (shown as the metric table).
        images: extra PNG files or folders of PNGs (e.g. ``cromss analyze`` outputs kept elsewhere).
        audits: ``cromss audit`` folders to add as sections (a run folder's own ``RUN/audit/`` is added
            without being named).
        overwrite: replace an existing ``out`` (refused otherwise, before anything is read: the
            rule of every output file, :func:`cromss.outputs.check_output_file`).
    """
    from cromss.outputs import atomic_write_text, check_output_file, prepare_output_dir

    check_output_file(out, "report", overwrite)
    run_paths = [Path(r) for r in runs]
    for run in run_paths:
        if not run.is_dir():
            raise DataError(f"run folder not found: {run}")
    extra: list[Path] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            extra += sorted(path.rglob("*.png"))
        elif path.is_file():
            extra.append(path)
        else:
            raise DataError(f"image file or folder not found: {path}")
    import datetime

    from cromss import __version__

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = []
    if table is not None:
        table_path = Path(table)
        if not table_path.is_file():
            raise DataError(f"metric table not found: {table_path}")
        body.append('<section class="run"><h2>metric table</h2>'
                    + markdown_table_html(read_text(table_path, "metric table")) + "</section>")
    for index, run in enumerate(run_paths):
        body.append(run_section(run, extra if index == 0 and len(run_paths) == 1 else ()))
    from cromss.audit.panels import audit_section, find_audit

    for audit in dict.fromkeys([*(Path(a) for a in audits), *filter(None, (find_audit(r) for r in run_paths))]):
        body.append(audit_section(audit))
    if extra and len(run_paths) != 1:
        body.append('<section class="run"><h2>figures</h2><div class="grid">'
                    + "".join(_img(_file_png(p), p.name) for p in extra) + "</div></section>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f"<p>cromss {__version__} · {len(run_paths)} run(s) · generated {stamp}</p></header><main>"
            + "\n".join(body) + "</main></body></html>")
    out = Path(out)
    prepare_output_dir(out.parent, "report folder")
    return atomic_write_text(out, page, "report")
