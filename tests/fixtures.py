"""Session fixtures shared by several test files (imported by tests/conftest.py).

Each fixture builds its data once per pytest process (once per xdist worker: the builds take well under a
second, so no cross-process lock is needed) under ``tmp_path_factory``. The folders they return are
READ-ONLY for the tests: a test that changes files copies the folder into its own ``tmp_path`` first
(``shutil.copytree``), as tests/test_reliability_runs.py does with its finished run.

``TINY_ENCODER`` is the encoder of runs whose network size is not what a test is about: timm's
``test_resnet`` (a ResNet of basic blocks with BatchNorm, 0.8 M parameters for a CromSS U-Net pair, 9 MB
checkpoints) instead of ResNet-18 (22 M parameters, 258 MB checkpoints with Adam state). Tests that check
ResNet key names, torchvision/timm layouts or published checkpoints keep ``resnet18``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["TINY_ENCODER", "nol_demo_32", "dw_demo_64"]

#: smp name of the tiny encoder (timm ``test_resnet`` through smp's ``tu-`` prefix; no download).
TINY_ENCODER = "tu-test_resnet"


@pytest.fixture(scope="session")
def nol_demo_32(tmp_path_factory) -> Path:
    """NoLDO-S12 GeoTIFF demo: 6 locations x 4 seasons of 32 px S1/S2/DW chips (seed 11); the ``nol`` root."""
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("nol_demo_32")
    make_demo(out, locations=6, size=32, dw_train=1, dw_test=1, seed=11, layouts=("geotiff",))
    return out / "nol"


@pytest.fixture(scope="session")
def dw_demo_64(tmp_path_factory) -> Path:
    """Downstream DW demo in LMDB: 6 train and 2 test tiles of 64 px (seed 0); the ``dw`` root."""
    from cromss.data.demo import make_demo

    out = tmp_path_factory.mktemp("dw_demo_64")
    make_demo(out, locations=2, size=64, seed=0, dw_train=6, dw_test=2, layouts=("lmdb",))
    return out / "dw"
