"""`cromss report`: a self-contained HTML page from a (fake) run folder."""

from __future__ import annotations

import base64
import json
import re

import pytest

from cromss.errors import DataError
from cromss.report import group_columns, markdown_table_html, per_epoch, read_metrics_csv

METRICS_CSV = """epoch,step,train/loss_step,train/alpha,train/gamma,train/loss_epoch,val/loss,val/miou_noisy_s2,train/w_l_s2/water
0,0,2.0,0.99,0.01,,,,0.5
0,1,1.8,0.98,0.02,,,,
0,1,,,,1.9,1.7,0.10,
1,2,1.2,0.80,0.30,,,,
1,3,1.0,0.70,0.40,,,,
1,3,,,,1.1,1.0,0.30,
"""

CONFIG_YAML = """name: fake-run
model:
  encoder: resnet18
  fusion: mid
method:
  alpha0: 0.5
  rampup_epochs: 4
trainer:
  max_epochs: 6
"""


def _fake_run(root, with_alpha=True):
    run = root / "fake-run"
    (run / "logs" / "version_0").mkdir(parents=True)
    csv_text = METRICS_CSV
    if not with_alpha:
        lines = [line.split(",") for line in METRICS_CSV.strip().splitlines()]
        csv_text = "\n".join(",".join(c for i, c in enumerate(row) if i not in (3, 4)) for row in lines) + "\n"
    (run / "logs" / "version_0" / "metrics.csv").write_text(csv_text)
    (run / "config.yaml").write_text(CONFIG_YAML)
    (run / "summary.json").write_text(json.dumps({"best_val_loss": 1.0, "epochs": 2}))
    (run / "analysis").mkdir()
    # a 1x1 PNG written by hand (signature + IHDR + IDAT + IEND), so the test needs no plotting
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    (run / "analysis" / "masks_00_x.png").write_bytes(png)
    return run


def test_read_metrics_and_group_columns(tmp_path):
    run = _fake_run(tmp_path)
    series = read_metrics_csv(run / "logs" / "version_0" / "metrics.csv")
    assert series["val/loss"] == [(0.0, 1.0, 1.7), (1.0, 3.0, 1.0)]
    epochs, means = per_epoch(series["train/alpha"])
    assert epochs == [0.0, 1.0] and means == pytest.approx([0.985, 0.75])
    groups = group_columns(list(series))
    assert groups["losses"] == ["train/loss_epoch", "val/loss"]  # the _step twin is dropped
    assert groups["schedules"] == ["train/alpha", "train/gamma"]
    assert groups["metrics"] == ["val/miou_noisy_s2"]
    assert groups["per_class"] == ["train/w_l_s2/water"]


def test_markdown_table_html():
    text = "# DW\n| encoder | mIoU |\n|---|---:|\n| cromss | 41.2 ± 0.3 |\n"
    html = markdown_table_html(text)
    assert "<th>encoder</th>" in html and "<td>41.2 ± 0.3</td>" in html and "---" not in html


def test_report_cli_writes_self_contained_html(tmp_path):
    from cromss.cli import main

    run = _fake_run(tmp_path)
    table = tmp_path / "table.md"
    table.write_text("| encoder | mIoU |\n|---|---|\n| cromss-midf | 40.0 |\n")
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out), "--table", str(table)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # losses, metrics, schedules, plus the analysis PNG
    assert len(images) == 4
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)  # nothing outside the file
    assert "fusion: mid" in page  # the config
    assert "best_val_loss" in page and "<td>cromss-midf</td>" in page
    assert "logged during training" in page
    assert "1 per-class columns" in page


def test_report_recomputes_schedules_without_logged_alpha(tmp_path):
    from cromss.report import build_report

    run = _fake_run(tmp_path, with_alpha=False)
    page = build_report([run], tmp_path / "r.html").read_text()
    assert "recomputed from the config: alpha0=0.5, rampup_epochs=4.0" in page


def test_report_errors_name_the_path(tmp_path):
    from cromss.report import build_report

    with pytest.raises(DataError, match="missing-run"):
        build_report([tmp_path / "missing-run"], tmp_path / "r.html")
    run = _fake_run(tmp_path)
    with pytest.raises(DataError, match="nope.md"):
        build_report([run], tmp_path / "r.html", table=tmp_path / "nope.md")


def test_group_columns_timing_and_lr():
    groups = group_columns(["train/selection_ms_step", "train/selection_ms_epoch", "train/lr", "val/noise_auc_s2"])
    assert groups["timing"] == ["train/selection_ms_epoch"]
    assert groups["schedules"] == ["train/lr"]
    assert groups["metrics"] == ["val/noise_auc_s2"]
