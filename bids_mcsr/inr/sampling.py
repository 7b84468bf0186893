"""Training samples: every acquired low-resolution voxel, in the shared normalised frame."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from bids_mcsr.acquisition.holdout import slice_mask
from bids_mcsr.acquisition.slice_profile import FWHM_TO_SIGMA, PROFILE_SAMPLES, slice_normal, stack_profile
from bids_mcsr.image.geometry import CoordinateFrame, voxel_centres
from bids_mcsr.image.intensity import IntensityScaler, foreground_mask
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.acquisition_fit import StackAcquisition


def profile_quantile(profile: str, u: torch.Tensor) -> torch.Tensor:
    """Offsets, in units of the slice thickness, at quantiles ``u`` in (0, 1) of the profile."""
    if profile == "gaussian":
        u = u.clamp(1e-6, 1 - 1e-6)
        return (FWHM_TO_SIGMA * np.sqrt(2.0)) * torch.erfinv(2 * u - 1)
    if profile == "boxcar":
        return u - 0.5
    return torch.zeros_like(u)


@dataclass
class TrainingSamples:
    """Flat tensors over all stacks' voxels plus per-stack slice-profile geometry.

    ``normal[s]`` is stack ``s``'s unit slice normal in normalised units per mm; the
    slab's width (FWHM, mm) comes from the stack's acquisition parameters
    (:class:`~bids_mcsr.inr.acquisition_fit.StackAcquisition`), zero for point-sampled stacks.
    Each training voxel is predicted as the mean of the network at ``n_profile`` points
    through its slab, drawn by stratified sampling of the profile (one random point per
    equal-probability stratum, new every step), so the whole slab is covered rather than
    a few fixed planes. ``heldout`` marks the voxels of held-out slices: not trained on
    until they have scored the fit (:func:`~bids_mcsr.inr.training.train`).
    """

    coords: torch.Tensor
    values: torch.Tensor
    contrast: torch.Tensor
    stack: torch.Tensor
    foreground: np.ndarray
    normal: torch.Tensor
    profiled: list[bool]
    profile: str
    n_profile: int
    heldout: np.ndarray

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @cached_property
    def _point_stack(self) -> torch.Tensor:
        """Per stack, whether it is point-sampled (on the samples' device)."""
        return torch.tensor([not p for p in self.profiled], device=self.stack.device)

    def _point_voxels(self) -> np.ndarray:
        """Per voxel, whether its stack is point-sampled."""
        return self._point_stack.cpu().numpy()[self.stack.cpu().numpy()]

    def _groups(self) -> list[np.ndarray]:
        """Voxels per group of :meth:`batch_layout`: the slab-sampled stacks' and, when a
        (near-)isotropic stack is point-sampled beside them, its own."""
        point = self._point_voxels()
        if self.n_profile == 1 or not point.any() or point.all():
            return [np.ones(point.shape, bool)]
        return [~point, point]

    def _drawn(self, group: np.ndarray, rng: np.random.Generator,
               background_fraction: float) -> np.ndarray:
        fg = np.flatnonzero(group & self.foreground & ~self.heldout)
        bg = np.flatnonzero(group & ~self.foreground & ~self.heldout)
        n_bg = int(round(background_fraction * bg.size))
        chosen = np.concatenate([fg, rng.choice(bg, n_bg, replace=False) if n_bg else bg[:0]])
        rng.shuffle(chosen)
        return chosen

    def batch_layout(self, background_fraction: float, batch_size: int) -> tuple[int, ...]:
        """Voxels of each group in every batch of :meth:`epoch_indices`: the whole batch
        when all stacks are sampled alike; with slab-sampled and point-sampled stacks together,
        the batch split between them in proportion to their voxels, so that every batch has
        the same number of network evaluations (a compiled network is compiled once) and a
        point-sampled voxel is evaluated once rather than ``n_profile`` times."""
        sizes = [self._n_drawn(g, background_fraction) for g in self._groups()]
        if len(sizes) == 1:
            return (batch_size,)
        point = int(np.clip(round(batch_size * sizes[1] / sum(sizes)), 1, batch_size - 1))
        return (batch_size - point, point)

    def _n_drawn(self, group: np.ndarray, background_fraction: float) -> int:
        train = group & ~self.heldout
        return int((self.foreground & train).sum()
                   + round(background_fraction * (~self.foreground & train).sum()))

    def epoch_indices(self, rng: np.random.Generator, background_fraction: float,
                      batch_size: int | None = None) -> np.ndarray:
        """Shuffled indices of all foreground voxels and a random share of the background
        (held-out voxels excluded). With ``batch_size`` and groups sampled differently,
        consecutive runs of ``batch_size`` indices follow :meth:`batch_layout`, for
        :meth:`whole_batches` batches (the rest, a different rest each epoch, after them)."""
        drawn = [self._drawn(g, rng, background_fraction) for g in self._groups()]
        if len(drawn) == 1 or batch_size is None:
            return np.concatenate(drawn)
        layout = self.batch_layout(background_fraction, batch_size)
        n = min(d.size // b for d, b in zip(drawn, layout))
        batches = np.hstack([d[:n * b].reshape(n, b) for d, b in zip(drawn, layout)]).ravel()
        return np.concatenate([batches] + [d[n * b:] for d, b in zip(drawn, layout)])

    def whole_batches(self, background_fraction: float, batch_size: int) -> int:
        """Batches of :meth:`epoch_indices` that follow :meth:`batch_layout`."""
        layout = self.batch_layout(background_fraction, batch_size)
        sizes = [self._n_drawn(g, background_fraction) for g in self._groups()]
        return min(n // b for n, b in zip(sizes, layout))

    def n_epoch(self, background_fraction: float) -> int:
        """Samples drawn per epoch by :meth:`epoch_indices`."""
        return self._n_drawn(np.ones(self.foreground.shape, bool), background_fraction)

    def epoch_evaluations(self, background_fraction: float) -> int:
        """Network evaluations of one epoch of :meth:`epoch_indices`: ``n_profile`` per
        slab-sampled voxel drawn, one per point-sampled voxel."""
        point = self._point_voxels()
        return (self._n_drawn(~point, background_fraction) * self.n_profile
                + self._n_drawn(point, background_fraction))

    def evaluations(self, idx: torch.Tensor) -> int:
        """Network evaluations that the voxels ``idx`` take: ``n_profile`` each where
        slab-sampled, one where point-sampled."""
        if self.n_profile == 1:
            return int(idx.shape[0])
        return int(self.point_sampled(idx).logical_not().sum()) * (self.n_profile - 1) + int(idx.shape[0])

    def n_evaluations(self) -> int:
        """Network evaluations of one pass over every voxel (:meth:`evaluations`)."""
        per_stack = np.bincount(self.stack.cpu().numpy(), minlength=len(self.profiled))
        return int(sum(n * (self.n_profile if p else 1) for n, p in zip(per_stack, self.profiled)))

    def point_sampled(self, idx: torch.Tensor) -> torch.Tensor:
        """Which voxels of ``idx`` belong to point-sampled stacks."""
        return self._point_stack[self.stack[idx]]

    def heldout_indices(self) -> np.ndarray:
        """Foreground voxels of the held-out slices (where the fit is scored)."""
        return np.flatnonzero(self.foreground & self.heldout)

    def to(self, device: torch.device) -> "TrainingSamples":
        return TrainingSamples(self.coords.to(device), self.values.to(device),
                               self.contrast.to(device), self.stack.to(device), self.foreground,
                               self.normal.to(device), self.profiled, self.profile,
                               self.n_profile, self.heldout)

    def profile_points(self, idx: torch.Tensor, acquisition: StackAcquisition,
                       stratified: bool = True, learn: str | None = None) -> torch.Tensor:
        """Sample points ``(B, n_profile, 3)`` through the slabs of voxels ``idx``, moved by
        their stacks' poses. ``stratified=False`` takes each stratum's midpoint (scoring);
        ``learn`` (``"pose"`` or ``"width"``): the points carry gradients to those
        acquisition parameters."""
        if learn is None:
            with torch.no_grad():
                return self._points(idx, acquisition, stratified, None)
        return self._points(idx, acquisition, stratified, learn)

    def _points(self, idx: torch.Tensor, acquisition: StackAcquisition, stratified: bool,
                learn: str | None) -> torch.Tensor:
        stack = self.stack[idx]
        x = self.coords[idx].unsqueeze(1)
        if self.n_profile > 1:
            k = torch.arange(self.n_profile, device=x.device)
            jitter = (torch.rand(idx.shape[0], self.n_profile, device=x.device) if stratified
                      else torch.full((idx.shape[0], self.n_profile), 0.5, device=x.device))
            t = profile_quantile(self.profile, (k + jitter) / self.n_profile)
            fwhm = acquisition.fwhm_mm()
            fwhm = fwhm if learn == "width" else fwhm.detach()
            slab = self.normal[stack] * fwhm[stack].unsqueeze(-1)
            x = x + t.unsqueeze(-1) * slab.unsqueeze(1)
        return acquisition.move(x, stack, detach=learn != "pose")


def profile_points_per_sample(stacks: Sequence[Stack], profile: str,
                              n_profile_samples: int = PROFILE_SAMPLES) -> int:
    """Network evaluations per training sample: 1 when point-sampled (no profile, or only
    (near-)isotropic stacks), else ``n_profile_samples``."""
    return n_profile_samples if any(is_profiled(s, profile) for s in stacks) else 1


def is_profiled(stack: Stack, profile: str) -> bool:
    """Whether a stack is modelled with a slab: a thick-slice stack under a slice profile
    ((near-)isotropic stacks are point-sampled whatever ``profile`` says)."""
    return stack_profile(stack, profile) != "none"


def build_samples(stacks: Sequence[Stack], contrasts: Sequence[str], frame: CoordinateFrame,
                  scalers: Sequence[IntensityScaler], masks: Sequence[np.ndarray],
                  profile: str, n_profile_samples: int = PROFILE_SAMPLES,
                  heldout: Sequence[np.ndarray] | None = None) -> TrainingSamples:
    """Assemble the training set of all stacks.

    ``heldout`` gives, per stack, the indices of its held-out slices (along its slice axis).
    """
    k = profile_points_per_sample(stacks, profile, n_profile_samples)
    parts = {"coords": [], "values": [], "contrast": [], "stack": [], "fg": [], "held": []}
    normal = np.zeros((len(stacks), 3), np.float32)
    for i, (s, scaler, mask) in enumerate(zip(stacks, scalers, masks)):
        parts["coords"].append(frame.normalise(voxel_centres(s.data.shape, s.affine)))
        parts["values"].append(scaler.forward(s.data.ravel()))
        parts["contrast"].append(np.full(s.data.size, contrasts.index(s.contrast), np.int64))
        parts["stack"].append(np.full(s.data.size, i, np.int64))
        parts["fg"].append(mask.ravel())
        parts["held"].append(slice_mask(s, [] if heldout is None else heldout[i]).ravel())
        normal[i] = frame.normalise_vector(slice_normal(s))
    return TrainingSamples(
        coords=torch.from_numpy(np.concatenate(parts["coords"])),
        values=torch.from_numpy(np.concatenate(parts["values"])),
        contrast=torch.from_numpy(np.concatenate(parts["contrast"])),
        stack=torch.from_numpy(np.concatenate(parts["stack"])),
        foreground=np.concatenate(parts["fg"]),
        normal=torch.from_numpy(normal),
        profiled=[is_profiled(s, profile) for s in stacks],
        profile=profile,
        n_profile=k,
        heldout=np.concatenate(parts["held"]),
    )


def stack_masks_and_scalers(stacks: Sequence[Stack], scaling: str = "percentile"
                            ) -> tuple[list[np.ndarray], list[IntensityScaler]]:
    """Foreground mask and intensity scaler (``scaling``: see
    :meth:`~bids_mcsr.image.intensity.IntensityScaler.fit`) of every stack, from its own voxels."""
    masks = [foreground_mask(s.data) for s in stacks]
    return masks, [IntensityScaler.fit(s.data, m, scaling) for s, m in zip(stacks, masks)]
