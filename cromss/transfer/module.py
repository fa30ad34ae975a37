"""The Lightning module of a fine-tuning run (CE + Dice, frozen or fine-tuned encoder); evaluating it."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cromss.checkpoints import METRICS_KEY, checkpoint_metrics
from cromss.config import from_dict, to_dict
from cromss.data.preprocess import AUG_KEY, preprocess_batch
from cromss.errors import DataError
from cromss.metrics import SCALAR_METRICS, SegmentationMetrics
from cromss.schema import IGNORE_INDEX
from cromss.transfer.config import FinetuneConfig
from cromss.transfer.models import build_model, load_source_weights, pad_to_multiple


def _lightning_module_class() -> type:
    import lightning.pytorch as pl

    from cromss.losses import segmentation_loss

    class FinetuneModule(pl.LightningModule):
        """An smp segmentation model trained with CE + Dice on labelled pixels (eq. 6 with one-hot targets).

        Frozen mode: encoder parameters get no gradient and the encoder's BatchNorm layers stay in
        eval mode (running statistics unchanged); re-applied at every training epoch and batch start
        because Lightning toggles train()/eval() around validation.
        """

        def __init__(self, config: dict[str, Any]) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.cfg = from_dict(FinetuneConfig, copy.deepcopy(config))
            self.model = build_model(self.cfg)
            self.val_metrics = SegmentationMetrics(self.cfg.classes)
            self.apply_freeze()

        def apply_freeze(self) -> None:
            if self.cfg.frozen:
                self.model.freeze_encoder()

        def forward(self, x: Tensor) -> Tensor:
            multiple = int(getattr(self.model.encoder, "output_stride", 32))
            padded, (height, width) = pad_to_multiple(x, multiple)
            return self.model(padded)[..., :height, :width]

        def _inputs(self, batch: dict[str, Any]) -> Tensor:
            if self.cfg.modality not in batch:
                raise DataError(f"batch has no '{self.cfg.modality}' input (keys: {sorted(batch)})")
            return batch[self.cfg.modality]

        def _loss(self, logits: Tensor, label: Tensor) -> Tensor:
            labelled = label != IGNORE_INDEX
            one_hot = F.one_hot(torch.where(labelled, label, 0), self.cfg.classes).permute(0, 3, 1, 2)
            return segmentation_loss(logits, one_hot.to(logits.dtype), labelled.to(logits.dtype), dice=self.cfg.dice)

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            # compact batches (stored dtypes) are normalised, flipped and rotated here, on the device
            return preprocess_batch(self, batch)

        def on_train_epoch_start(self) -> None:
            self.apply_freeze()

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            self.apply_freeze()

        def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
            logits = self(self._inputs(batch))
            loss = self._loss(logits, batch["label"])
            self.log("train_loss", loss, on_step=True, on_epoch=True, batch_size=logits.shape[0])
            return loss

        def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
            logits = self(self._inputs(batch))
            loss = self._loss(logits, batch["label"])
            self.log("val_loss", loss, on_epoch=True, batch_size=logits.shape[0])
            self.val_metrics.update(logits, batch["label"])

        def on_validation_epoch_end(self) -> None:
            result = self.val_metrics.compute()
            self.val_metrics.reset()
            for name in SCALAR_METRICS:
                value = result[name]
                self.log(f"val_{name}", 0.0 if math.isnan(value) else value, sync_dist=False)

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            # the epoch's val_* metrics: the weights-only best.ckpt still says what it scored
            if self._trainer is not None:
                checkpoint[METRICS_KEY] = checkpoint_metrics(self.trainer.callback_metrics)

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
            if self.cfg.lr_schedule == "constant":
                return optimizer
            floor = self.cfg.min_lr / self.cfg.lr
            span = self.cfg.cosine_epochs

            def factor(epoch: int) -> float:
                # cosine from lr to min_lr over `span` epochs, then flat at min_lr
                progress = min(epoch, span) / span
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    return FinetuneModule


_MODULE_CLASS: type | None = None


def finetune_module_class() -> type:
    """The LightningModule class (built lazily so importing cromss.transfer stays light)."""
    global _MODULE_CLASS
    if _MODULE_CLASS is None:
        _MODULE_CLASS = _lightning_module_class()
    return _MODULE_CLASS


def build_module(cfg: FinetuneConfig, load_weights: bool = True) -> Any:
    """The FinetuneModule of ``cfg``, with the encoder source loaded when ``load_weights``."""
    module = finetune_module_class()(to_dict(cfg))
    if load_weights:
        module.weights_info = load_source_weights(module.model, cfg)
        module.apply_freeze()
    return module


@torch.no_grad()
def evaluate_model(
    module: Any, loader: Any, num_classes: int, modality: str, limit_batches: int | float | None = None,
    preprocess: Any = None,
) -> dict[str, Any]:
    """Confusion-matrix metrics of ``module`` over a whole data loader (eval mode, no augmentation).

    Compact batches are finished on the module's device by ``preprocess`` (default: the
    ``preprocessor()`` of the loader's dataset).
    """
    was_training = module.training
    module.eval()
    metrics = SegmentationMetrics(num_classes)
    device = next(module.parameters()).device
    total = len(loader) if hasattr(loader, "__len__") else None
    if isinstance(limit_batches, float) and total is not None:
        limit_batches = max(1, int(limit_batches * total))
    for index, batch in enumerate(loader):
        if limit_batches is not None and index >= limit_batches:
            break
        if AUG_KEY in batch:
            prepare = preprocess if preprocess is not None else loader.dataset.preprocessor()
            batch = prepare({k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
        if modality not in batch:
            raise DataError(f"batch has no '{modality}' input (keys: {sorted(batch)})")
        logits = module(batch[modality].to(device))
        metrics.update(logits, batch["label"].to(device))
    module.train(was_training)
    return metrics.compute()
