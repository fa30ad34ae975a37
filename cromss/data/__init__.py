"""Data layer: readers of the published layouts, datasets, DataModule, demo data, statistics.

Public API: :class:`DataConfig`, :func:`build_dataset`, :class:`CromSSDataModule`
(imported lazily so that ``import cromss.data`` stays light), ``cromss.data.demo.make_demo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cromss.data.config import DataConfig

if TYPE_CHECKING:  # pragma: no cover
    from cromss.data.datamodule import CromSSDataModule
    from cromss.data.datasets import build_dataset

__all__ = ["CromSSDataModule", "DataConfig", "build_dataset"]


def __getattr__(name: str) -> Any:
    # torch / lightning are imported on first use, not by `cromss --help`
    if name == "build_dataset":
        from cromss.data.datasets import build_dataset

        return build_dataset
    if name == "CromSSDataModule":
        from cromss.data.datamodule import CromSSDataModule

        return CromSSDataModule
    raise AttributeError(f"module 'cromss.data' has no attribute {name!r}")
