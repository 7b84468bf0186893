"""Training samples: every acquired low-resolution voxel, in the shared normalised frame."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .geometry import CoordinateFrame, voxel_centres
from .intensity import IntensityScaler, foreground_mask
from .io import Stack
from .slice_profile import profile_offsets, slice_normal


@dataclass
class TrainingSamples:
    """Flat tensors over all stacks' voxels plus per-stack slice-profile geometry.

    ``offsets[s]`` are the normalised-frame displacement vectors of stack ``s``'s profile
    sample points (shape ``(n_stacks, K, 3)``), ``weights[s]`` their weights ``(n_stacks, K)``.
    """

    coords: torch.Tensor
    values: torch.Tensor
    contrast: torch.Tensor
    stack: torch.Tensor
    foreground: np.ndarray
    offsets: torch.Tensor
    weights: torch.Tensor

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
                               self.offsets.to(device), self.weights.to(device))


def build_samples(stacks: Sequence[Stack], contrasts: Sequence[str], frame: CoordinateFrame,
                  scalers: Sequence[IntensityScaler], masks: Sequence[np.ndarray],
                  profile: str, n_profile_samples: int = 5) -> TrainingSamples:
    """Assemble the training set of all stacks.

    An (near-)isotropic stack is point-sampled whatever ``profile`` says.
    """
    k = 1 if profile == "none" else n_profile_samples
    parts = {"coords": [], "values": [], "contrast": [], "stack": [], "fg": []}
    offsets = np.zeros((len(stacks), k, 3), np.float32)
    weights = np.full((len(stacks), k), 1.0 / k, np.float32)
    for i, (s, scaler, mask) in enumerate(zip(stacks, scalers, masks)):
        parts["coords"].append(frame.normalise(voxel_centres(s.data.shape, s.affine)))
        parts["values"].append(scaler.forward(s.data.ravel()))
        parts["contrast"].append(np.full(s.data.size, contrasts.index(s.contrast), np.int64))
        parts["stack"].append(np.full(s.data.size, i, np.int64))
        parts["fg"].append(mask.ravel())
        if profile != "none" and not s.is_isotropic:
            off_mm, w = profile_offsets(profile, s.thickness, k)
            offsets[i] = frame.normalise_vector(off_mm[:, None] * slice_normal(s)[None, :])
            weights[i] = w
    return TrainingSamples(
        coords=torch.from_numpy(np.concatenate(parts["coords"])),
        values=torch.from_numpy(np.concatenate(parts["values"])),
        contrast=torch.from_numpy(np.concatenate(parts["contrast"])),
        stack=torch.from_numpy(np.concatenate(parts["stack"])),
        foreground=np.concatenate(parts["fg"]),
        offsets=torch.from_numpy(offsets),
        weights=torch.from_numpy(weights),
    )


def stack_masks_and_scalers(stacks: Sequence[Stack]) -> tuple[list[np.ndarray], list[IntensityScaler]]:
    """Foreground mask and intensity scaler of every stack, from its own voxels."""
    masks = [foreground_mask(s.data) for s in stacks]
    return masks, [IntensityScaler.fit(s.data, m) for s, m in zip(stacks, masks)]
