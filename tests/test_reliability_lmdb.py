"""LMDB integrity (issue 17): a truncated data.mdb is a one-line DataError (not SIGBUS), flipped bytes inside
a value are found by ``cromss data verify`` from the per-value checksums that cromss writes with an LMDB."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from fixtures import TINY_ENCODER

from cromss.cli import main as cli_main
from cromss.data.readers import LmdbReader, read_checksums, write_lmdb

ROOT = Path(__file__).resolve().parents[1]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("cromss: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("demo")
    make_demo(out, locations=6, size=32, dw_train=1, dw_test=1, seed=2, layouts=("lmdb",))
    return out


@pytest.fixture
def nol(demo, tmp_path) -> Path:
    shutil.copytree(demo / "nol", tmp_path / "nol")
    return tmp_path / "nol"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != "lock.mdb"}


def test_write_lmdb_stores_the_sha256_of_every_value(tmp_path):
    arrays = [(np.full((2, 3), i, np.uint8), f"id{i}") for i in range(3)]
    path = tmp_path / "x.lmdb"
    assert write_lmdb(path, arrays, map_size=1 << 22) == 3
    sums = read_checksums(path / "checksums.sha256")
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:  # independently: sha256 of the stored bytes, and they unpickle to the input
        for i in range(3):
            data = txn.get(str(i).encode())
            assert sums[str(i)] == hashlib.sha256(data).hexdigest()
            assert pickle.loads(data) == (arrays[i][0].tobytes(), (2, 3), f"id{i}")
    env.close()
    assert oct(os.stat(path / "checksums.sha256").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_truncated_data_mdb_is_a_one_line_error_not_sigbus(nol, tmp_path):
    """``truncate -s 8192 <demo>/nol/dw_labels.lmdb/data.mdb`` then pretrain / verify: exit 2, one line."""
    data = nol / "dw_labels.lmdb" / "data.mdb"
    os.truncate(data, 8192)
    before = _snapshot(nol)
    result = subprocess.run([sys.executable, "-m", "cromss", "data", "verify", str(nol)], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = _one_line(result.stderr)
    assert result.returncode == 2  # not 135 (SIGBUS)
    assert f"LMDB {nol / 'dw_labels.lmdb'}: data.mdb is truncated (8192 bytes, its metadata needs" in line
    config = tmp_path / "cfg.yaml"
    config.write_text(f"data: {{kind: nol, root: {nol}, crop_size: 32, batch_size: 2, val_fraction: 0.34}}\n"
                      f"model: {{encoder: {TINY_ENCODER}}}\noutput_dir: {tmp_path / 'runs'}\n")
    result = subprocess.run([sys.executable, "-m", "cromss", "pretrain", "--config", str(config),
                             "trainer.accelerator=cpu", "trainer.max_epochs=1"], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    line = _one_line(result.stderr)
    assert result.returncode == 2 and "dw_labels.lmdb: data.mdb is truncated" in line
    assert _snapshot(nol) == before


def test_truncated_below_the_meta_pages_is_one_line(nol):
    os.truncate(nol / "dw_labels.lmdb" / "data.mdb", 100)
    from cromss.errors import DataError

    with pytest.raises(DataError, match=r"dw_labels\.lmdb cannot be opened: .*only 100 bytes: truncated"):
        len(LmdbReader(nol / "dw_labels.lmdb"))


def _flip_a_byte_of_value(path: Path, key: int) -> None:
    """Flip one byte in the middle of the stored value of ``key`` inside data.mdb (found by its content)."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        value = bytes(txn.get(str(key).encode()))
    env.close()
    data = bytearray((path / "data.mdb").read_bytes())
    middle = len(value) // 2
    at = data.find(value[middle - 32: middle + 32])
    assert at >= 0 and data.find(value[middle - 32: middle + 32], at + 1) == -1
    data[at + 32] ^= 0xFF
    (path / "data.mdb").write_bytes(bytes(data))


def test_verify_finds_flipped_bytes_inside_an_image(nol, capsys):
    _flip_a_byte_of_value(nol / "0k_251k_uint8_s2c.lmdb", 3)  # (before this process maps the LMDB)
    before = _snapshot(nol)
    assert cli_main(["data", "verify", str(nol)]) == 2
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert "0k_251k_uint8_s2c.lmdb: 1 value(s) differ from their checksums (keys 3)" in line
    # the three other LMDBs (S1, noisy and true labels) match; the image still decodes: only checksums see it
    assert captured.out.count("all checksums match") == 3 and captured.out.count("CORRUPT") == 1
    assert _snapshot(nol) == before


def test_verify_writes_checksums_for_foreign_lmdbs_and_never_replaces_them(nol, capsys):
    sums = nol / "dw_labels.lmdb" / "checksums.sha256"
    original = sums.read_bytes()
    sums.unlink()  # an LMDB from elsewhere
    assert cli_main(["data", "verify", str(nol / "dw_labels.lmdb")]) == 0
    assert "no checksums to compare" in capsys.readouterr().out and not sums.exists()
    assert cli_main(["data", "verify", "--write-checksums", str(nol / "dw_labels.lmdb")]) == 0
    assert sums.read_bytes() == original  # the same sums as written with the LMDB
    sums.write_text(original.decode().replace(original.decode()[:64], "0" * 64, 1))
    assert cli_main(["data", "verify", "--write-checksums", str(nol / "dw_labels.lmdb")]) == 2
    assert sums.read_text().startswith("0" * 64)  # not replaced
