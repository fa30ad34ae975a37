"""Reliability round 3 (issue 21) and the one CLI error rule (issue 24): command line, text files, config.

Every case goes through ``cromss.cli.main`` in-process and asserts the ONE line ``cromss: error: ...`` on
stderr (nothing else, no usage block, no traceback), exit status 2, and that nothing was written or every
earlier file is byte-identical.
"""

from __future__ import annotations

import codecs
import csv
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cromss.cli import main, one_line
from tests.generic_data import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"encoder": "resnet18", "decoder_channels": [8, 8, 8, 8, 8]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_lightning_info():
    """Lightning's info lines go to a handler bound to the stderr of the test that imported it (closed by
    then under capsys): without them stderr holds only what cromss prints."""
    import logging

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def one_error_line(capsys, status: int) -> str:
    """Exit status 2, stderr exactly one line ``cromss: error: ...``, no usage block on stdout."""
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("cromss: error: "), captured.err
    assert "usage:" not in captured.out and "Traceback" not in captured.err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=6, size=32, dw_train=4, dw_test=2, seed=11, layouts=("geotiff",))
    return out


def pretrain_config(demo_root: Path, out: Path, path: Path, **trainer) -> Path:
    config = {
        "name": "tiny", "seed": 5, "output_dir": str(out),
        "data": {"kind": "nol", "root": str(demo_root / "nol"), "crop_size": 32, "batch_size": 2,
                 "val_fraction": 0.34, "eval_seasons": "first", "num_workers": 0},
        "model": TINY_MODEL, "method": {"rampup_epochs": 2}, "optim": {"lr": 1e-2, "patience": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "progress_bar": False, "num_sanity_val_steps": 0,
                    "log_every_n_steps": 1, "limit_val_batches": 1, "accelerator": "cpu", "devices": 1, **trainer},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# ----------------------------------------------------------------------------- the one CLI error rule
@pytest.mark.parametrize(("argv", "expected"), [
    (["pretrain"], "pretrain: the following arguments are required: --config"),
    (["pretrain", "--config"], "pretrain: argument --config: expected one argument"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
    (["data", "convert", "only-src"], "data convert: the following arguments are required: out"),
    (["data", "convert", "a", "b", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (["data", "tile", "--input", "s2=x.tif", "--out", "o"], "data tile: the following arguments are required: --size"),
    (["predict", "--checkpoint", "run"], "predict: the following arguments are required: --out"),
    (["data", "inspect", "somewhere", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
])
def test_argparse_errors_are_one_line_exit_2(capsys, argv, expected):
    line = one_error_line(capsys, main(argv))
    assert expected in line
    assert "--help' lists the options" in line


def test_pretrain_without_config_is_one_line_in_a_real_process():
    result = subprocess.run([sys.executable, "-m", "cromss", "pretrain"], capture_output=True, text=True,
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "cromss: error: pretrain: the following arguments are required: --config "
        "('cromss pretrain --help' lists the options)"]
    assert result.stdout == ""


def test_an_error_raised_in_a_dataloader_worker_is_one_line():
    from torch.utils.data import DataLoader, Dataset

    from cromss.errors import DataError

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise DataError(f"tile {index} of /data/x.tif is unreadable")

    with pytest.raises(DataError) as info:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(info.value) and len(str(info.value).splitlines()) > 3  # torch's wrapper
    assert one_line(info.value) == "tile 0 of /data/x.tif is unreadable"


# ----------------------------------------------------------------------------- text files
def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


@pytest.fixture
def generic(tmp_path) -> Path:
    return make_synthetic(tmp_path / "d", {"s2": ["B2", "B3"]}, ["a", "b"], timestamps=[1, 1, 1])


def test_non_utf8_samples_csv_row_is_one_line(generic, capsys):
    table = generic / "samples.csv"
    table.write_bytes(table.read_bytes().replace(b"loc1", _latin1("loc\u00e9"), 1))
    line = one_error_line(capsys, main(["data", "inspect", str(generic)]))
    assert f"sample table {table} is not UTF-8 text (line 3: byte 0xe9" in line


def test_non_utf8_class_name_in_dataset_yaml_is_one_line(generic, capsys):
    description = generic / "dataset.yaml"
    description.write_bytes(description.read_bytes().replace(b"- a\n", _latin1("- caf\u00e9\n"), 1))
    line = one_error_line(capsys, main(["data", "stats", str(generic)]))
    assert f"dataset description {description} is not UTF-8 text" in line and "byte 0xe9" in line


def test_non_utf8_config_file_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(_latin1("name: \u00e9t\u00e9\n"))
    line = one_error_line(capsys, main(["pretrain", "--config", str(config), "--print-config"]))
    assert line.startswith(f"cromss: error: config file {config} is not UTF-8 text (line 1: byte 0xe9 at offset 6)")


def test_non_utf8_classes_csv_of_data_index_is_one_line(generic, tmp_path, capsys):
    root = tmp_path / "fresh"
    for folder in ("s2", "label"):
        shutil.copytree(generic / folder, root / folder)
    classes = tmp_path / "classes.csv"
    classes.write_bytes(_latin1("value,name\n10,for\u00eat\n11,eau\n"))
    line = one_error_line(capsys, main(["data", "index", str(root), "--image", "s2=s2/*.tif", "--label",
                                        "label/*.tif", "--classes", str(classes)]))
    assert f"--classes file {classes} is not UTF-8 text (line 2" in line
    assert not (root / "dataset.yaml").exists() and not (root / "samples.csv").exists()


def test_excel_csv_utf8_with_bom_is_read(generic, tmp_path, capsys):
    """Excel's 'CSV UTF-8' starts with a BOM: the first column is still 'location', and the classes CSV reads."""
    from cromss.data import DataConfig, build_dataset

    table = generic / "samples.csv"
    plain = build_dataset(DataConfig(kind="generic", root=str(generic), crop_size=None, val_fraction=0.34), "train",
                          train=False)
    table.write_bytes(codecs.BOM_UTF8 + table.read_bytes())
    bom = build_dataset(DataConfig(kind="generic", root=str(generic), crop_size=None, val_fraction=0.34), "train",
                        train=False)
    assert [bom.sample_id(i) for i in range(len(bom.locations))] == [plain.sample_id(i) for i in range(len(plain.locations))]
    assert torch.equal(bom[0]["s2"], plain[0]["s2"])
    root = tmp_path / "fresh"
    for folder in ("s2", "label"):
        shutil.copytree(generic / folder, root / folder)
    classes = tmp_path / "classes.csv"
    classes.write_bytes(codecs.BOM_UTF8 + "value,name\n10,for\u00eat\n11,eau\n".encode())
    assert main(["data", "index", str(root), "--image", "s2=s2/*.tif", "--label", "label/*.tif",
                 "--classes", str(classes), "--bands", "s2=B2,B3", "--no-stats"]) == 0
    assert yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8"))["classes"][0] in ("for\u00eat",
                                                                                                 {"name": "for\u00eat"})
    with (root / "samples.csv").open(newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle))[0] == "location"


# ----------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(("override", "problem"), [
    ("optim.lr=[", "expected the node content"),
    ("name=a: b: c", "mapping values are not allowed here"),
    ("data.batch_size=*x", "found undefined alias 'x'"),
    ('optim.lr="1e-3', "found unexpected end of stream"),
])
def test_override_values_that_are_not_yaml_are_one_line(capsys, override, problem):
    line = one_error_line(capsys, main(["pretrain", "--config", str(ROOT / "configs/demo/pretrain-cromss-midf.yaml"),
                                        "--print-config", override]))
    assert f"override {override!r}: the value" in line and problem in line


def test_a_python_tag_in_an_override_is_refused_and_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    override = f'name=!!python/object/apply:os.system ["touch {marker}"]'
    line = one_error_line(capsys, main(["pretrain", "--config", str(ROOT / "configs/demo/pretrain-cromss-midf.yaml"),
                                        "--print-config", override]))
    assert "could not determine a constructor for the tag" in line
    assert not marker.exists()


# ----------------------------------------------------------------------------- trainer keys
@pytest.mark.parametrize(("override", "expected"), [
    ("trainer.precision=64-bogus", "config key 'trainer.precision': '64-bogus' is not one of"),
    ("trainer.accelerator=banana", "config key 'trainer.accelerator': 'banana' is not one of"),
    ("trainer.strategy=ddp_bogus", "config key 'trainer.strategy': 'ddp_bogus' is not one of"),
    ("trainer.devices=two", "config key 'trainer.devices': 'two' must be"),
])
def test_print_config_refuses_trainer_values_lightning_refuses(capsys, override, expected):
    line = one_error_line(capsys, main(["pretrain", "--config", str(ROOT / "configs/demo/pretrain-cromss-midf.yaml"),
                                        "--print-config", override]))
    assert expected in line


def test_the_accepted_values_are_lightnings_own():
    """The lists come from Lightning's tables: every precision literal Lightning declares is accepted."""
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT_STR
    from lightning.pytorch.accelerators import AcceleratorRegistry

    from cromss.trainer_options import accelerator_names, precision_names

    assert set(typing.get_args(_PRECISION_INPUT_STR)) <= set(precision_names())
    assert set(AcceleratorRegistry.available_accelerators()) <= set(accelerator_names())


def test_finetune_refuses_a_bogus_precision(demo_root, tmp_path, capsys):
    line = one_error_line(capsys, main(["finetune", "--config", str(ROOT / "configs/demo/finetune-dw.yaml"),
                                        "--encoder", "random", f"output_dir={tmp_path / 'ft'}",
                                        f"data.root={demo_root / 'dw'}", "trainer.precision=64-bogus"]))
    assert "trainer.precision" in line and not (tmp_path / "ft").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_requested_on_a_cpu_machine_is_one_line_before_anything_is_written(demo_root, tmp_path, capsys):
    config = pretrain_config(demo_root, tmp_path / "runs", tmp_path / "c.yaml", accelerator="gpu")
    line = one_error_line(capsys, main(["pretrain", "--config", str(config)]))
    assert "'gpu'" in line and "cannot run on this machine" in line and "No supported gpu backend found" in line
    assert not (tmp_path / "runs").exists()
    line = one_error_line(capsys, main(["finetune", "--config", str(ROOT / "configs/demo/finetune-dw.yaml"),
                                        "--encoder", "random", f"output_dir={tmp_path / 'ft'}",
                                        f"data.root={demo_root / 'dw'}", "trainer.accelerator=gpu"]))
    assert "cannot run on this machine" in line and not (tmp_path / "ft").exists()


# ----------------------------------------------------------------------------- checks before the run folder
def test_crop_larger_than_the_tiles_is_refused_before_the_run_folder(demo_root, tmp_path, capsys):
    config = pretrain_config(demo_root, tmp_path / "runs", tmp_path / "c.yaml")
    line = one_error_line(capsys, main(["pretrain", "--config", str(config), "data.crop_size=64"]))
    assert "crop_size 64 is larger than the 32x32 tile" in line
    assert not (tmp_path / "runs").exists()
    line = one_error_line(capsys, main(["finetune", "--config", str(ROOT / "configs/demo/finetune-dw.yaml"),
                                        "--encoder", "random", f"output_dir={tmp_path / 'ft'}",
                                        f"data.root={demo_root / 'dw'}", "data.crop_size=64"]))
    assert "crop_size 64 is larger than the 32x32 tile" in line
    assert not (tmp_path / "ft").exists()


def test_an_all_ignored_training_split_is_refused_before_the_finetune_folder(tmp_path, capsys):
    root = make_synthetic(tmp_path / "d", {"s2": ["B2", "B3"]}, ["a", "b"], timestamps=[1] * 6, size=32,
                          splits=["train", "train", "train", "train", "val", "test"])
    description = root / "dataset.yaml"
    data = yaml.safe_load(description.read_text())
    data["label_values"] = {90: 0, 91: 1}  # no label file holds these values: every pixel is ignored
    description.write_text(yaml.safe_dump(data))
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump({
        "name": "all-ignored", "output_dir": str(tmp_path / "ft"), "encoder": "resnet18", "epochs": 1,
        "data": {"kind": "generic", "root": str(root), "batch_size": 2, "crop_size": None},
        "trainer": {"accelerator": "cpu", "enable_progress_bar": False}}))
    line = one_error_line(capsys, main(["finetune", "--config", str(config), "--encoder", "random", "--frozen"]))
    assert "has no labelled valid pixel" in line
    assert not (tmp_path / "ft").exists()


# ----------------------------------------------------------------------------- launch numbering
def test_a_rerun_after_a_crash_before_the_first_checkpoint_is_launch_1(demo_root, tmp_path, monkeypatch):
    from cromss.training.module import CromSSModule

    config = pretrain_config(demo_root, tmp_path / "runs", tmp_path / "c.yaml")
    original = CromSSModule.training_step

    def crash_at_the_second_step(self, batch, batch_idx):
        if self.global_step >= 1:
            raise RuntimeError("simulated crash before the first checkpoint")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(CromSSModule, "training_step", crash_at_the_second_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["pretrain", "--config", str(config)])
    run = tmp_path / "runs" / "tiny"
    assert not (run / "checkpoints" / "last.ckpt").exists()
    first_config = (run / "config.yaml").read_bytes()
    with (run / "metrics.csv").open(newline="") as handle:
        first_rows = list(csv.DictReader(handle))
    assert first_rows and {row["launch"] for row in first_rows} == {"0"}
    monkeypatch.setattr(CromSSModule, "training_step", original)
    assert main(["pretrain", "--config", str(config)]) == 0  # nothing to resume: a new start, launch 1
    assert (run / "config.yaml").read_bytes() == first_config  # the first launch's config is kept
    assert (run / "config.resume-1.yaml").is_file()
    with (run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["launch"] for row in rows[: len(first_rows)]] == ["0"] * len(first_rows)
    assert {row["launch"] for row in rows[len(first_rows):]} == {"1"}


# ----------------------------------------------------------------------------- stale locks with unreadable content
@pytest.mark.parametrize("content", [b"", b"\x00\xff garbage \xfe", b"not-a-pid host", b"0 somehost\n"])
def test_an_unreadable_lock_whose_owner_cannot_be_alive_is_taken_over(tmp_path, caplog, content):
    from cromss.locks import UNREADABLE_GRACE_S, FolderLock, read_holder

    lock = tmp_path / "cromss.lock"
    lock.write_bytes(content)
    old = time.time() - UNREADABLE_GRACE_S - 5
    os.utime(lock, (old, old))
    with caplog.at_level(logging.WARNING, logger="cromss.locks"):
        with FolderLock(lock, tmp_path, "run folder"):
            assert read_holder(lock).pid == os.getpid()
    assert "held no readable PID" in caplog.text and "taken over" in caplog.text
    assert not lock.exists()


def test_an_unreadable_stale_lock_does_not_stop_pretrain(demo_root, tmp_path, caplog):
    config = pretrain_config(demo_root, tmp_path / "runs", tmp_path / "c.yaml")
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    (run / "cromss.lock").write_bytes(b"")
    old = time.time() - 60
    os.utime(run / "cromss.lock", (old, old))
    with caplog.at_level(logging.WARNING, logger="cromss.locks"):
        assert main(["pretrain", "--config", str(config)]) == 0
    assert "taken over" in caplog.text and (run / "checkpoints" / "last.ckpt").is_file()


def test_an_unreadable_lock_of_a_live_owner_still_blocks(tmp_path, capsys):
    from cromss.locks import FolderLock, LockHeld

    lock = tmp_path / "cromss.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cromss.locks import FolderLock; "
         f"FolderLock({str(lock)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        lock.write_bytes(b"\xff\xfe garbage")  # the live owner's file, content destroyed
        old = time.time() - 60
        os.utime(lock, (old, old))
        with pytest.raises(LockHeld, match="holds no readable PID and a live process holds it"):
            FolderLock(lock, tmp_path, "run folder").acquire()
        assert lock.read_bytes() == b"\xff\xfe garbage"  # untouched
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(lock, tmp_path, "run folder"):  # owner gone: taken over
        pass


def test_a_just_written_unreadable_lock_blocks(tmp_path, monkeypatch):
    """An empty lock younger than the grace time may belong to a writer between its create and its write."""
    import cromss.locks as locks

    monkeypatch.setattr(locks, "UNREADABLE_GRACE_S", 30.0)
    monkeypatch.setattr(locks.time, "sleep", lambda s: None)
    lock = tmp_path / "cromss.lock"
    lock.write_bytes(b"")
    clock = iter([0.0] + [1000.0] * 10)  # the deadline is set at 0 s; the next look is past it
    monkeypatch.setattr(locks.time, "monotonic", lambda: next(clock))
    with pytest.raises(locks.LockHeld, match="it was written just now"):
        locks.FolderLock(lock, tmp_path, "run folder").acquire()
    assert lock.read_bytes() == b""
