"""Reliability round 3 (issue 21): litdata streams cannot run code, are verified, and convert all or nothing.

A hostile stream is built from a real one (``cromss data convert``) by rewriting a field of every item as a
pickled object whose ``__reduce__`` would create a marker file: the marker must not exist afterwards and
the error line names the ``index.json``. Corrupt and incomplete streams, conversion arguments, locks,
full and read-only targets: one line ``cromss: error: ...``, exit 2, nothing half-written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cromss.cli import main
from cromss.data import DataConfig, build_dataset

ROOT = Path(__file__).resolve().parents[1]


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
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert status == 2, captured
    assert len(lines) == 1 and lines[0].startswith("cromss: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


class Payload:
    """Unpickling this creates ``marker`` (stands for any code a pickle can run)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=5, size=32, dw_train=2, dw_test=1, seed=3, layouts=("geotiff",))
    return out / "nol"


@pytest.fixture(scope="module")
def stream(demo_root, tmp_path_factory) -> Path:
    """A stream written by `cromss data convert` (copied by the tests that change it)."""
    out = tmp_path_factory.mktemp("stream") / "st"
    assert main(["data", "convert", str(demo_root), str(out), "--to", "stream", "--chunk-bytes", "64KB",
                 "--val-fraction", "0.4", "--format", "geotiff"]) == 0
    return out


@pytest.fixture
def copy(stream, tmp_path) -> Path:
    target = tmp_path / "st"
    shutil.copytree(stream, target)
    return target


