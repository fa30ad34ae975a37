"""Checkpoints: atomic writes (a kill mid-write never leaves a truncated file) and weights-only reads
(a checkpoint that pickles code is refused with a message and never executed) (issue 7)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cromss.checkpoints import TEMP_SUFFIX, AtomicCheckpointIO, atomic_torch_save, safe_torch_load
from cromss.cli import main as cli_main
from cromss.errors import CheckpointError

PACKAGE = Path(__file__).resolve().parents[1] / "cromss"


class _Payload:
    """Pickles as a call to ``Path.touch(marker)``: loading it with weights_only=False would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.ckpt"
    state = {
        "state_dict": {"net.encoders.s2.conv1.weight": torch.zeros(4, 13, 7, 7)},
        "callbacks": _Payload(marker),
    }
    torch.save(state, path)
    assert not marker.exists()
    return path, marker


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    path = tmp_path / "sub" / "a.ckpt"
    atomic_torch_save({"x": torch.arange(3)}, path)
    assert torch.equal(safe_torch_load(path)["x"], torch.arange(3))
    assert not path.with_name(path.name + TEMP_SUFFIX).exists()


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_torch_save({"epoch": 2, "bad": Unpicklable()}, path)
    assert safe_torch_load(path) == {"epoch": 1}
    assert not path.with_name(path.name + TEMP_SUFFIX).exists()


@pytest.mark.over_budget(reason="two writer processes (torch and Lightning imported) killed mid-stream")
def test_kill_during_writes_never_leaves_a_truncated_checkpoint(tmp_path):
    """A writer process saving ~8 MB checkpoints in a loop is SIGKILLed mid-stream (twice)."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import torch
        from cromss.checkpoints import atomic_torch_save
        step = 0
        while True:
            atomic_torch_save({{"step": step, "w": torch.full((2_000_000,), float(step))}}, {str(path)!r})
            step += 1
    """)
    for delay in (0.25, 0.6):
        path.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            deadline = time.monotonic() + 60
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(delay)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        state = safe_torch_load(path)  # complete: every value the same step
        assert torch.all(state["w"] == float(state["step"]))


def test_malicious_checkpoint_is_refused_not_executed(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"refused to load checkpoint .*evil\.ckpt: it pickles the Python object"
    ):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)  # asked for unsafe: still safe
    from cromss.weights import encoder_state_dict

    with pytest.raises(CheckpointError, match="evil.ckpt"):
        encoder_state_dict(path, modality="s2")
    assert not marker.exists()


def test_malicious_checkpoint_through_the_cli(tmp_path, capsys):
    path, marker = _malicious_checkpoint(tmp_path)
    status = cli_main(["export-encoder", str(path), "--modality", "s2", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert status == 2 and "refused to load" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip", b"plain text, not torch"])
def test_corrupt_or_truncated_checkpoint_names_the_file(tmp_path, content):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.ckpt"):
        safe_torch_load(path)
    with pytest.raises(CheckpointError, match="not found"):
        safe_torch_load(tmp_path / "missing.ckpt")


def test_truncated_real_checkpoint(tmp_path):
    path = tmp_path / "full.ckpt"
    atomic_torch_save({"state_dict": {"w": torch.randn(1000)}}, path)
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 20):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"full\.ckpt"):
            safe_torch_load(path)


def test_checkpoint_io_plugin_round_trip(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "epoch=1.ckpt"
    io.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["epoch=1.ckpt"]


def test_every_torch_load_in_the_package_is_weights_only():
    """Grep: every ``torch.load(`` call in cromss passes ``weights_only=True`` (no unsafe loads)."""
    calls = 0
    for file in PACKAGE.rglob("*.py"):
        text = file.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            # the call's argument text up to the matching parenthesis
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            arguments = text[match.end() : end]
            assert "weights_only=True" in arguments, (
                f"{file.name}: torch.load({arguments}) is not weights-only"
            )
            calls += 1
    assert calls >= 3
