"""The pretraining LightningModule: CromSS (paper Sec. III, Figs. 3 and 5) on top of the method math.

The network is ``self.net`` (a :class:`cromss.models.CromSSNet`), so checkpoint keys are
``net.<CromSSNet keys>``; the resolved config is saved as ``hyper_parameters["config"]`` (a plain
dict). The math lives in :mod:`cromss.selection`, :mod:`cromss.smoothing` and :mod:`cromss.losses`;
this module only wires it together, logs and schedules.
"""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, MulticlassJaccardIndex

from cromss.config import from_dict, to_dict
from cromss.data.preprocess import preprocess_batch
from cromss.errors import DataError
from cromss.losses import consistency_loss, segmentation_loss
from cromss.models import ENCODER_DEPTH, build_model, pad_to_multiple
from cromss.schema import IGNORE_INDEX
from cromss.selection import alpha_at, gamma_at, selection_weights
from cromss.smoothing import smooth_labels
from cromss.training.config import PretrainConfig, resolve_pretrain_config

#: Number of score bins of the noise-detection ROC-AUC (constant memory over any validation set).
AUC_THRESHOLDS = 1001

#: Test-only fault injection (see docs/troubleshooting.md): with ``CROMSS_TEST_FAIL_RANK=r`` the
#: training step of global rank ``r`` raises a DataError once ``global_step >= CROMSS_TEST_FAIL_STEP``
#: (default 0). Used to check that a failing DDP rank fails the whole job with its message.
FAIL_RANK_ENV = "CROMSS_TEST_FAIL_RANK"
FAIL_STEP_ENV = "CROMSS_TEST_FAIL_STEP"
#: Test-only: ``CROMSS_TEST_SAMPLE_LOG=path`` appends "epoch step rank id..." per training batch to
#: ``path.rank<r>``; ``CROMSS_TEST_STALL_STEP=n`` makes every rank hang at global step n (after the
#: checkpoint of step n), so a test can kill -9 the job mid-epoch at a known point.
SAMPLE_LOG_ENV = "CROMSS_TEST_SAMPLE_LOG"
STALL_STEP_ENV = "CROMSS_TEST_STALL_STEP"


class ClassMean(Metric):
    """Per-class mean of a pixel quantity over an epoch (sums and counts; synced across ranks)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, labels: Tensor) -> None:
        """values [B,H,W] float, labels [B,H,W] int (IGNORE_INDEX skipped)."""
        keep = labels != IGNORE_INDEX
        classes = labels[keep].long()
        self.total += torch.bincount(classes, weights=values[keep].double(), minlength=self.num_classes)
        self.count += torch.bincount(classes, minlength=self.num_classes).double()

    def compute(self) -> Tensor:
        """[C] means; NaN for classes without pixels."""
        return torch.where(self.count > 0, self.total / self.count.clamp(min=1), torch.nan)


def one_hot_targets(labels: Tensor, num_classes: int, beta: float = 0.0) -> Tensor:
    """Eq. (13) with mu = 0: ``(1 - beta) Z + beta / C`` at labelled pixels, all-zero rows at ignored ones.

    labels [B,H,W] int -> [B,C,H,W] float32.
    """
    labelled = labels != IGNORE_INDEX
    safe = torch.where(labelled, labels, torch.zeros_like(labels)).long()
    z = torch.nn.functional.one_hot(safe, num_classes).permute(0, 3, 1, 2).float()
    z = (1.0 - beta) * z + beta / num_classes
    return z * labelled.unsqueeze(1)


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of the global RNGs for one (rank, epoch): fixed, so a resumed run replays the same stream."""
    return (seed + rank + 1_000_003 * epoch) % (2**32)


