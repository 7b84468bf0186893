"""The per-subject training loop: per-contrast MSE, foreground-weighted sampling, MI tracking."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.inference import predict_points
from bids_mcsr.inr.losses import batch_loss, heldout_errors, width_step
from bids_mcsr.inr.presets import DEFAULT_MODEL, MI_MIN_EPOCHS, MI_TOLERANCE_NATS, MI_WINDOW, PRESETS
from bids_mcsr.inr.sampling import TrainingSamples
from bids_mcsr.inr.stopping import mean_pairwise_mi, mi_plateaued

log = logging.getLogger("bids_mcsr")
SCHEDULES = ("per-step", "per-epoch")
# Adam's learning rates of the stacks' poses (rotation vector, radians; translation, mm). On the
# robustness benchmark's stack left 2 mm / 2 degrees off (64 x 80 x 64 mm crop, two seeds), one
# rate for both in the network's units (1 = 41 mm there) left 1.4-1.9 mm at 1e-3 (the previous
# release), 1.0-1.7 mm at 3e-2, 0.6-1.4 mm at 1e-1, and ran away (90-160 degrees) at 3e-1.
POSE_LR_RAD = 0.05
SHIFT_LR_MM = 2.0
# The network's learning rate while the acquisition (stack poses or slab widths) learns, x the
# model's: the acquisition leads, as the coarse-to-fine levels below make it. At the fast
# model's 1e-2 the network fitted what a wrong pose or width put where it lay before that came
# right: the unit test's misplaced stack (2 mm phantom) was corrected to 0.68 mm / 0.77 degrees
# against 0.33 / 0.39 at 5e-3; on the robustness benchmark the header-x2 row's T2w lost
# 0.86 dB (crop, two seeds) and the template's whole head with a rectangular slab 1.08 dB
# (T2w, seed 0), where fits that learn neither gained (docs/evaluation.md, "The learning rate").
# Only while they learn: the widths stop when the held-out slices join, and a fit whose poses
# do not learn takes the full rate from there. That took the whole-head tumour pair's T2w
# tumour from -0.92 to +0.03 dB against cubic (real anatomy, seed 0; heads +0.03 / +0.10),
# the crop's five width-learning rows by -0.03..+0.31 dB (two seeds) and the template's whole
# head (rect slab, seeds 0/1; thin slices declared 4 mm, seed 0) T1w +0.07..+0.10, T2w -0.43,
# -0.05, 0.00 dB (docs/evaluation.md, "The full rate once the widths stop").
ACQUISITION_NETWORK_LR_SHARE = 0.5
# Share of the fit over which the hash grid's finer levels (cells under COARSE_MM) come in while
# poses (or slab widths) are learned. With all levels from the start the network fits the misplaced stack's
# details where they lie and the pose stalls: on the robustness benchmark's stack left 2 mm /
# 2 degrees off the residual fell from 0.8-1.7 mm to 0.06-0.17 mm (rows 10 and 13, two seeds,
# the rows it was chosen on); on the 2 mm whole-head phantom with 6 mm slices, an offset of
# 3 mm / 3 degrees was not corrected at all without it and left 0.3 mm / 0.1 degrees with it.
COARSE_TO_FINE = 0.5
COARSE_MM = 10.0
# Share of the epochs trained without the held-out slices: they are scored there, then join the
# training. A held-out slice through a lesion otherwise leaves the network 8 mm without that
# contrast there for the whole fit: on the lesion benchmark's whole-head tumour pair (real
# anatomy, the fit whose held-out slices crossed the lesions) joining halfway took the lesions
# from +0.8 / -1.9 dB over cubic to +2.4 / -0.9 (never holding out: +2.5 / -1.1); joining for the
# last epoch or three, at the end of the cosine schedule, recovered little (docs/evaluation.md,
# "Held-out slices through a lesion").
HELDOUT_JOINS_AT = 0.5


@dataclass
class TrainConfig:
    """Optimisation settings (defaults: the default model's,
    :data:`~bids_mcsr.inr.presets.PRESETS`; see :class:`~bids_mcsr.inr.presets.ModelSpec`).

    ``background_fraction`` of the background voxels join each epoch (all foreground
    voxels do). Adam (``adam_betas``, ``adam_eps``) follows a cosine schedule from ``lr`` to
    ``lr_floor * lr`` over the epochs, stepped per optimiser step or per epoch
    (``schedule``). ``drop_last``: an epoch's last, smaller batch is not trained on. MI early
    stopping needs at least ``min_epochs`` and stops when
    :func:`~bids_mcsr.inr.stopping.mi_plateaued` with ``mi_window``/``mi_tolerance``.
    With ``max_seconds`` training stops once that much wall time is spent (mid-epoch if
    need be) and the cosine learning-rate schedule runs over time instead, so
    models can be compared at equal time. The stacks' acquisition parameters (slice-profile
    widths, rotations, translations) learn at ``width_lr``/``pose_lr``/``shift_lr_mm`` (the
    network meanwhile at ``acquisition_network_lr_share`` x ``lr``; back at ``lr``'s schedule
    when the held-out slices join, unless the poses learn) once
    ``acquisition_warmup`` epochs have fitted the network alone, every
    ``acquisition_every``-th step: the poses from a training batch, the widths from
    ``width_batch_share`` of a batch of held-out slab draws with the network fixed (two draws
    of half as many voxels, :func:`~bids_mcsr.inr.losses.width_step`; a few parameters per
    stack need far fewer voxels than the network does; :meth:`width_evaluations` counts them
    for the budget). Without held-out slices the widths stay at their initial values. While
    poses or widths learn, a hash grid's levels finer than ``coarse_mm`` are brought in over the
    first ``coarse_to_fine`` share of the epochs (:func:`level_weights`; 0: all from the
    start). The held-out error is tracked every epoch until the held-out slices join the
    training, after :meth:`join_epoch` (``heldout_joins_at`` of the epochs; 1: never): the
    slab widths stop learning then.
    """

    epochs: int = PRESETS[DEFAULT_MODEL].epochs
    batch_size: int = PRESETS[DEFAULT_MODEL].batch_size
    lr: float = PRESETS[DEFAULT_MODEL].lr
    adam_betas: tuple[float, float] = PRESETS[DEFAULT_MODEL].adam_betas
    adam_eps: float = PRESETS[DEFAULT_MODEL].adam_eps
    schedule: str = PRESETS[DEFAULT_MODEL].schedule
    lr_floor: float = PRESETS[DEFAULT_MODEL].lr_floor
    drop_last: bool = PRESETS[DEFAULT_MODEL].drop_last
    background_fraction: float = PRESETS[DEFAULT_MODEL].background_fraction
    mi_stopping: bool = True
    mi_window: int = MI_WINDOW
    mi_tolerance: float = MI_TOLERANCE_NATS
    min_epochs: int = MI_MIN_EPOCHS
    min_steps_per_epoch: int = PRESETS[DEFAULT_MODEL].min_steps_per_epoch
    compile: bool = False
    seed: int = 0
    max_seconds: float | None = None
    width_lr: float = 2e-2
    pose_lr: float = POSE_LR_RAD
    acquisition_network_lr_share: float = ACQUISITION_NETWORK_LR_SHARE
    shift_lr_mm: float = SHIFT_LR_MM
    acquisition_warmup: int = 1
    acquisition_every: int = 4
    width_batch_share: float = 0.25
    coarse_to_fine: float = COARSE_TO_FINE
    coarse_mm: float = COARSE_MM
    heldout_joins_at: float = HELDOUT_JOINS_AT

    def for_acquisition(self, learns: bool) -> "TrainConfig":
        """The settings a fit trains with: the network's rate (and the schedule's floor) at
        ``acquisition_network_lr_share`` of ``lr`` when the stacks' poses or widths learn."""
        return replace(self, lr=self.lr * self.acquisition_network_lr_share) if learns else self

    def join_epoch(self) -> int:
        """The last epoch without the held-out slices (``epochs`` when they never join)."""
        return min(self.epochs, max(1, math.ceil(self.heldout_joins_at * self.epochs)))

    def effective_batch_size(self, n_epoch_samples: int) -> int:
        """``batch_size``, reduced (not below 512) so that small subjects still get
        ``min_steps_per_epoch`` optimiser steps per epoch."""
        batch = min(self.batch_size, max(512, n_epoch_samples // self.min_steps_per_epoch))
        return int(max(1, min(batch, n_epoch_samples)))

    def width_batch(self, batch_size: int) -> int:
        """Held-out voxel draws of one slab-width step (two draws of half as many voxels)."""
        return max(1, int(batch_size * self.width_batch_share))

    def width_evaluations(self, evaluations_per_epoch: int) -> int:
        """Network evaluations the slab-width steps add to an epoch of
        ``evaluations_per_epoch``."""
        return int(evaluations_per_epoch * self.width_batch_share) // self.acquisition_every

    def steps_per_epoch(self, n_epoch_samples: int, batch_size: int) -> int:
        """Optimiser steps of one epoch: whole batches only with ``drop_last`` (the remainder
        waits for the next epoch), else the last, smaller batch too."""
        if self.drop_last:
            return n_epoch_samples // batch_size
        return -(-n_epoch_samples // batch_size)

    def scheduler(self, opt: torch.optim.Optimizer,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
        """The cosine schedule over the whole fit, in units of ``schedule``."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        length = self.epochs * (steps_per_epoch if self.schedule == "per-step" else 1)
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, length), eta_min=self.lr * self.lr_floor)


@dataclass
class TrainHistory:
    contrasts: list[str]
    epoch: list[int] = field(default_factory=list)
    loss: dict[str, list[float]] = field(default_factory=dict)
    mi: list[float | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    heldout: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0  # lowest held-out error (information)
    stopped_epoch: int = 0
    stopped_early: bool = False
    heldout_joined_after: int | None = None  # the epoch after which the held-out slices trained
    lr: list[float] = field(default_factory=list)  # the network's rate at each epoch's end

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "mi": self.mi, "seconds": self.seconds,
                "lr": self.lr,
                "heldout_mse": self.heldout, "best_epoch": self.best_epoch,
                "heldout_joined_after": self.heldout_joined_after}


def level_weights(cell_mm: list[float], progress: float, coarse_mm: float) -> np.ndarray:
    """Weights of a hash grid's levels, coarse to fine (BARF, Lin et al. 2021): levels of cells
    of at least ``coarse_mm`` always 1, the finer ones brought in one after another, each along
    a half cosine, as ``progress`` goes from 0 to 1 (all 1 from then on)."""
    cells = np.asarray(cell_mm, float)
    fine = np.cumsum(cells < coarse_mm) - 1  # index among the fine levels, -1 for the coarse
    alpha = np.clip(progress, 0.0, 1.0) * max(1, int((cells < coarse_mm).sum()))
    ramp = np.clip(alpha - fine, 0.0, 1.0)
    return np.where(cells >= coarse_mm, 1.0, (1 - np.cos(np.pi * ramp)) / 2)


def _optimiser(model: torch.nn.Module, acquisition: StackAcquisition,
               config: TrainConfig) -> torch.optim.Adam:
    """Adam over the network (and the poses when they learn), PyTorch's fused kernel: the same
    update as the default one in a single pass over the 2-3 M hash-table entries (measured
    17 ms -> 2 ms a step on one CPU thread, ``benchmarks/profile_fit.py``)."""
    groups = [{"params": list(model.parameters()), "lr": config.lr}]
    if acquisition.rotation.requires_grad:
        groups += [{"params": [acquisition.rotation], "lr": config.pose_lr},
                   {"params": [acquisition.translation], "lr": config.shift_lr_mm}]
    return torch.optim.Adam(groups, betas=config.adam_betas, eps=config.adam_eps, fused=True)


class _Fit:
    """The state of one training run: optimisers, schedule, time budget and history."""

    def __init__(self, model: torch.nn.Module, acquisition: StackAcquisition,
                 samples: TrainingSamples, contrasts: list[str], config: TrainConfig,
                 device: torch.device) -> None:
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        self.full_lr = config.lr
        config = config.for_acquisition(acquisition.learns)
        self.model, self.acquisition, self.config, self.device = model, acquisition, config, device
        self.contrasts, self.n_c = contrasts, len(contrasts)
        self.samples = samples.to(device)
        model.to(device)
        acquisition.to(device)
        self.hist = TrainHistory(contrasts, loss={c: [] for c in contrasts},
                                 heldout={c: [] for c in contrasts})
        self.held_idx = self.samples.heldout_indices()
        self.best_score = np.inf
        n_epoch = self.samples.n_epoch(config.background_fraction)
        self.batch_size = config.effective_batch_size(n_epoch)
        self.steps_per_epoch = config.steps_per_epoch(n_epoch, self.batch_size)
        mixed = len(self.samples.batch_layout(config.background_fraction, self.batch_size)) > 1
        whole = self.samples.whole_batches(config.background_fraction, self.batch_size)
        if mixed and whole:  # only the batches that follow the layout: one shape for compile
            self.steps_per_epoch = min(self.steps_per_epoch, whole)
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model, dynamic=False) if config.compile else model)
        self.opt = _optimiser(model, acquisition, config)
        self.width_opt = (torch.optim.Adam([acquisition.log_width], lr=config.width_lr,
                                           betas=config.adam_betas, eps=config.adam_eps, fused=True)
                          if acquisition.log_width.requires_grad and self.held_idx.size else None)
        self.sched = config.scheduler(self.opt, self.steps_per_epoch)
        learning = acquisition.rotation.requires_grad or self.width_opt is not None
        encoding = getattr(model, "encoding", None)  # a hash grid's levels come in coarse to fine
        self.levels = (encoding if config.coarse_to_fine and learning
                       and hasattr(encoding, "level_weight") else None)
        self.t0 = time.perf_counter()
        self.out_of_time = False

    @property
    def joined(self) -> bool:
        """Whether the held-out slices train (:meth:`join_heldout`)."""
        return self.hist.heldout_joined_after is not None

    def join_heldout(self, epoch: int) -> None:
        """From now on train on the held-out slices too; the slab widths (learned on them)
        stay as they are, so unless the poses learn the network takes its full rate."""
        self.samples = replace(self.samples, heldout=np.zeros_like(self.samples.heldout))
        self.width_opt = None
        if not self.acquisition.rotation.requires_grad:
            self._scale_network_rate(self.full_lr / self.config.lr)
        self.hist.heldout_joined_after = epoch
        log.info("held-out slices scored after epoch %d; they train from now on", epoch)

    def _scale_network_rate(self, factor: float) -> None:
        """Scale the network's learning rate from here on: the schedule's current rate, its
        start and its floor (the rest of the cosine then runs as if ``lr`` were ``factor`` x)."""
        group = self.opt.param_groups[0]
        group["lr"] *= factor
        group["initial_lr"] *= factor
        self.sched.eta_min *= factor

    def _budget_spent(self) -> bool:
        """With a time budget: whether it is spent, else the cosine learning rate over time."""
        config = self.config
        if config.max_seconds is None:
            return False
        spent = (time.perf_counter() - self.t0) / config.max_seconds
        if spent >= 1.0:
            return True
        for group in self.opt.param_groups:
            group["lr"] = group["initial_lr"] * (
                config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * spent)))
        return False

    def _coarse_to_fine(self, epoch: int, step: int) -> None:
        """While poses or widths learn, the hash grid's finer levels come in over the first
        ``coarse_to_fine`` share of the fit (:func:`level_weights`)."""
        if self.levels is None:
            return
        done = (epoch - 1 + step / self.steps_per_epoch) / self.config.epochs
        if self.config.max_seconds:  # a time budget: the share of it spent, if further on
            done = max(done, (time.perf_counter() - self.t0) / self.config.max_seconds)
        self.levels.level_weight.copy_(torch.from_numpy(
            level_weights(self.levels.cell_mm, done / self.config.coarse_to_fine, self.config.coarse_mm)))

    def _loss(self, idx: torch.Tensor, learn: str | None):
        try:
            return batch_loss(self.forward, self.samples, idx, self.acquisition, self.n_c, learn)
        except Exception as exc:  # torch.compile needs a C++ toolchain; fall back to eager
            if self.forward is self.model:
                raise
            log.warning("torch.compile unavailable (%s: %s); training without it",
                        type(exc).__name__, str(exc).splitlines()[0][:200])
            self.forward = self.model
            return batch_loss(self.forward, self.samples, idx, self.acquisition, self.n_c, learn)

    def epoch(self, epoch: int) -> tuple[np.ndarray, int] | None:
        """Train one epoch; its per-contrast mean loss and the network evaluations it took
        (None when the time budget ran out before its first step)."""
        config, acquisition = self.config, self.acquisition
        self.model.train()
        order = torch.from_numpy(self.samples.epoch_indices(self.rng, config.background_fraction,
                                                            self.batch_size))
        order = order.to(self.device)
        sums = torch.zeros(self.n_c, device=self.device)
        counts = torch.zeros(self.n_c, device=self.device)
        steps_done = trained = 0
        for step in range(self.steps_per_epoch):
            if self._budget_spent():
                self.out_of_time = True
                break
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            self._coarse_to_fine(epoch, step)
            learning = epoch > config.acquisition_warmup
            learn = ("pose" if learning and acquisition.rotation.requires_grad
                     and step % config.acquisition_every == 0 else None)
            if (learning and self.width_opt is not None
                    and step % config.acquisition_every == config.acquisition_every // 2):
                width_step(self.model, self.samples, self.held_idx, acquisition, self.n_c,
                           self.width_opt, self.rng, config.width_batch(self.batch_size))
            loss, s, n = self._loss(idx, learn)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()  # Adam leaves the acquisition parameters alone when they got no gradient
            if config.max_seconds is None and config.schedule == "per-step":
                self.sched.step()
            sums += s
            counts += n
            steps_done += 1
            trained += self.samples.evaluations(idx)
        if self.out_of_time and steps_done == 0:
            return None
        if config.max_seconds is None and config.schedule == "per-epoch":
            self.sched.step()
        self.model.eval()
        return (sums / counts.clamp(min=1)).cpu().numpy(), trained

    def record(self, epoch: int, per_c: np.ndarray, trained: int, seconds: float,
               mi_points: np.ndarray | None) -> dict:
        """Add an epoch's loss, MI and held-out error to the history; the progress record."""
        hist = self.hist
        for name, value in zip(self.contrasts, per_c):
            hist.loss[name].append(float(value))
        mi = None
        if mi_points is not None and self.n_c > 1:
            mi = mean_pairwise_mi(predict_points(self.model, mi_points, self.device))
        held = (heldout_errors(self.model, self.samples, self.acquisition, self.n_c, self.device)
                if self.held_idx.size and not self.joined else None)
        for j, name in enumerate(self.contrasts):
            hist.heldout[name].append(None if held is None or np.isnan(held[j]) else float(held[j]))
        if held is not None and np.isfinite(held).any():
            score = float(np.nanmean(held))
            if score < self.best_score:
                self.best_score, hist.best_epoch = score, epoch
        hist.epoch.append(epoch)
        hist.lr.append(float(self.opt.param_groups[0]["lr"]))
        hist.mi.append(mi)
        hist.seconds.append(time.perf_counter() - self.t0)
        info = {"epoch": epoch, "epochs": self.config.epochs,
                "loss": {c: float(v) for c, v in zip(self.contrasts, per_c)}, "mi": mi,
                "seconds": hist.seconds[-1],
                "points_per_s": trained / max(seconds, 1e-9)}
        log.info("epoch %d/%d loss %s MI %s (%.0f s, %.0f points/s)", epoch, self.config.epochs,
                 " ".join(f"{c}={v:.5f}" for c, v in info["loss"].items()),
                 "-" if mi is None else f"{mi:.4f}", info["seconds"], info["points_per_s"])
        return info

    def mi_plateaued(self, epoch: int) -> bool:
        config = self.config
        mi_values = [m for m in self.hist.mi if m is not None]
        ramped = self.levels is None or epoch >= config.coarse_to_fine * config.epochs
        return (config.mi_stopping and config.min_epochs <= epoch < config.epochs and ramped
                and mi_plateaued(mi_values, config.mi_window, config.mi_tolerance))


def train(model: torch.nn.Module, acquisition: StackAcquisition, samples: TrainingSamples,
          contrasts: list[str], config: TrainConfig, device: torch.device,
          mi_points: np.ndarray | None = None, progress: Callable[[dict], None] | None = None,
          on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
          before_join: Callable[[torch.nn.Module], None] | None = None) -> TrainHistory:
    """Fit ``model`` and the stacks' ``acquisition`` parameters to ``samples``.

    Returns the loss, MI and held-out curves. ``mi_points`` are normalised coordinates
    (inside the LR-derived mask) where the predicted contrasts' MI is measured after every
    epoch; ``progress`` gets each epoch's record, ``on_epoch_end`` the epoch and the model,
    ``before_join`` the model as it is when the held-out slices are about to join the training
    (not called when they never do: none held out, or training stopped before).
    """
    fit = _Fit(model, acquisition, samples, contrasts, config, device)
    hist = fit.hist
    for epoch in range(1, config.epochs + 1):
        t_epoch = time.perf_counter()
        done = fit.epoch(epoch)
        if done is None:
            break
        info = fit.record(epoch, *done, time.perf_counter() - t_epoch, mi_points)
        if progress is not None:
            progress(info)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        hist.stopped_epoch = epoch
        if fit.out_of_time:
            break
        if fit.mi_plateaued(epoch):
            hist.stopped_early = True
            log.info("MI plateaued: stopping at epoch %d", epoch)
            break
        if fit.held_idx.size and epoch == config.join_epoch() < config.epochs:
            if before_join is not None:
                before_join(model)
            fit.join_heldout(epoch)
    if fit.out_of_time:  # mid-epoch, or exactly at an epoch boundary (that epoch not recorded)
        hist.stopped_early = hist.stopped_epoch < config.epochs
        log.info("time budget of %.0f s spent: stopping after %d epochs (the last may be "
                 "partial)", config.max_seconds, hist.stopped_epoch)
    return hist
