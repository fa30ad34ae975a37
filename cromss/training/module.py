"""The pretraining LightningModule: CromSS (paper Sec. III, Figs. 3 and 5) on top of the method math.

The network is ``self.net`` (a :class:`cromss.models.CromSSNet`), so checkpoint keys are
``net.<CromSSNet keys>``; the resolved config is saved as ``hyper_parameters["config"]`` (a plain
dict). The math lives in :mod:`cromss.selection`, :mod:`cromss.smoothing` and :mod:`cromss.losses`;
this module only wires it together, logs and schedules.

A training step reads no value back to the host (docs/pretraining.md, "Host synchronisations"): the
label checks are done by the loader, the non-finite-loss skip is decided on the device (a flag
all-reduced over the ranks, handed to the fused Adam as ``found_inf``), and the logged values are
tensors. ``tests/test_host_syncs.py`` counts the conversions of a real step.
"""

from __future__ import annotations

import math
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

from cromss.checkpoints import METRICS_KEY, checkpoint_metrics
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

class ClassMean(Metric):
    """Per-class mean of a pixel quantity over an epoch (sums and counts; synced across ranks)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor, labels: Tensor, ok: Tensor | None = None) -> None:
        """values [B,H,W] float, labels [B,H,W] int (IGNORE_INDEX skipped); ``ok`` (bool scalar): False
        leaves the sums unchanged (a skipped step). No value is read back to the host."""
        keep = labels != IGNORE_INDEX
        if ok is not None:
            keep = keep & ok
        # ignored pixels go to an extra bucket that is dropped: fixed shapes, no boolean indexing
        classes = torch.where(keep, labels.long(), torch.full_like(labels, self.num_classes, dtype=torch.long))
        flat = classes.reshape(-1)
        values = torch.where(keep, values.double(), torch.zeros((), dtype=torch.float64, device=values.device))
        total = torch.zeros(self.num_classes + 1, dtype=torch.float64, device=values.device)
        self.total += total.scatter_add_(0, flat, values.reshape(-1))[: self.num_classes]
        count = torch.zeros(self.num_classes + 1, dtype=torch.float64, device=values.device)
        self.count += count.scatter_add_(0, flat, keep.reshape(-1).double())[: self.num_classes]

    def compute(self) -> Tensor:
        """[C] means; NaN for classes without pixels."""
        return torch.where(self.count > 0, self.total / self.count.clamp(min=1), torch.nan)


class FiniteMean(Metric):
    """Batch-size weighted mean of a scalar over an epoch that leaves out skipped (non-finite) steps.

    Logged through ``self.log(name, metric)``: the step value is the batch's value (NaN for a skipped
    step), the epoch value the mean over the steps that trained, synced over ranks. Accumulates in
    float32 in the order Lightning's own mean does, so finite runs log the same numbers as before.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.zeros((), dtype=torch.float32), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: float, ok: Tensor) -> None:
        """value: scalar; weight: the batch size; ok: bool scalar (False = a skipped step)."""
        zero = torch.zeros((), dtype=torch.float32, device=value.device)
        self.total = self.total + torch.where(ok, value.detach().float() * weight, zero)
        self.weight = self.weight + torch.where(ok, zero + weight, zero)

    def compute(self) -> Tensor:
        """The mean; NaN when no step counted."""
        safe = torch.where(self.weight > 0, self.weight, torch.ones_like(self.weight))
        return torch.where(self.weight > 0, self.total / safe, torch.full_like(self.total, math.nan))


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
        loss_terms = ["loss", *(f"seg_{m}" for m in self.modalities), *(f"cons_{s}" for s, _ in self.pairs)]
        self.train_means = torch.nn.ModuleDict({name: FiniteMean() for name in loss_terms})
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None
        self._val_loss_epoch: tuple[int, float] | None = None
        #: epoch the fit starts at (0, or the resumed epoch); see on_fit_start
        self.first_epoch = 0
        self._seeded_epoch: int | None = None
        # optimizer steps skipped because the loss was NaN/Inf: a device counter (no host read per step),
        # read by the `skipped_steps` property, logged per epoch as train/skipped_steps, checkpointed
        self.register_buffer("_skipped_total", torch.zeros((), dtype=torch.int64), persistent=False)
        #: per batch of the current epoch: bit r set = rank r had a non-finite loss (0 = trained)
        self._epoch_skip_ranks: Tensor | None = None
        #: per batch of the current epoch: its global step
        self._epoch_skip_steps: Tensor | None = None
        self._epoch_skipped_before: Tensor | None = None
        self._bn_saved: list[Tensor] | None = None
        self._skip_flag: Tensor | None = None
        #: how a non-finite step is skipped: 'found_inf' (fused Adam) or 'scaler' (GradScaler); see _arm_skip
        self.skip_mode = "found_inf"

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a NaN/Inf loss so far (same on every rank). Reads the device counter."""
        return int(self._skipped_total)

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped_total.fill_(int(value))

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

    def targets(self, batch: dict[str, Any], validate: bool = True) -> Tensor:
        """Soft targets Z' [B,C,H,W] of eq. (13) for the configured smoothing.

        ``validate``: check the label / season values (host reads); the training step passes False,
        its loader checked every sample (:mod:`cromss.data.core`)."""
        method = self.cfg.method
        if method.smoothing != "spatial_temporal":
            return one_hot_targets(batch["label"], self.num_classes, method.effective_beta)
        for key in ("labels_all_seasons", "season"):
            if key not in batch:
                raise DataError(f"method.smoothing 'spatial_temporal' needs batch key '{key}' (keys: {sorted(batch)})")
        smoothed = smooth_labels(batch["labels_all_seasons"], batch["season"], self.num_classes,
                                 beta=method.beta, mu=method.mu, sigma=method.sigma, ignore_index=IGNORE_INDEX,
                                 num_timestamps=batch.get("num_seasons"), validate=validate)
        # the fed label may be masked (invalid pixels) where the seasonal stack is not
        return smoothed * (batch["label"] != IGNORE_INDEX).unsqueeze(1)

    def weights(self, probs: dict[str, Tensor], labels: Tensor, alpha: float, gamma: float,
                selection: bool, validate: bool = True) -> dict[str, dict[str, Tensor]]:
        """W_l and W_e per modality (Fig. 5); without selection: 1 on labelled pixels, 0 elsewhere.

        ``validate`` as in :meth:`targets`."""
        if not selection:
            labelled = (labels != IGNORE_INDEX).float()
            return {m: {"w_l": labelled, "w_e": labelled} for m in probs}
        return selection_weights(probs, labels, alpha, gamma, self.num_classes, IGNORE_INDEX,
                                 enhance=self.cfg.method.enhance, sync=self.sync_selection(), validate=validate)

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
        datamodule = getattr(self.trainer, "datamodule", None)
        if getattr(self, "batch_preprocess", None) is None and hasattr(datamodule, "preprocess"):
            datamodule.preprocess  # noqa: B018 - built (band statistics read) now, not inside the first step
        self._bn_saved = [torch.empty_like(b) for b in self.net.buffers()]

    def on_train_epoch_start(self) -> None:
        # per-rank, per-epoch seeds: ranks augment differently; a resumed run replays the same stream
        if self.current_epoch != self._seeded_epoch:
            self._reseed(self.current_epoch)
        total = self.trainer.num_training_batches
        size = int(total) if isinstance(total, int | float) and math.isfinite(total) else 0
        self._epoch_skip_ranks = torch.zeros(size, dtype=torch.int64, device=self.device)
        self._epoch_skip_steps = torch.zeros(size, dtype=torch.int64, device=self.device)
        self._epoch_skipped_before = self._skipped_total.clone()

    # ------------------------------------------------------------------ the non-finite-loss skip
    def _nonfinite_ranks(self, loss: Tensor) -> Tensor:
        """int64 scalar: bit r set if rank r's loss is NaN/Inf (0 = finite on every rank; with more than
        63 ranks only "some rank": -1). One all_reduce of a [world] flag vector, no host read, so every
        rank takes the same decision."""
        import torch.distributed as dist

        bad = (~torch.isfinite(loss.detach())).to(torch.float32)
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1 or not (dist.is_available() and dist.is_initialized()):
            return bad.to(torch.int64)
        flags = torch.zeros(world, dtype=torch.float32, device=loss.device)
        flags[self.global_rank] = bad
        dist.all_reduce(flags)
        hit = (flags > 0).to(torch.int64)
        if world > 63:
            return -hit.amax()
        return (hit << torch.arange(world, device=loss.device)).sum()

    def _uses_grad_scaler(self) -> bool:
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        return scaler is not None

    def _arm_skip(self, skip: Tensor) -> None:
        """Hand the skip decision to the optimizer step (and on_after_backward) without a host read.

        'found_inf' (no GradScaler: 32-bit, bf16-mixed): the fused Adam reads
        ``optimizer.found_inf`` (as under GradScaler): 1 skips the update of weights and moments on the
        device and reverts the step count. 'scaler' (16-mixed with GradScaler): GradScaler owns
        ``found_inf``; :meth:`on_after_backward` makes the gradients NaN, so GradScaler's own check skips.
        """
        self._skip_flag = skip
        if self._trainer is None or self.skip_mode != "found_inf":
            return
        for optimizer in self.trainer.optimizers:
            optimizer.found_inf = skip.to(torch.float32)

    def on_after_backward(self) -> None:
        if self._skip_flag is None:
            return
        # after backward: batch_norm saved its running statistics for the backward pass (version check)
        self._keep_buffers_unless(self._skip_flag)
        if self.skip_mode != "scaler":
            return
        # 16-mixed: poison this step's gradients so that GradScaler's own inf check skips it
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            factor = torch.where(self._skip_flag, torch.full((), math.nan, device=self._skip_flag.device),
                                 torch.ones((), device=self._skip_flag.device))
            torch._foreach_mul_(grads, factor)

    def _keep_buffers_unless(self, skip: Tensor) -> None:
        """Undo this step's BatchNorm-statistics update when ``skip`` (torch.where; no host read).

        Called after backward: batch_norm keeps its running-statistics inputs for the backward pass."""
        if self._bn_saved is None:
            return
        for buffer, saved in zip(self.net.buffers(), self._bn_saved):
            torch.where(skip, saved, buffer, out=buffer)

    def _record_skip(self, ranks: Tensor, batch_idx: int) -> None:
        self._skipped_total += (ranks != 0).to(torch.int64)
        if self._epoch_skip_ranks is not None and batch_idx < self._epoch_skip_ranks.numel():
            self._epoch_skip_ranks[batch_idx] = ranks
            self._epoch_skip_steps[batch_idx] = self.global_step

    def _report_skips(self) -> None:
        """Once per epoch (one host read): log train/skipped_steps and warn with the steps and ranks."""
        self.log("train/skipped_steps", self._skipped_total.to(torch.float32), on_step=False, on_epoch=True)
        before = self._epoch_skipped_before
        skipped = int(self._skipped_total - before) if before is not None else 0
        if skipped == 0 or self.global_rank != 0:
            return
        where = ""
        if self._epoch_skip_ranks is not None and self._epoch_skip_ranks.numel():
            hit = self._epoch_skip_ranks != 0
            steps, ranks = self._epoch_skip_steps[hit].tolist(), self._epoch_skip_ranks[hit].tolist()
            shown = [f"{step} (rank {', '.join(str(r) for r in range(63) if bits >> r & 1)})" if bits > 0
                     else str(step) for step, bits in zip(steps, ranks)][:20]
            where = f" at global step {', '.join(shown)}{' ...' if len(steps) > 20 else ''}"
        total = self.trainer.num_training_batches
        of = f" of {int(total)}" if isinstance(total, int | float) and math.isfinite(total) else ""
        warnings.warn(
            f"non-finite loss (NaN/Inf) in {skipped}{of} training steps of epoch {self.current_epoch}{where}: "
            f"optimizer step skipped on every rank each time, weights, Adam moments and BatchNorm statistics "
            f"unchanged (train/skipped_steps = {self.skipped_steps}); see docs/troubleshooting.md",
            UserWarning, stacklevel=2,
        )

    # ------------------------------------------------------------------ the step
    def _device_scalars(self, values: list[float]) -> list[Tensor]:
        """Python numbers -> device scalars by fill kernels (the value travels as a kernel argument): no
        host-to-device copy, which on CUDA would synchronise (as ``torch.tensor(value, device=...)`` does)."""
        return [torch.full((), float(value), dtype=torch.float32, device=self.device) for value in values]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Eq. (1) for one batch. Reads no value back to the host. A NaN/Inf loss on any rank still goes
        through backward, but the optimizer step is skipped on every rank (weights, Adam moments and step
        count unchanged) and this step's BatchNorm-statistics update is undone."""
        # the forward pass updates BatchNorm running statistics: keep a copy to undo a NaN batch's update
        if self._bn_saved is not None:
            torch._foreach_copy_(self._bn_saved, list(self.net.buffers()))
        method, labels = self.cfg.method, batch["label"]
        logits = self._forward(batch)
        probs = {m: out.float().softmax(dim=1) for m, out in logits.items()}
        epoch = self.fractional_epoch(batch_idx)
        alpha, gamma = alpha_at(epoch, method.alpha0, method.rampup_epochs), gamma_at(epoch, method.rampup_epochs)
        # labels and seasons were checked by the loader (cromss.data.core): no host reads here
        targets = self.targets(batch, validate=False)
        started = time.perf_counter()
        weights = self.weights(probs, labels, alpha, gamma, method.selection, validate=False)
        selection_ms = 1000.0 * (time.perf_counter() - started)
        loss, terms = self.objective(logits, probs, targets, weights)
        ranks = self._nonfinite_ranks(loss)
        skip = ranks != 0
        self._record_skip(ranks, batch_idx)
        self._arm_skip(skip)  # the BatchNorm statistics are restored in on_after_backward
        self._log_train(loss, terms, alpha, gamma, selection_ms, weights, labels, ~skip)
        return loss

    def _log_train(self, loss: Tensor, terms: dict[str, Tensor], alpha: float, gamma: float,
                   selection_ms: float, weights: dict[str, dict[str, Tensor]], labels: Tensor, ok: Tensor) -> None:
        batch_size = labels.shape[0]
        # a progress-bar value is converted to a Python number at EVERY step by Lightning: only with a bar
        bar = self._trainer is not None and self.trainer.progress_bar_callback is not None
        for name, value in (("loss", loss), *terms.items()):
            mean = self.train_means[name]
            mean(value, batch_size, ok)
            self.log(f"train/{name}", mean, prog_bar=bar and name == "loss", batch_size=batch_size, on_step=True,
                     on_epoch=True)
        # Python numbers would each be a blocking upload (Lightning makes them device tensors by a copy)
        scalars = [alpha, gamma, self.optimizers().param_groups[0]["lr"]]
        # host wall time measures the selection only where the work is synchronous: on the CPU
        timed = self.device.type == "cpu"
        values = self._device_scalars([*scalars, selection_ms] if timed else scalars)
        for index, name in enumerate(("alpha", "gamma", "lr")):
            self.log(f"train/{name}", values[index], batch_size=batch_size, on_step=True, on_epoch=False)
        if timed:
            self.log("train/selection_ms", values[3], batch_size=batch_size, on_step=True, on_epoch=True)
        for m in self.modalities:
            self.train_w_l[m].update(weights[m]["w_l"].detach(), labels, ok)
            self.train_w_e[m].update(weights[m]["w_e"].detach(), labels, ok)

    def on_train_epoch_end(self) -> None:
        for kind, metrics in (("w_l", self.train_w_l), ("w_e", self.train_w_e)):
            for m in self.modalities:
                means = metrics[m].compute()  # synced over ranks: identical everywhere
                for c, value in enumerate(means.tolist()):
                    if not math.isnan(value):
                        self.log(f"train/{kind}_{m}/{self.class_names[c]}", value, sync_dist=True)
                metrics[m].reset()
        self._report_skips()
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
        plain = self.weights(probs, labels, 1.0, 0.0, selection=False, validate=False)
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
        weights = self.weights(probs, labels, alpha, gamma, selection=True, validate=False)
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
        # fused: one kernel per step, and it reads `found_inf` (see _arm_skip) to skip a non-finite step on
        # the device. With GradScaler (16-mixed on a GPU) and gradient clipping the plain Adam is used:
        # GradScaler would unscale inside a fused step, after Lightning's clipping (docs/pretraining.md)
        scaler = self._uses_grad_scaler()
        clip = self._trainer is not None and bool(self.trainer.gradient_clip_val)
        fused = not (scaler and clip)
        self.skip_mode = "scaler" if scaler else "found_inf"
        optimizer = factory(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
        if not scaler:
            # nothing is scaled, so nothing unscales inside the step: Lightning may clip gradients before
            # it (it refuses to for optimizers that declare amp-scaling support, as fused ones do)
            optimizer._step_supports_amp_scaling = False
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
        # the epoch's metrics (val/loss, mIoU, noise AUC, ...): a weights-only best.ckpt still says what it is
        if self._trainer is not None:
            checkpoint[METRICS_KEY] = checkpoint_metrics(self.trainer.callback_metrics)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._plateau_state = checkpoint.get("cromss_plateau_scheduler")
        self.skipped_steps = int(checkpoint.get("cromss_skipped_steps", 0))
