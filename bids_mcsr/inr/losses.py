"""What the fit minimises: per-contrast squared errors of the forward model on the stacks'
voxels, their contrast-balanced mean, the held-out error, and the slab-width step."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from bids_mcsr.inr.acquisition_fit import StackAcquisition
from bids_mcsr.inr.sampling import TrainingSamples


def squared_errors(model: Callable[[torch.Tensor], torch.Tensor], samples: TrainingSamples,
                    idx: torch.Tensor, acquisition: StackAcquisition, n_contrasts: int,
                    stratified: bool = True, learn: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared error of every voxel in ``idx`` and its contrast index (:func:`residuals`)."""
    r, c = residuals(model, samples, idx, acquisition, n_contrasts, stratified, learn)
    return r ** 2, c


def residuals(model: Callable[[torch.Tensor], torch.Tensor], samples: TrainingSamples,
              idx: torch.Tensor, acquisition: StackAcquisition, n_contrasts: int,
              stratified: bool = True, learn: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-model prediction minus the acquired value of every voxel in ``idx``, and its
    contrast index, in the order of ``idx`` or, when slab- and point-sampled voxels are
    mixed, the slab-sampled ones first (``learn``: with gradients to those acquisition
    parameters, see ``TrainingSamples.profile_points``). A point-sampled voxel is evaluated
    once, not at each of the ``n_profile`` points of its zero-width slab."""
    pts = samples.profile_points(idx, acquisition, stratified, learn)  # (B, K, 3)
    k = pts.shape[1]
    point = samples.point_sampled(idx) if k > 1 else None
    if point is None or not bool(point.any()):
        c = samples.contrast[idx]
        out = model(pts.reshape(-1, 3)).reshape(-1, k, n_contrasts)
        pred = out.gather(2, c.view(-1, 1, 1).expand(-1, k, 1)).squeeze(2).mean(dim=1)
        return pred - samples.values[idx], c
    slab, single = torch.nonzero(~point).squeeze(1), torch.nonzero(point).squeeze(1)
    idx = torch.cat([idx[slab], idx[single]])
    c = samples.contrast[idx]
    out = model(torch.cat([pts[slab].reshape(-1, 3), pts[single, 0]]))
    n_slab = slab.shape[0] * k
    slab_pred = out[:n_slab].reshape(-1, k, n_contrasts).mean(dim=1)
    pred = torch.cat([slab_pred, out[n_slab:]]).gather(1, c.view(-1, 1)).squeeze(1)
    return pred - samples.values[idx], c


def batch_loss(model: Callable[[torch.Tensor], torch.Tensor], samples: TrainingSamples,
                idx: torch.Tensor, acquisition: StackAcquisition, n_contrasts: int,
                learn: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one batch and the per-contrast sums/counts of squared errors."""
    sq, c = squared_errors(model, samples, idx, acquisition, n_contrasts, learn=learn)
    return contrast_mean(sq, c, n_contrasts)


def contrast_mean(sq: torch.Tensor, c: torch.Tensor,
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
            sq, c = squared_errors(model, samples, idx_all[start:start + chunk], acquisition,
                                    n_contrasts, stratified=False)
            sums.index_add_(0, c, sq.double())
            counts.index_add_(0, c, torch.ones_like(sq, dtype=torch.float64))
    out = (sums / counts.clamp(min=1)).cpu().numpy()
    out[counts.cpu().numpy() == 0] = np.nan
    return out


def width_step(model: torch.nn.Module, samples: TrainingSamples, held_idx: np.ndarray,
                acquisition: StackAcquisition, n_contrasts: int, opt: torch.optim.Adam,
                rng: np.random.Generator, batch_size: int) -> None:
    """One step of the slice-profile widths on ``batch_size`` slab draws of held-out voxels,
    the network fixed: a width that only lets the network fit the training slices more
    closely (a narrower slab always does) does not predict the slices between them better.

    Each voxel's slab is drawn twice (``batch_size // 2`` voxels, so ``batch_size`` draws in
    all, through the network in one pass), and the loss is the product of the two draws'
    residuals: an unbiased estimate of the squared error of the slab's mean. The squared
    residual of one stratified draw also carries the draw's variance, which grows with the
    width, so it pulled the widths narrow (a 4 mm Gaussian slab learned as 3.25 / 2.84 mm on
    the template's whole head; docs/evaluation.md). Held-out voxels are all slab-sampled, so
    :func:`residuals` keeps their order and the two halves are the two draws."""
    pick = rng.choice(held_idx, min(max(1, batch_size // 2), held_idx.size), replace=False)
    idx = torch.from_numpy(pick).to(samples.coords.device)
    r, c = residuals(model, samples, torch.cat([idx, idx]), acquisition, n_contrasts, learn="width")
    first, second = r.chunk(2)
    loss = contrast_mean(first * second, c[:idx.shape[0]], n_contrasts)[0]
    (grad,) = torch.autograd.grad(loss, [acquisition.log_width])
    acquisition.log_width.grad = grad
    opt.step()
    acquisition.keep_widths_in_bounds()
