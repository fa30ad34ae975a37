"""Pretraining (paper Sec. III-IV): config, LightningModule, run folders and ``pretrain()``.

Public API: :class:`PretrainConfig` (and its sections :class:`MethodConfig`, :class:`OptimConfig`,
:class:`TrainerConfig`), :class:`CromSSModule`, :func:`pretrain`, :func:`run_dir_of`. The module and
``pretrain`` import lightning; they are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cromss.training.config import MethodConfig, OptimConfig, PretrainConfig, TrainerConfig

if TYPE_CHECKING:  # pragma: no cover
    from cromss.training.module import CromSSModule
    from cromss.training.run import pretrain, run_dir_of

__all__ = ["CromSSModule", "MethodConfig", "OptimConfig", "PretrainConfig", "TrainerConfig", "pretrain",
           "run_dir_of"]


def __getattr__(name: str) -> Any:
    if name == "CromSSModule":
        from cromss.training.module import CromSSModule

        return CromSSModule
    if name in ("pretrain", "run_dir_of", "resolve_config"):
        from cromss.training import run

        return getattr(run, name)
    raise AttributeError(f"module 'cromss.training' has no attribute {name!r}")
