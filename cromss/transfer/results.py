"""Results on disk: strict JSON, mean +/- std over seeds, ``aggregate.{json,csv}``."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from cromss.metrics import SCALAR_METRICS
from cromss.transfer.config import METRIC_TITLES


def _json_safe(value: Any) -> Any:
    """NaN -> None recursively (strict JSON)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json(data: Any, path: Path) -> None:
    """Strict JSON, written atomically (an interrupted write keeps the earlier file) with 0666 & ~umask."""
    from cromss.outputs import atomic_write_text

    atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n", "results")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single run)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    return statistics.fmean(clean), (statistics.stdev(clean) if len(clean) > 1 else 0.0)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +/- std over runs of each scalar metric (fractions), with the per-seed values."""
    summary: dict[str, Any] = {}
    for name in SCALAR_METRICS:
        values = [r.get(name) for r in results]
        mean, std = mean_std([v for v in values if v is not None])
        summary[name] = {"mean": mean, "std": std, "values": values}
    return summary


def write_aggregate(group_dir: Path, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``aggregate.json`` and ``aggregate.csv`` (metric, mean %, std %, n) into ``group_dir``."""
    first = results[0]
    data = {
        "task": first.get("task"), "encoder_label": first.get("encoder_label"),
        "encoder_source": first.get("encoder_source"), "mode": first.get("mode"),
        "seeds": [r.get("seed") for r in results], "metrics": aggregate(results),
    }
    from cromss.outputs import atomic_write_text

    write_json(data, group_dir / "aggregate.json")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["metric", "mean_pct", "std_pct", "n"])
    for name, stats in data["metrics"].items():
        writer.writerow([METRIC_TITLES[name], f"{100 * stats['mean']:.2f}", f"{100 * stats['std']:.2f}", len(results)])
    atomic_write_text(group_dir / "aggregate.csv", buffer.getvalue(), "results")
    return data
