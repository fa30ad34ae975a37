"""The ranked table of an audit: one row per sample, the ones to relabel first on top.

Columns: ``rank, location, time, split, labelled_pixels, flagged_pixels, estimated_wrong_pixels``
(the sum of the combined score over the sample's labelled pixels), ``expected_wrong_pixels`` (the sum
of ``1 - p_y``, the networks' mean probability that the label is wrong), ``mean_score`` (the mean
combined score), ``mean_score_<modality>``, ``score_map`` (its file, relative to the audit folder) and,
with a reference label, ``reference_wrong_pixels`` and ``flagged_wrong_pixels``. Sorted by estimated
wrong pixels (descending), then mean score: the first rows are the samples where relabelling fixes the
most pixels (docs/audit.md, "Ranked table", says why the score sum and not ``1 - p_y``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cromss.outputs import atomic_write_text

TABLE_FILE = "ranking.csv"


@dataclass
class SampleRow:
    """The audit's numbers for one sample."""

    position: int
    location: str
    time: str
    split: str
    labelled_pixels: int
    flagged_pixels: int
    estimated_wrong_pixels: float
    expected_wrong_pixels: float
    mean_score: float
    mean_score_by_modality: dict[str, float] = field(default_factory=dict)
    score_map: str = ""
    reference_wrong_pixels: int | None = None
    flagged_wrong_pixels: int | None = None

    def sort_key(self) -> tuple[float, float, int]:
        return (-self.estimated_wrong_pixels, -self.mean_score, self.position)


def ranked(rows: Sequence[SampleRow]) -> list[SampleRow]:
    """Rows in relabelling order (most estimated wrong pixels first; ties: higher mean score, then order)."""
    return sorted(rows, key=SampleRow.sort_key)


def columns(modalities: Sequence[str], reference: bool) -> list[str]:
    names = ["rank", "location", "time", "split", "labelled_pixels", "flagged_pixels", "estimated_wrong_pixels",
             "expected_wrong_pixels", "mean_score", *[f"mean_score_{m}" for m in modalities], "score_map"]
    return names + (["reference_wrong_pixels", "flagged_wrong_pixels"] if reference else [])


def table_text(rows: Sequence[SampleRow], modalities: Sequence[str], reference: bool) -> str:
    """The CSV text of the ranked table."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(columns(modalities, reference))
    for rank, row in enumerate(ranked(rows), start=1):
        values: list[Any] = [rank, row.location, row.time, row.split, row.labelled_pixels, row.flagged_pixels,
                             f"{row.estimated_wrong_pixels:.1f}", f"{row.expected_wrong_pixels:.1f}",
                             f"{row.mean_score:.6f}",
                             *[f"{row.mean_score_by_modality.get(m, float('nan')):.6f}" for m in modalities],
                             row.score_map]
        if reference:
            values += [row.reference_wrong_pixels, row.flagged_wrong_pixels]
        writer.writerow(values)
    return buffer.getvalue()


def write_table(path: Path, rows: Sequence[SampleRow], modalities: Sequence[str], reference: bool) -> Path:
    return atomic_write_text(path, table_text(rows, modalities, reference), what="ranked table")


def ranking_agreement(rows: Sequence[SampleRow]) -> dict[str, Any] | None:
    """How well the table's columns order samples by their true wrong pixels (reference needed):
    Spearman and Kendall rank correlations (scipy) of each candidate sort key with the true count."""
    from scipy.stats import kendalltau, spearmanr

    rows = [r for r in rows if r.reference_wrong_pixels is not None]
    if len(rows) < 3:
        return None
    truth = [r.reference_wrong_pixels for r in rows]
    if len(set(truth)) < 2:
        return None
    keys = {"estimated_wrong_pixels": [r.estimated_wrong_pixels for r in rows],
            "expected_wrong_pixels": [r.expected_wrong_pixels for r in rows],
            "flagged_pixels": [r.flagged_pixels for r in rows],
            "mean_score": [r.mean_score for r in rows]}
    out: dict[str, Any] = {"samples": len(rows), "sorted_by": "estimated_wrong_pixels"}
    for name, values in keys.items():
        if len(set(values)) < 2:
            out[name] = {"spearman": None, "kendall": None}
            continue
        out[name] = {"spearman": float(spearmanr(values, truth).statistic),
                     "kendall": float(kendalltau(values, truth).statistic)}
    return out
