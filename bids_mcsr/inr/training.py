"""The per-subject training loop: per-contrast MSE, foreground-weighted sampling, MI tracking."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.inference import predict_points
from bids_mcsr.inr.presets import DEFAULT_MODEL, MI_MIN_EPOCHS, MI_TOLERANCE_NATS, MI_WINDOW, PRESETS
from bids_mcsr.inr.sampling import TrainingSamples
from bids_mcsr.inr.stopping import mean_pairwise_mi, mi_plateaued

log = logging.getLogger("bids_mcsr")
SCHEDULES = ("per-step", "per-epoch")


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
    widths, poses) learn at ``width_lr``/``pose_lr`` once ``acquisition_warmup`` epochs have
    fitted the network alone, every ``acquisition_every``-th step: the poses from a training
    batch, the widths from a batch of held-out voxels with the network fixed (their gradient
    through the encoding costs about half a step). Without held-out slices the widths stay
    at their initial values. The held-out error is tracked every epoch.
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
    pose_lr: float = 1e-3
    acquisition_warmup: int = 1
    acquisition_every: int = 4

    def effective_batch_size(self, n_epoch_samples: int) -> int:
        """``batch_size``, reduced (not below 512) so that small subjects still get
        ``min_steps_per_epoch`` optimiser steps per epoch."""
        batch = min(self.batch_size, max(512, n_epoch_samples // self.min_steps_per_epoch))
        return int(max(1, min(batch, n_epoch_samples)))

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

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "loss": self.loss, "mi": self.mi, "seconds": self.seconds,
                "heldout_mse": self.heldout, "best_epoch": self.best_epoch}


def _squared_errors(model: Callable[[torch.Tensor], torch.Tensor], samples: TrainingSamples,
                    idx: torch.Tensor, acquisition: StackAcquisition, n_contrasts: int,
                    stratified: bool = True, learn: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error of every voxel in ``idx`` and its contrast index (``learn``: with
    gradients to those acquisition parameters, see ``TrainingSamples.profile_points``)."""
    c = samples.contrast[idx]
    pts = samples.profile_points(idx, acquisition, stratified, learn)  # (B, K, 3)
    b, k = pts.shape[:2]
    out = model(pts.reshape(-1, 3)).reshape(b, k, n_contrasts)
    pred = out.gather(2, c.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2).mean(dim=1)
    return (pred - samples.values[idx]) ** 2, c