class CromSSModule(L.LightningModule):
    """CromSS pretraining (or its ablations: single-modal, no selection, other smoothing)."""

    def __init__(self, config: PretrainConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, PretrainConfig) else from_dict(PretrainConfig, config)
        cfg = resolve_pretrain_config(cfg)
        self.cfg = cfg
        self.save_hyperparameters({"config": to_dict(cfg)})
        self.net = build_model(cfg.model)
        self.modalities: list[str] = list(cfg.model.modalities)
        self.num_classes = cfg.model.num_classes
        self.class_names = list(cfg.data.classes)
        # consistency pairs (student, target): each modality learns from every other one (eq. 1)
        multimodal = len(self.modalities) > 1 and cfg.method.consistency
        self.pairs = [(s, t) for s in self.modalities for t in self.modalities if s != t] if multimodal else []

        def per_modality(factory):
            return torch.nn.ModuleDict({m: factory() for m in self.modalities})

        def jaccard():
            return MulticlassJaccardIndex(self.num_classes, average="macro", ignore_index=IGNORE_INDEX)

        self.val_miou_noisy = per_modality(jaccard)
        self.val_miou_true = per_modality(jaccard)
        self.val_noise_auc = per_modality(lambda: BinaryAUROC(thresholds=AUC_THRESHOLDS, validate_args=False))
        self.train_w_l = per_modality(lambda: ClassMean(self.num_classes))
        self.train_w_e = per_modality(lambda: ClassMean(self.num_classes))
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._val_loss_epoch: tuple[int, float] | None = None
        #: epoch the fit starts at (0, or the resumed epoch); see on_fit_start
        self.first_epoch = 0
        self._seeded_epoch: int | None = None
        #: optimizer steps skipped because the loss was NaN/Inf (logged as train/skipped_steps, checkpointed)
        self.skipped_steps = 0

    # ------------------------------------------------------------------ helpers
    def _inputs(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        missing = [m for m in self.modalities if m not in batch]
        if missing:
            raise DataError(f"batch lacks modality '{missing[0]}' (keys: {sorted(batch)})")
        return {m: batch[m] for m in self.modalities}

    def _forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Logits per modality; inputs whose size does not divide by 32 are padded and the logits cropped
        back (tiles of your own data need not be multiples of the U-Net's stride)."""
        inputs = self._inputs(batch)
        height, width = next(iter(inputs.values())).shape[-2:]
        divisor = 2**ENCODER_DEPTH
        if height % divisor == 0 and width % divisor == 0:
            return self.net(inputs)
        padded = {m: pad_to_multiple(x, divisor)[0] for m, x in inputs.items()}
        return {m: logits[..., :height, :width] for m, logits in self.net(padded).items()}

    def fractional_epoch(self, batch_idx: int) -> float:
        """Epoch + fraction of it done: alpha and gamma ramp per step, not per epoch."""
        total = self.trainer.num_training_batches
        fraction = batch_idx / total if isinstance(total, int | float) and math.isfinite(total) and total > 0 else 0.0
        return self.current_epoch + fraction

    def sync_selection(self) -> bool:
        """Thresholds over all ranks' batches: method.sync_selection, or (None) when world size > 1."""
        setting = self.cfg.method.sync_selection
        if setting is not None:
            return setting
        return self._trainer is not None and self.trainer.world_size > 1

    def targets(self, batch: dict[str, Any]) -> Tensor:
        """Soft targets Z' [B,C,H,W] of eq. (13) for the configured smoothing."""
        method = self.cfg.method
        if method.smoothing != "spatial_temporal":
            return one_hot_targets(batch["label"], self.num_classes, method.effective_beta)
        for key in ("labels_all_seasons", "season"):
            if key not in batch:
                raise DataError(f"method.smoothing 'spatial_temporal' needs batch key '{key}' (keys: {sorted(batch)})")
        smoothed = smooth_labels(batch["labels_all_seasons"], batch["season"], self.num_classes,
                                 beta=method.beta, mu=method.mu, sigma=method.sigma, ignore_index=IGNORE_INDEX,
                                 num_timestamps=batch.get("num_seasons"))
        # the fed label may be masked (invalid pixels) where the seasonal stack is not
        return smoothed * (batch["label"] != IGNORE_INDEX).unsqueeze(1)

    def weights(self, probs: dict[str, Tensor], labels: Tensor, alpha: float, gamma: float,
                selection: bool) -> dict[str, dict[str, Tensor]]:
        """W_l and W_e per modality (Fig. 5); without selection: 1 on labelled pixels, 0 elsewhere."""
        if not selection:
            labelled = (labels != IGNORE_INDEX).float()
            return {m: {"w_l": labelled, "w_e": labelled} for m in probs}
        return selection_weights(probs, labels, alpha, gamma, self.num_classes, IGNORE_INDEX,
                                 enhance=self.cfg.method.enhance, sync=self.sync_selection())

    def objective(self, logits: dict[str, Tensor], probs: dict[str, Tensor], targets: Tensor,
                  weights: dict[str, dict[str, Tensor]]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. (1) with eqs. (6)-(7): sum_d L_s(Q_d | Z', W_l^d) + sum_d L_c(P_d' || Q_d | W_e^d')."""
        dice = self.cfg.method.dice
        terms = {f"seg_{m}": segmentation_loss(logits[m], targets, weights[m]["w_l"], dice=dice)
                 for m in self.modalities}
        for student, target in self.pairs:
            # W_e of the TARGET modality weighs the term that trains the student (eq. 7, Fig. 5)
            terms[f"cons_{student}"] = self.cfg.method.consistency_weight * consistency_loss(
                logits[student], probs[target], weights[target]["w_e"])
        return torch.stack(list(terms.values())).sum(), terms

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # compact batches (stored dtypes) are normalised, flipped and rotated here, on the device
        return preprocess_batch(self, batch)

    # ------------------------------------------------------------------ training
    def _reseed(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg.seed, self.global_rank, epoch)
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self._seeded_epoch = epoch

    def on_fit_start(self) -> None:
        # Lightning builds the FIRST epoch's data iterator (and prefetches a batch) before
        # on_train_epoch_start, so that epoch is seeded here; ``first_epoch`` is set by pretrain()
        # from the checkpoint when resuming (the loop state is restored only after this hook)
        self._reseed(self.first_epoch)

    def on_train_epoch_start(self) -> None:
        # per-rank, per-epoch seeds: ranks augment differently; a resumed run replays the same stream
        if self.current_epoch != self._seeded_epoch:
            self._reseed(self.current_epoch)

    def _maybe_inject_failure(self) -> None:
        rank = os.environ.get(FAIL_RANK_ENV)
        if rank is not None and int(rank) == self.global_rank and self.global_step >= int(
                os.environ.get(FAIL_STEP_ENV, "0")):
            raise DataError(f"injected failure on rank {self.global_rank} at step {self.global_step} "
                            f"(test hook {FAIL_RANK_ENV})")

    def _test_hooks(self, batch: dict[str, Any]) -> None:
        log = os.environ.get(SAMPLE_LOG_ENV)
        if log:
            with open(f"{log}.rank{self.global_rank}", "a") as handle:
                handle.write(f"{self.current_epoch} {self.global_step} {self.global_rank} {' '.join(batch['id'])}\n")
        stall = os.environ.get(STALL_STEP_ENV)
        if stall is not None and self.global_step == int(stall):
            if log:
                with open(f"{log}.stalled{self.global_rank}", "w") as handle:
                    handle.write(str(self.global_step))
            while True:
                time.sleep(1)

    def _all_ranks_finite(self, loss: Tensor) -> bool:
        """True if the loss is finite on every rank (all ranks must skip together, or DDP would hang)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad > 0)

    def _skip_step(self, loss: Tensor, batch_size: int) -> None:
        self.skipped_steps += 1
        warnings.warn(
            f"non-finite loss ({float(loss.detach()):g} on rank {self.global_rank}) "
            f"at epoch {self.current_epoch} "
            f"step {self.global_step}: optimizer step skipped, weights and BatchNorm statistics unchanged "
            f"(train/skipped_steps = {self.skipped_steps}); see docs/troubleshooting.md",
            UserWarning, stacklevel=2,
        )
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=batch_size, on_step=True,
                 on_epoch=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """Eq. (1) for one batch; returns None (no backward, no optimizer step) if the loss is NaN/Inf."""
        self._maybe_inject_failure()
        if SAMPLE_LOG_ENV in os.environ or STALL_STEP_ENV in os.environ:
            self._test_hooks(batch)
        # the forward pass updates BatchNorm running statistics: keep a copy to undo a NaN batch's update
        buffers = list(self.net.buffers())
        saved_buffers = [b.detach().clone() for b in buffers]
        method, labels = self.cfg.method, batch["label"]
        logits = self._forward(batch)
        probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
        epoch = self.fractional_epoch(batch_idx)
        alpha, gamma = alpha_at(epoch, method.alpha0, method.rampup_epochs), gamma_at(epoch, method.rampup_epochs)
        targets = self.targets(batch)
        started = time.perf_counter()
        weights = self.weights(probs, labels, alpha, gamma, method.selection)
        selection_ms = 1000.0 * (time.perf_counter() - started)
        loss, terms = self.objective(logits, probs, targets, weights)
        if not self._all_ranks_finite(loss):
            # a NaN/Inf loss would poison the weights (and Adam's moments) for good: skip this step
            self._skip_step(loss, labels.shape[0])
            with torch.no_grad():
                for buffer, saved in zip(buffers, saved_buffers):
                    buffer.copy_(saved)
            return None
        self._log_train(loss, terms, alpha, gamma, selection_ms, weights, labels)
        return loss

    def _log_train(self, loss: Tensor, terms: dict[str, Tensor], alpha: float, gamma: float,
                   selection_ms: float, weights: dict[str, dict[str, Tensor]], labels: Tensor) -> None:
        batch_size = labels.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size, on_step=True, on_epoch=True)
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size, on_step=True, on_epoch=True)
        self.log("train/alpha", alpha, batch_size=batch_size, on_step=True, on_epoch=False)
        self.log("train/gamma", gamma, batch_size=batch_size, on_step=True, on_epoch=False)
        self.log("train/selection_ms", selection_ms, batch_size=batch_size, on_step=True, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=batch_size,
                 on_step=True, on_epoch=False)
        for m in self.modalities:
            self.train_w_l[m].update(weights[m]["w_l"].detach(), labels)
            self.train_w_e[m].update(weights[m]["w_e"].detach(), labels)

    def on_train_epoch_end(self) -> None:
        for kind, metrics in (("w_l", self.train_w_l), ("w_e", self.train_w_e)):
            for m in self.modalities:
                means = metrics[m].compute()  # synced over ranks: identical everywhere
                for c, value in enumerate(means.tolist()):
                    if not math.isnan(value):
                        self.log(f"train/{kind}_{m}/{self.class_names[c]}", value, sync_dist=True)
                metrics[m].reset()
        # the plateau scheduler is stepped here (not by Lightning) so that last.ckpt, written later in
        # this hook chain, already holds its post-step state: resuming then reproduces the run exactly
        if self._plateau is not None and self._val_loss_epoch and self._val_loss_epoch[0] == self.current_epoch:
            self._plateau.step(self._val_loss_epoch[1])

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        labels = batch["label"]
        batch_size = labels.shape[0]
        logits = self._forward(batch)
        probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
        # validation loss: the plain objective (one-hot noisy labels, every labelled pixel weight 1),
        # comparable across epochs and methods; it drives ReduceLROnPlateau and best.ckpt
        plain = self.weights(probs, labels, 1.0, 0.0, selection=False)
        loss, terms = self.objective(logits, probs, one_hot_targets(labels, self.num_classes), plain)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=batch_size)
        for name, value in terms.items():
            self.log(f"val/{name}", value, sync_dist=True, batch_size=batch_size)
        truth = batch.get("label_true")
        for m in self.modalities:
            predicted = logits[m].argmax(dim=1)
            self.val_miou_noisy[m].update(predicted, labels)
            self.log(f"val/miou_noisy_{m}", self.val_miou_noisy[m], batch_size=batch_size)
            if truth is not None:
                self.val_miou_true[m].update(predicted, truth)
                self.log(f"val/miou_true_{m}", self.val_miou_true[m], batch_size=batch_size)
        if truth is not None:
            self._update_noise_auc(probs, labels, truth, batch_size)

    def _update_noise_auc(self, probs: dict[str, Tensor], labels: Tensor, truth: Tensor, batch_size: int) -> None:
        """ROC-AUC of 1 - W_l (at the current alpha, as in training) for flagging label != label_true."""
        method = self.cfg.method
        epoch = 0.0 if self.trainer.sanity_checking else float(self.current_epoch + 1)
        alpha, gamma = alpha_at(epoch, method.alpha0, method.rampup_epochs), gamma_at(epoch, method.rampup_epochs)
        weights = self.weights(probs, labels, alpha, gamma, selection=True)
        known = (labels != IGNORE_INDEX) & (truth != IGNORE_INDEX)
        noisy = (labels != truth)[known].long()
        for m in self.modalities:
            self.val_noise_auc[m].update(1.0 - weights[m]["w_l"][known], noisy)
            self.log(f"val/noise_auc_{m}", self.val_noise_auc[m], batch_size=batch_size)

    def on_validation_end(self) -> None:
        # here (not in on_validation_epoch_end) callback_metrics already hold this epoch's val/loss
        if self.trainer.sanity_checking:
            return
        value = self.trainer.callback_metrics.get("val/loss")
        if value is not None:
            self._val_loss_epoch = (self.current_epoch, float(value))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        optim = self.cfg.optim
        factory = torch.optim.Adam if optim.optimizer == "adam" else torch.optim.AdamW
        optimizer = factory(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
        if optim.scheduler == "plateau":
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=optim.factor, patience=optim.patience)
            if self._plateau_state is not None:
                self._plateau.load_state_dict(self._plateau_state)
        return optimizer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["cromss_plateau_scheduler"] = self._plateau.state_dict()
        checkpoint["cromss_skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("cromss_plateau_scheduler")
        self.skipped_steps = int(checkpoint.get("cromss_skipped_steps", 0))
