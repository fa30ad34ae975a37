"""The ``trainer:`` keys passed to Lightning, checked with the rest of the config.

Two checks, both before anything is written:

* :func:`validate_trainer_keys` (called by the ``validate()`` of the pretraining and the fine-tuning
  ``TrainerConfig``, so ``--print-config`` refuses them too): ``precision``, ``accelerator`` and
  ``strategy`` must be names Lightning knows — taken from Lightning's own tables (its precision
  literals, ``AcceleratorRegistry``, ``StrategyRegistry``), not from a list kept here — and
  ``devices`` must be an int >= 1, -1, 'auto' or a device list string ('0,1').
* :func:`check_trainer_runtime` (called by ``pretrain()`` and ``finetune()`` before the run folder
  exists): builds Lightning's own accelerator connector with the run's values, which is where
  Lightning refuses an accelerator that this machine lacks (``gpu`` without CUDA), more devices than
  there are, or a strategy that needs a missing package; its refusal becomes one ConfigError line.
"""

from __future__ import annotations

import logging
import re
import typing
import warnings

from cromss.errors import ConfigError

__all__ = ["accelerator_names", "check_trainer_runtime", "precision_names", "strategy_names",
           "validate_trainer_keys"]

_DEVICE_LIST = re.compile(r"^\s*\[?\s*\d+(\s*,\s*\d+)*\s*,?\s*\]?\s*$")


def precision_names() -> tuple[str, ...]:
    """Lightning's precision values (``'32-true'``, ``'bf16-mixed'``, ... and the legacy '16', 'bf16', ...)."""
    from lightning.fabric import connector

    names: list[str] = []
    for alias in ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_STR_ALIAS"):
        names += [str(v) for v in typing.get_args(getattr(connector, alias, typing.Literal[()]))]
    return tuple(dict.fromkeys(names))


def accelerator_names() -> tuple[str, ...]:
    """'auto', 'gpu' and every accelerator registered with Lightning (cpu, cuda, mps, tpu, ...)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators()))


def strategy_names() -> tuple[str, ...]:
    """'auto' and every strategy registered with Lightning (ddp, ddp_spawn, fsdp, deepspeed, ...)."""
    from lightning.pytorch.strategies import StrategyRegistry

    return ("auto", *StrategyRegistry.available_strategies())


def validate_trainer_keys(precision: str, accelerator: str, devices: int | str, strategy: str | None = None,
                          extra_precisions: tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming the ``trainer.*`` key whose value Lightning would refuse."""
    allowed = (*extra_precisions, *precision_names())
    if precision not in allowed:
        raise ConfigError(f"config key 'trainer.precision': {precision!r} is not one of {list(allowed)}")
    accelerators = accelerator_names()
    if accelerator not in accelerators:
        raise ConfigError(f"config key 'trainer.accelerator': {accelerator!r} is not one of {list(accelerators)}")
    if strategy is not None:
        strategies = strategy_names()
        if strategy not in strategies:
            raise ConfigError(f"config key 'trainer.strategy': {strategy!r} is not one of {list(strategies)}")
    if isinstance(devices, bool):
        raise ConfigError(f"config key 'trainer.devices': {devices!r} must be a number of devices, -1 or 'auto'")
    if isinstance(devices, int):
        if devices < 1 and devices != -1:
            raise ConfigError(f"config key 'trainer.devices': {devices} must be >= 1, -1 or 'auto'")
    elif devices not in ("auto", "-1") and not _DEVICE_LIST.match(devices):
        raise ConfigError(f"config key 'trainer.devices': {devices!r} must be a number of devices, -1, 'auto' "
                          "or a list of device indices such as '0,1'")


def check_trainer_runtime(accelerator: str, devices: int | str, precision: str, strategy: str = "auto",
                          num_nodes: int = 1) -> None:
    """Raise ConfigError (one line) when Lightning cannot run these settings on this machine.

    Builds the connector ``lightning.Trainer`` builds first; it writes nothing and starts no process.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric",
                                                  "lightning.pytorch.utilities.rank_zero")]
    levels = [logger.level for logger in quiet]
    try:
        for logger in quiet:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the real Trainer repeats its warnings where they matter
            _AcceleratorConnector(accelerator=accelerator, devices=devices, precision=precision,
                                  strategy=strategy, num_nodes=num_nodes)
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        raise ConfigError(
            f"config keys 'trainer.accelerator' / 'devices' / 'strategy' / 'precision' ({accelerator!r}, "
            f"{devices!r}, {strategy!r}, {precision!r}) cannot run on this machine: {message}"
        ) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)