def _batch_loss(model: Callable[[torch.Tensor], torch.Tensor], samples: TrainingSamples,
                idx: torch.Tensor, acquisition: StackAcquisition, n_contrasts: int,
                learn: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one batch and the per-contrast sums/counts of squared errors."""
    sq, c = _squared_errors(model, samples, idx, acquisition, n_contrasts, learn=learn)
    return _contrast_mean(sq, c, n_contrasts)


def _contrast_mean(sq: torch.Tensor, c: torch.Tensor,
                   n_contrasts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over contrasts of each contrast's mean squared error, and the per-contrast
    sums/counts (detached)."""
    sums = torch.zeros(n_contrasts, device=sq.device).index_add_(0, c, sq)
    counts = torch.zeros(n_contrasts, device=sq.device).index_add_(0, c, torch.ones_like(sq))
    present = counts > 0
    loss = (sums[present] / counts[present]).mean()
    return loss, sums.detach(), counts.detach()


def heldout_errors(model: torch.nn.Module, samples: TrainingSamples,
                   acquisition: StackAcquisition, n_contrasts: int, device: torch.device,
                   chunk: int = 65536) -> np.ndarray:
    """Per-contrast mean squared error on the held-out voxels (NaN where a contrast has
    none), with the profile's stratum midpoints."""
    idx_all = torch.from_numpy(samples.heldout_indices()).to(device)
    sums = torch.zeros(n_contrasts, device=device, dtype=torch.float64)
    counts = torch.zeros(n_contrasts, device=device, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, idx_all.shape[0], chunk):
            sq, c = _squared_errors(model, samples, idx_all[start:start + chunk], acquisition,
                                    n_contrasts, stratified=False)
            sums.index_add_(0, c, sq.double())
            counts.index_add_(0, c, torch.ones_like(sq, dtype=torch.float64))
    out = (sums / counts.clamp(min=1)).cpu().numpy()
    out[counts.cpu().numpy() == 0] = np.nan
    return out


def _optimiser(model: torch.nn.Module, acquisition: StackAcquisition,
               config: TrainConfig) -> torch.optim.Adam:
    groups = [{"params": list(model.parameters()), "lr": config.lr}]
    if acquisition.rotation.requires_grad:
        groups.append({"params": [acquisition.rotation, acquisition.translation],
                       "lr": config.pose_lr})
    return torch.optim.Adam(groups, betas=config.adam_betas, eps=config.adam_eps)


def _width_step(model: torch.nn.Module, samples: TrainingSamples, held_idx: np.ndarray,
                acquisition: StackAcquisition, n_contrasts: int, opt: torch.optim.Adam,
                rng: np.random.Generator, batch_size: int) -> None:
    """One step of the slice-profile widths on a batch of held-out voxels, the network
    fixed: a width that only lets the network fit the training slices more closely (a
    narrower slab always does) does not predict the slices between them better."""
    pick = rng.choice(held_idx, min(batch_size, held_idx.size), replace=False)
    idx = torch.from_numpy(pick).to(samples.coords.device)
    sq, c = _squared_errors(model, samples, idx, acquisition, n_contrasts, learn="width")
    loss = _contrast_mean(sq, c, n_contrasts)[0]
    (grad,) = torch.autograd.grad(loss, [acquisition.log_width])
    acquisition.log_width.grad = grad
    opt.step()


def train(model: torch.nn.Module, acquisition: StackAcquisition, samples: TrainingSamples,
          contrasts: list[str], config: TrainConfig, device: torch.device,
          mi_points: np.ndarray | None = None, progress: Callable[[dict], None] | None = None,
          on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None) -> TrainHistory:
    """Fit ``model`` and the stacks' ``acquisition`` parameters to ``samples``.

    Returns the loss, MI and held-out curves. ``mi_points`` are normalised coordinates
    (inside the LR-derived mask) where the predicted contrasts' MI is measured after every
    epoch.
    """
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    n_c = len(contrasts)
    samples = samples.to(device)
    model.to(device)
    acquisition.to(device)
    hist = TrainHistory(contrasts, loss={c: [] for c in contrasts},
                        heldout={c: [] for c in contrasts})
    has_heldout = samples.heldout_indices().size > 0
    best_score = np.inf
    n_epoch = samples.n_epoch(config.background_fraction)
    batch_size = config.effective_batch_size(n_epoch)
    steps_per_epoch = config.steps_per_epoch(n_epoch, batch_size)
    forward: Callable[[torch.Tensor], torch.Tensor] = (
        torch.compile(model, dynamic=False) if config.compile else model)
    opt = _optimiser(model, acquisition, config)
    held_idx = samples.heldout_indices()
    width_opt = (torch.optim.Adam([acquisition.log_width], lr=config.width_lr,
                                  betas=config.adam_betas, eps=config.adam_eps)
                 if acquisition.log_width.requires_grad and held_idx.size else None)
    sched = config.scheduler(opt, steps_per_epoch)
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.from_numpy(samples.epoch_indices(rng, config.background_fraction)).to(device)
        sums = torch.zeros(n_c, device=device)
        counts = torch.zeros(n_c, device=device)
        t_epoch = time.perf_counter()
        steps_done = trained = 0
        for step in range(steps_per_epoch):
            if config.max_seconds is not None:
                spent = (time.perf_counter() - t0) / config.max_seconds
                if spent >= 1.0:
                    out_of_time = True
                    break
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * (
                        config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * spent)))
            idx = order[step * batch_size:(step + 1) * batch_size]
            learning = epoch > config.acquisition_warmup
            learn = ("pose" if learning and acquisition.rotation.requires_grad
                     and step % config.acquisition_every == 0 else None)
            if (learning and width_opt is not None
                    and step % config.acquisition_every == config.acquisition_every // 2):
                _width_step(model, samples, held_idx, acquisition, n_c, width_opt, rng,
                            batch_size)
            try:
                loss, s, n = _batch_loss(forward, samples, idx, acquisition, n_c, learn)
            except Exception as exc:  # torch.compile needs a C++ toolchain; fall back to eager
                if forward is model:
                    raise
                log.warning("torch.compile unavailable (%s: %s); training without it",
                            type(exc).__name__, str(exc).splitlines()[0][:200])
                forward = model
                loss, s, n = _batch_loss(forward, samples, idx, acquisition, n_c, learn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()  # Adam leaves the acquisition parameters alone when they got no gradient
            if config.max_seconds is None and config.schedule == "per-step":
                sched.step()
            sums += s
            counts += n
            steps_done += 1
            trained += idx.shape[0]
        if out_of_time and steps_done == 0:
            break
        if config.max_seconds is None and config.schedule == "per-epoch":
            sched.step()
        model.eval()
        per_c = (sums / counts.clamp(min=1)).cpu().numpy()
        for name, value in zip(contrasts, per_c):
            hist.loss[name].append(float(value))
        mi = None
        if mi_points is not None and n_c > 1:
            mi = mean_pairwise_mi(predict_points(model, mi_points, device))
        held = heldout_errors(model, samples, acquisition, n_c, device) if has_heldout else None
        for j, name in enumerate(contrasts):
            hist.heldout[name].append(None if held is None or np.isnan(held[j]) else float(held[j]))
        if held is not None and np.isfinite(held).any():
            score = float(np.nanmean(held))
            if score < best_score:
                best_score, hist.best_epoch = score, epoch
        hist.epoch.append(epoch)
        hist.mi.append(mi)
        hist.seconds.append(time.perf_counter() - t0)
        n_points = trained * samples.n_profile
        info = {"epoch": epoch, "epochs": config.epochs,
                "loss": {c: float(v) for c, v in zip(contrasts, per_c)}, "mi": mi,
                "seconds": hist.seconds[-1],
                "points_per_s": n_points / max(time.perf_counter() - t_epoch, 1e-9)}
        log.info("epoch %d/%d loss %s MI %s (%.0f s, %.0f points/s)", epoch, config.epochs,
                 " ".join(f"{c}={v:.5f}" for c, v in info["loss"].items()),
                 "-" if mi is None else f"{mi:.4f}", info["seconds"], info["points_per_s"])
        if progress is not None:
            progress(info)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        hist.stopped_epoch = epoch
        if out_of_time:
            break
        mi_values = [m for m in hist.mi if m is not None]
        if (config.mi_stopping and epoch >= config.min_epochs and epoch < config.epochs
                and mi_plateaued(mi_values, config.mi_window, config.mi_tolerance)):
            hist.stopped_early = True
            log.info("MI plateaued: stopping at epoch %d", epoch)
            break
    if out_of_time:  # mid-epoch, or exactly at an epoch boundary (that epoch not recorded)
        hist.stopped_early = hist.stopped_epoch < config.epochs
        log.info("time budget of %.0f s spent: stopping after %d epochs (the last may be "
                 "partial)", config.max_seconds, hist.stopped_epoch)
    return hist
