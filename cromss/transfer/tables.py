"""The paper's results tables from run folders: weights | Frozen OA AA mIoU mF1 | Fine-tuned OA AA mIoU mF1."""

from __future__ import annotations

import csv
import glob
import math
from pathlib import Path
from typing import Any

from cromss.errors import DataError
from cromss.metrics import SCALAR_METRICS
from cromss.textfiles import read_json
from cromss.transfer.config import METRIC_TITLES, MODE_TITLES, MODES
from cromss.transfer.results import aggregate, mean_std


def _collect_metrics_files(patterns: list[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        for match in matches:
            path = Path(match)
            if path.is_file() and path.name == "metrics.json":
                files.append(path)
            elif path.is_dir():
                files.extend(sorted(path.rglob("metrics.json")))
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        raise DataError(f"no metrics.json found under {', '.join(patterns)}")
    return unique


def _run_identity(path: Path, data: dict[str, Any]) -> tuple[str, str, str]:
    """(task, encoder label, mode) of a metrics.json, from its fields or its run-folder path."""
    parts = path.parent.parts  # .../<task>/<label>/<mode>/seed<k>
    mode = data.get("mode") or ("frozen" if data.get("frozen") else None)
    if mode is None and "frozen" in data:
        mode = "finetuned"
    if mode is None and len(parts) >= 2 and parts[-2] in MODES:
        mode = parts[-2]
    label = data.get("encoder_label") or (parts[-3] if len(parts) >= 3 else None)
    task = data.get("task") or (parts[-4] if len(parts) >= 4 else "")
    if mode not in MODES or not label:
        raise DataError(
            f"{path}: cannot tell encoder label and frozen/finetuned (expected fields 'encoder_label' and "
            "'mode' or a path <task>/<label>/<frozen|finetuned>/seed<k>/metrics.json)"
        )
    return str(task), str(label), str(mode)


def collect_table(patterns: list[str]) -> dict[str, Any]:
    """Group metrics.json files under ``patterns`` by (task, label, mode); mean/std per metric, ``n``, ``title``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    seen: dict[tuple[str, str, str, Any], Path] = {}
    for path in _collect_metrics_files(patterns):
        data = read_json(path, "metrics file")
        missing = [name for name in SCALAR_METRICS if name not in data]
        if missing:
            raise DataError(f"{path} lacks metric(s) {missing}")
        identity = _run_identity(path, data)
        seed_key = (*identity, data.get("seed", path.parent.name))
        if seed_key in seen:
            raise DataError(
                f"seed {seed_key[3]} of {identity[1]}/{identity[2]} appears twice ({seen[seed_key]} and {path}); "
                "pass folders or globs that select one experiment"
            )
        seen[seed_key] = path
        groups.setdefault(identity, []).append(data)
    # a run's row name (e.g. a baseline's paper name 'satMAE++ (10B)'); older runs have none
    return {
        key: aggregate(results) | {"n": len(results), "title": results[0].get("encoder_title") or key[1],
                                   "per_class": _per_class(results)}
        for key, results in groups.items()
    }


def _per_class(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per-class IoU mean/std over seeds with the class names of the data, or None when the runs do not
    record them (older metrics.json) or disagree on the classes."""
    names = [tuple(r.get("class_names") or ()) for r in results]
    if not names[0] or len(set(names)) != 1 or any(len(r.get("iou") or ()) != len(names[0]) for r in results):
        return None
    iou = []
    for index in range(len(names[0])):
        mean, std = mean_std([r["iou"][index] for r in results if r["iou"][index] is not None])
        iou.append({"mean": mean, "std": std})
    return {"names": list(names[0]), "iou": iou}


def per_class_rows(patterns: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """Per-class IoU table (mean±std %, columns = the data's class names): rows = weights and mode.

    None when the runs record no class names or the tasks have different class lists."""
    groups = collect_table(patterns)
    tables = [g["per_class"] for g in groups.values()]
    if not tables or any(t is None for t in tables) or len({tuple(t["names"]) for t in tables}) != 1:
        return None
    tasks = list(dict.fromkeys(task for task, _, _ in groups))
    header = ["Weights", "Mode", *[f"{name} IoU" for name in tables[0]["names"]]]
    rows = []
    for (task, _label, mode), stats in groups.items():
        name = stats["title"] if len(tasks) == 1 else f"{task}: {stats['title']}"
        rows.append([name, MODE_TITLES[mode], *[format_cell(c) for c in stats["per_class"]["iou"]]])
    return header, rows


def format_cell(stats: dict[str, float] | None) -> str:
    """``mean±std`` in percent with two decimals (the paper's format); '–' when missing."""
    if stats is None or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    return f"{100 * stats['mean']:.2f}±{100 * stats['std']:.2f}"


def table_rows(patterns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paper's layout: weights | Frozen OA AA mIoU mF1 | Fine-tuned OA AA mIoU mF1."""
    groups = collect_table(patterns)
    tasks = list(dict.fromkeys(task for task, _, _ in groups))
    rows_by_key: dict[tuple[str, str], list[str]] = {}
    for task, label in dict.fromkeys((task, label) for task, label, _ in groups):
        title = next(groups[(task, label, m)]["title"] for m in MODES if (task, label, m) in groups)
        name = title if len(tasks) == 1 else f"{task}: {title}"
        cells = [name]
        for mode in MODES:
            stats = groups.get((task, label, mode))
            cells += [format_cell(stats[m] if stats else None) for m in SCALAR_METRICS]
        rows_by_key[(task, label)] = cells
    header = ["Weights"] + [f"{MODE_TITLES[mode]} {METRIC_TITLES[m]}" for mode in MODES for m in SCALAR_METRICS]
    return header, list(rows_by_key.values())


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _want_per_class(patterns: list[str], wanted: bool | None) -> tuple[list[str], list[list[str]]] | None:
    if wanted is False:
        return None
    table = per_class_rows(patterns)
    if table is None or wanted:
        return table
    from cromss.schema import CLASS_TABLES

    names = [h.removesuffix(" IoU") for h in table[0][2:]]
    builtin = any(list(t.names) == names for t in CLASS_TABLES.values())
    return None if builtin else table


def write_table(patterns: list[str], out_prefix: str | Path | None = None, per_class: bool | None = None) -> str:
    """The aggregate table as Markdown (returned) and, with ``out_prefix``, ``<prefix>.md``/``.csv``.

    ``per_class``: also the per-class IoU table named by the data's classes (``<prefix>_per_class.csv``);
    None = when the classes are the user's own (generic data), so the built-in tasks keep the paper's layout.
    """
    header, rows = table_rows(patterns)
    markdown = render_markdown(header, rows)
    per_class = _want_per_class(patterns, per_class)
    if per_class is not None:
        markdown += "\nPer-class IoU (%, mean±std over seeds)\n\n" + render_markdown(*per_class)
    if out_prefix is not None:
        prefix = Path(out_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{prefix}.md").write_text(markdown)
        with open(f"{prefix}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        if per_class is not None:
            with open(f"{prefix}_per_class.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(per_class[0])
                writer.writerows(per_class[1])
    return markdown
