"""Training samples: every acquired low-resolution voxel, in the shared normalised frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .geometry import CoordinateFrame, voxel_centres
from .intensity import IntensityScaler, foreground_mask
from .io import Stack
from .slice_profile import profile_quantile, slice_normal


@dataclass
class TrainingSamples:
    """Flat tensors over all stacks' voxels plus per-stack slice-profile geometry.

    ``slab[s]`` is stack ``s``'s slice normal scaled by its thickness, in normalised
    units (zero for point-sampled stacks). Each training voxel is predicted as the mean
    of the network at ``n_profile`` points through its slab, drawn by stratified sampling
    of the profile (one random point per equal-probability stratum, new every step), so
    the whole slab is covered rather than a few fixed planes.
    """

    coords: torch.Tensor
    values: torch.Tensor
    contrast: torch.Tensor
    stack: torch.Tensor
    foreground: np.ndarray
    slab: torch.Tensor
    profile: str
    n_profile: int

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def epoch_indices(self, rng: np.random.Generator, background_fraction: float) -> np.ndarray:
        """Shuffled indices of all foreground voxels and a random share of the background."""
        fg = np.flatnonzero(self.foreground)
        bg = np.flatnonzero(~self.foreground)
        n_bg = int(round(background_fraction * bg.size))
        chosen = np.concatenate([fg, rng.choice(bg, n_bg, replace=False) if n_bg else bg[:0]])
        rng.shuffle(chosen)
        return chosen

    def to(self, device: torch.device) -> "TrainingSamples":
        return TrainingSamples(self.coords.to(device), self.values.to(device),
                               self.contrast.to(device), self.stack.to(device), self.foreground,
                               self.slab.to(device), self.profile, self.n_profile)

    def profile_points(self, idx: torch.Tensor) -> torch.Tensor:
        """Sample points ``(B, n_profile, 3)`` through the slabs of voxels ``idx``."""
        x = self.coords[idx].unsqueeze(1)
        if self.n_profile == 1:
            return x
        k = torch.arange(self.n_profile, device=x.device)
        u = (k + torch.rand(idx.shape[0], self.n_profile, device=x.device)) / self.n_profile
        t = profile_quantile(self.profile, u)
        return x + t.unsqueeze(-1) * self.slab[self.stack[idx]].unsqueeze(1)


def profile_points_per_sample(stacks: Sequence[Stack], profile: str,
                              n_profile_samples: int = 5) -> int:
    """Network evaluations per training sample: 1 when point-sampled (no profile, or only
    (near-)isotropic stacks), else ``n_profile_samples``."""
    return 1 if profile == "none" or all(s.is_isotropic for s in stacks) else n_profile_samples


def build_samples(stacks: Sequence[Stack], contrasts: Sequence[str], frame: CoordinateFrame,
                  scalers: Sequence[IntensityScaler], masks: Sequence[np.ndarray],
                  profile: str, n_profile_samples: int = 5) -> TrainingSamples:
    """Assemble the training set of all stacks.

    An (near-)isotropic stack is point-sampled whatever ``profile`` says.
    """
    k = profile_points_per_sample(stacks, profile, n_profile_samples)
    parts = {"coords": [], "values": [], "contrast": [], "stack": [], "fg": []}
    slab = np.zeros((len(stacks), 3), np.float32)
    for i, (s, scaler, mask) in enumerate(zip(stacks, scalers, masks)):
        parts["coords"].append(frame.normalise(voxel_centres(s.data.shape, s.affine)))
        parts["values"].append(scaler.forward(s.data.ravel()))
        parts["contrast"].append(np.full(s.data.size, contrasts.index(s.contrast), np.int64))
        parts["stack"].append(np.full(s.data.size, i, np.int64))
        parts["fg"].append(mask.ravel())
        if profile != "none" and not s.is_isotropic:
            slab[i] = frame.normalise_vector(s.thickness * slice_normal(s))
    return TrainingSamples(
        coords=torch.from_numpy(np.concatenate(parts["coords"])),
        values=torch.from_numpy(np.concatenate(parts["values"])),
        contrast=torch.from_numpy(np.concatenate(parts["contrast"])),
        stack=torch.from_numpy(np.concatenate(parts["stack"])),
        foreground=np.concatenate(parts["fg"]),
        slab=torch.from_numpy(slab),
        profile=profile,
        n_profile=k,
    )


def stack_masks_and_scalers(stacks: Sequence[Stack]) -> tuple[list[np.ndarray], list[IntensityScaler]]:
    """Foreground mask and intensity scaler of every stack, from its own voxels."""
    masks = [foreground_mask(s.data) for s in stacks]
    return masks, [IntensityScaler.fit(s.data, m) for s, m in zip(stacks, masks)]