def pretrain_args(root: str, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--config", str(ROOT / "configs/demo/pretrain-cromss-midf.yaml"), f"output_dir={out}",
            "name=tiny", "data.format=stream", f"data.root={root}", "data.crop_size=32", "data.batch_size=2",
            "data.num_workers=0", "model.encoder=resnet18", "model.decoder_channels=[8,8,8,8,8]",
            "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "trainer.progress_bar=false", "trainer.num_sanity_val_steps=0", "trainer.accelerator=cpu", *extra]


def rewrite_with_pickle(split: Path, marker: Path) -> None:
    """Rewrite every item of ``split`` with litdata's own writer, its 'id' field a pickled :class:`Payload`."""
    from litdata import StreamingDataset
    from litdata.streaming.writer import BinaryWriter

    plain = StreamingDataset(str(split))
    items = [plain[i] for i in range(len(plain))]
    for path in split.iterdir():
        path.unlink()
    writer = BinaryWriter(str(split), chunk_bytes=1 << 20)
    for index, item in enumerate(items):
        writer.add_item(index, {**item, "id": Payload(str(marker))})
    writer.done()
    writer._merge_no_wait()
    formats = json.loads((split / "index.json").read_text())["config"]["data_format"]
    assert "pickle" in formats  # the hostile stream declares what litdata would unpickle


def test_the_payload_is_live(tmp_path):
    """The test's payload really runs when unpickled (so its absence below means it was not run)."""
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


def test_a_hostile_stream_is_refused_before_any_item_is_read(copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    rewrite_with_pickle(copy / "train", marker)
    line = one_error_line(capsys, main(pretrain_args(str(copy), tmp_path / "runs")))
    assert f"stream index {copy / 'train' / 'index.json'} declares item format(s) ['pickle']" in line
    assert "run code" in line
    assert not marker.exists()
    assert not (tmp_path / "runs").exists()
    line = one_error_line(capsys, main(["data", "verify", str(copy)]))
    assert str(copy / "train" / "index.json") in line and not marker.exists()


def test_a_hostile_remote_stream_is_refused_from_its_index_json(copy, tmp_path, capsys, monkeypatch):
    """A remote root (litdata's 'local:' scheme stands for a bucket): index.json is checked where litdata gets it."""
    import litdata.utilities.dataset_utilities as utilities

    monkeypatch.setattr(utilities, "_LITDATA_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "PWNED"
    rewrite_with_pickle(copy / "train", marker)
    url = f"local://{copy}"
    line = one_error_line(capsys, main(pretrain_args(url, tmp_path / "runs")))
    assert f"stream index {url}/train/index.json declares item format(s) ['pickle']" in line
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_the_refusing_serializers_guard_even_without_the_index_check(copy, tmp_path, monkeypatch):
    """Last line of defence: were the index check skipped (an index.json swapped after it), litdata still
    cannot unpickle, because every serializer cromss does not write refuses."""
    import cromss.data.stream as stream_module
    from cromss.errors import DataError

    marker = tmp_path / "PWNED"
    rewrite_with_pickle(copy / "train", marker)
    monkeypatch.setattr(stream_module, "check_stream_index", lambda root, split: [])
    monkeypatch.setattr(stream_module, "check_index", lambda index, where: [])
    dataset = build_dataset(DataConfig(kind="nol", root=str(copy), format="stream", crop_size=32), "train",
                            train=False)
    with pytest.raises(DataError, match="stream item format 'pickle' refused"):
        dataset[0]
    assert not marker.exists()


@pytest.mark.parametrize("declared", [["str", "int", "graph:pickle"], ["str", "tensor", "numpy"],
                                      ["video", "numpy"], "pickle"])
def test_every_format_cromss_does_not_write_is_refused(declared):
    from cromss.data.stream_check import check_index
    from cromss.errors import DataError

    index = {"chunks": [], "config": {"data_format": declared if isinstance(declared, list) else [declared]}}
    with pytest.raises(DataError, match="refused before reading any item"):
        check_index(index, "x/index.json")
    check_index({"chunks": [], "config": {"data_format": ["str", "int", "numpy", "no_header_numpy:11"]}}, "ok")


# ----------------------------------------------------------------------------- verify, corrupt, incomplete
def test_verify_passes_a_fresh_stream_and_records_every_file(stream, capsys):
    import hashlib

    assert main(["data", "verify", str(stream)]) == 0
    assert "all sizes and checksums match" in capsys.readouterr().out
    files = json.loads((stream / "cromss_stream.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(stream)) for p in stream.rglob("*") if p.is_file() and p.parent != stream)
    assert sorted(files) == on_disk
    for name, record in files.items():  # an independent hash of every file
        data = (stream / name).read_bytes()
        assert record == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _flip_the_id_bytes(chunk: Path) -> None:
    """Flip the first byte of every item's 'id' string (litdata layout: item count, item offsets, then per
    item the field sizes followed by the fields; 'id' is the first field)."""
    import numpy as np

    data = bytearray(chunk.read_bytes())
    count = int(np.frombuffer(bytes(data[:4]), np.uint32)[0])
    offsets = np.frombuffer(bytes(data[4:8 + 4 * count]), np.uint32)
    fields = len(json.loads((chunk.parent / "index.json").read_text())["config"]["data_format"])
    for start in offsets[:count]:
        data[int(start) + 4 * fields] = 0xFF  # not UTF-8
    chunk.write_bytes(bytes(data))


def test_flipped_bytes_in_a_chunk_are_one_line_when_read_and_found_by_verify(copy, tmp_path, capsys):
    chunks = sorted((copy / "train").glob("chunk-*.bin"))
    for chunk in chunks:  # every training item: whichever the shuffled batch reads is corrupt
        _flip_the_id_bytes(chunk)
    line = one_error_line(capsys, main(pretrain_args(str(copy), tmp_path / "runs")))
    assert "cannot be decoded (UnicodeDecodeError" in line and "a chunk is corrupt" in line
    assert f"cromss data verify {copy}" in line
    line = one_error_line(capsys, main(["data", "verify", str(copy)]))
    assert f"{len(chunks)} file(s) differ from their checksums (train/{chunks[0].name}" in line


def test_a_truncated_chunk_is_reported_as_truncated(copy, tmp_path, capsys):
    chunk = sorted((copy / "train").glob("chunk-*.bin"))[0]
    size = chunk.stat().st_size
    os.truncate(chunk, size // 2)
    line = one_error_line(capsys, main(pretrain_args(str(copy), tmp_path / "runs")))
    assert f"stream chunk {chunk} is {size // 2} bytes but" in line and "truncated" in line
    assert "cannot write run folder" not in line and not (tmp_path / "runs").exists()
    line = one_error_line(capsys, main(["data", "verify", str(copy)]))
    assert f"1 file(s) of another size than recorded (train/{chunk.name})" in line


def test_a_missing_index_json_is_reported_as_missing(copy, tmp_path, capsys):
    (copy / "val" / "index.json").unlink()
    line = one_error_line(capsys, main(pretrain_args(str(copy), tmp_path / "runs")))
    assert f"split 'val' has no index.json ({copy / 'val' / 'index.json'}): the stream is incomplete" in line
    assert "cannot write run folder" not in line and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- convert: arguments, lock, targets
@pytest.mark.parametrize(("extra", "expected"), [
    (["--workers", "0"], "--workers 0: need at least 1 conversion process"),
    (["--workers", "-1"], "--workers -1: need at least 1 conversion process"),
    (["--chunk-bytes", "0"], "--chunk-bytes '0': expected a size > 0"),
    (["--chunk-bytes", "lots"], "--chunk-bytes 'lots': expected a size > 0"),
    (["--chunk-bytes=-5MB"], "--chunk-bytes '-5MB': expected a size > 0"),
    (["--val-fraction", "1.5"], "--val-fraction 1.5: must be in [0, 1)"),
])
def test_convert_checks_its_arguments_before_writing(demo_root, tmp_path, capsys, extra, expected):
    out = tmp_path / "st"
    line = one_error_line(capsys, main(["data", "convert", str(demo_root), str(out), *extra]))
    assert expected in line
    assert list(tmp_path.iterdir()) == []  # no OUT, no temporary folder, no lock file


def test_convert_into_its_own_source_is_refused(demo_root, tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(demo_root, source)
    line = one_error_line(capsys, main(["data", "convert", str(source), str(tmp_path), "--format", "geotiff"]))
    assert "would hold its own source" in line


def test_a_second_conversion_into_the_same_folder_stops(demo_root, stream, tmp_path, capsys):
    from cromss.locks import FolderLock

    out = tmp_path / "st"
    with FolderLock(tmp_path / "st.cromss.lock", out, "stream folder"):  # what a running conversion holds
        line = one_error_line(capsys, main(["data", "convert", str(demo_root), str(out), "--format", "geotiff"]))
    assert f"stream folder {out} is in use by process {os.getpid()}" in line
    assert not out.exists()
    shutil.copytree(stream, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    line = one_error_line(capsys, main(["data", "convert", str(demo_root), str(out), "--format", "geotiff"]))
    assert f"output folder {out} exists and is not empty" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@contextlib.contextmanager
def small_mount(path: Path, options: str):
    """A tmpfs mounted at ``path`` (e.g. 'size=200k' or 'ro'); skip when this machine cannot mount."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); the simulated case below runs")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_convert_with_two_workers_into_a_full_tmpfs_is_one_line_and_never_hangs(demo_root, tmp_path):
    """The issue's hang: 2 conversion workers into a tmpfs that fills up. A real process on a real tmpfs."""
    with small_mount(tmp_path / "mnt", "size=96k") as mount:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "cromss", "data", "convert", str(demo_root), str(mount / "st"), "--format",
             "geotiff", "--workers", "2", "--chunk-bytes", "16KB"],
            capture_output=True, text=True, timeout=240, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
        elapsed = time.monotonic() - started
        lines = result.stderr.splitlines()
        assert result.returncode == 2, result.stderr
        assert lines == [lines[0]] and lines[0].startswith(f"cromss: error: cannot write stream folder {mount / 'st'}")
        assert "no space left on the device" in lines[0] and "wrote" not in result.stdout
        assert elapsed < 120
        assert sorted(p.name for p in mount.iterdir()) == []  # no OUT, no temporary folder, no lock left


@pytest.mark.parametrize(("options", "cause"), [("size=96k", "no space left on the device"),
                                                ("ro", "read-only file system")])
def test_convert_into_a_full_or_read_only_tmpfs_leaves_nothing(demo_root, tmp_path, capsys, options, cause):
    with small_mount(tmp_path / "mnt", options) as mount:
        out = mount / "st"
        line = one_error_line(capsys, main(["data", "convert", str(demo_root), str(out), "--format", "geotiff",
                                            "--chunk-bytes", "16KB"]))
        assert line.startswith("cromss: error: cannot write ") and cause in line and str(mount) in line
        assert sorted(p.name for p in mount.iterdir()) == []


@pytest.mark.parametrize(("code", "cause"), [(errno.ENOSPC, "no space left on the device"),
                                             (errno.EROFS, "read-only file system")])
def test_convert_write_failures_leave_nothing_simulated(demo_root, tmp_path, capsys, monkeypatch, code, cause):
    """The same, without a mount: the chunk writer's file write fails (as litdata's open/write would)."""
    from litdata.streaming import writer

    def fail(self, raw_data, filename, compress=None):
        raise OSError(code, os.strerror(code), os.path.join(self._cache_dir, filename))

    monkeypatch.setattr(writer.BinaryWriter, "write_chunk_to_file", fail)
    out = tmp_path / "st"
    line = one_error_line(capsys, main(["data", "convert", str(demo_root), str(out), "--format", "geotiff"]))
    assert line.startswith(f"cromss: error: cannot write stream folder {out}") and cause in line
    assert list(tmp_path.iterdir()) == []


def test_converted_stream_trains(stream, tmp_path, capsys):
    """The stream written in-process by litdata's writer is read by litdata for a (one-batch) run."""
    assert main(pretrain_args(str(stream), tmp_path / "runs")) == 0
    assert (tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt").is_file()
    config = yaml.safe_load((tmp_path / "runs" / "tiny" / "config.yaml").read_text())
    assert config["data"]["format"] == "stream"


def test_a_truncated_chunk_of_a_remote_stream_is_reported_as_truncated(copy, tmp_path, monkeypatch):
    """Remote root: litdata copies the chunk into its cache; the short copy is named, not 'corrupt' or a wait."""
    import litdata.utilities.dataset_utilities as utilities

    from cromss.errors import DataError

    monkeypatch.setattr(utilities, "_LITDATA_CACHE_DIR", str(tmp_path / "cache"))
    for chunk in (copy / "train").glob("chunk-*.bin"):
        os.truncate(chunk, 1000)
    dataset = build_dataset(DataConfig(kind="nol", root=f"local://{copy}", format="stream", crop_size=32), "train",
                            train=False)
    with pytest.raises(DataError, match=r"chunk chunk-0-\d+\.bin is 1000 bytes, its index records \d+: truncated"):
        dataset[0]
