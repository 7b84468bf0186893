"""Data consistency: make the super-resolved volume reproduce the acquired stacks.

The INR is fitted to every low-resolution voxel, but its finite capacity smooths detail the
stacks do hold (in-plane texture at the stacks' native spacing). Iterative back-projection
(Irani & Peleg 1991; the super-resolution step of slice-to-volume reconstruction) restores it:

1. re-simulate each stack from the current volume with the same slice-profile forward model
   the INR was trained with (:func:`bids_mcsr.slice_profile.resimulate_stack`);
2. take the residual ``acquired - re-simulated`` on the stack's own voxels;
3. spread it back onto the output grid (linear interpolation in the stack's voxel space,
   zero outside the stack's field of view) and add it, averaged over the stacks of the
   contrast that cover a voxel.

The INR supplies what no single stack measures (through-plane detail, shared anatomy from the
other contrasts); the back-projection keeps what the stacks measure exactly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .io import Stack
from .slice_profile import resimulate_stack

DEFAULT_CONSISTENCY_ITERATIONS = 3  # chosen on the benchmark cases (docs/evaluation.md)
MIN_INPLANE_RATIO = 0.5  # stacks sampled much finer in-plane than the output are not back-projected


def back_project(residual: np.ndarray, stack: Stack, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """A stack-space ``residual`` on ``grid``: linearly interpolated values and coverage (0/1).

    A grid voxel is covered when it lies within half a voxel of the stack's outermost voxel
    centres along every stack axis.
    """
    vox = np.linalg.inv(stack.affine) @ grid.affine
    matrix, offset = vox[:3, :3], vox[:3, 3]
    values = ndimage.affine_transform(residual.astype(np.float32), matrix, offset,
                                      output_shape=grid.shape, order=1, mode="nearest")
    covered = ndimage.affine_transform(np.ones(stack.data.shape, np.float32), matrix, offset,
                                       output_shape=grid.shape, order=0, mode="grid-constant", cval=0.0)
    return values, covered


def usable_for_back_projection(stack: Stack, grid: Grid) -> bool:
    """Whether the stack's in-plane sampling is close enough to the grid's to back-project.

    The forward model samples the volume at points in-plane; a stack sampled more than twice
    as finely in-plane as the output would alias when its residual is spread onto the grid.
    """
    inplane = np.delete(stack.voxel_sizes, stack.through_plane_axis)
    return bool(inplane.min() >= MIN_INPLANE_RATIO * float(grid.spacing.min()))


def enforce_consistency(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack], profile: str,
                        iterations: int, n_samples: int = 5) -> np.ndarray:
    """Back-project the residuals of ``stacks`` into ``volume`` for ``iterations`` rounds.

    Parameters
    ----------
    volume
        One contrast on ``grid``, in the same intensity scale as the stacks' data.
    stacks
        The acquired stacks of that contrast (their affines map them onto ``grid``'s space).
    profile
        Slice profile of the forward model (``none``, ``gaussian`` or ``boxcar``);
        (near-)isotropic stacks are point-sampled, as in training.
    iterations
        Rounds of re-simulation and back-projection; 0 returns ``volume`` unchanged.
    n_samples
        Points through the slab per acquired voxel (the slice-profile quadrature).

    Returns
    -------
    numpy.ndarray
        The corrected volume (float32); voxels no stack covers are unchanged.
    """
    out = np.asarray(volume, np.float32).copy()
    usable = [s for s in stacks if usable_for_back_projection(s, grid)]
    for _ in range(iterations if usable else 0):
        correction = np.zeros(grid.shape, np.float32)
        coverage = np.zeros(grid.shape, np.float32)
        for stack in usable:
            stack_profile = "none" if stack.is_isotropic else profile  # as in training
            predicted = resimulate_stack(out, grid, stack, stack_profile, n_samples, outside="edge")
            values, covered = back_project(stack.data - predicted, stack, grid)
            correction += np.multiply(values, covered, out=values)
            coverage += covered
            del values, covered
        out += correction / np.maximum(coverage, 1.0)
    return out
