"""Data consistency: make the super-resolved volume reproduce the acquired stacks.

The INR is fitted to every low-resolution voxel, but its finite capacity smooths detail the
stacks do hold (in-plane texture at the stacks' native spacing). Iterative back-projection
(Irani & Peleg 1991; the super-resolution step of slice-to-volume reconstruction) restores it:

1. re-simulate each stack from the current volume with the same slice-profile forward model
   the INR was trained with (:func:`bids_mcsr.acquisition.slice_profile.resimulate_stack`);
2. take the residual ``acquired - re-simulated`` on the stack's own voxels;
3. spread it back onto the output grid (linear interpolation in the stack's voxel space,
   zero outside the stack's field of view) and add it, averaged over the stacks of the
   contrast that cover a voxel.

The INR supplies what no single stack measures (through-plane detail, shared anatomy from the
other contrasts); the back-projection keeps what the stacks measure exactly. It would also put
back their noise: each stack's residual is therefore weighted, every round and voxel by
voxel, by a local Wiener gain ``max(0, 1 - sigma^2 / local residual power)``, the power
averaged over a small in-plane window of the voxel's slice and ``sigma`` the stack's
estimated noise (:mod:`bids_mcsr.image.noise`). A residual at the noise floor is not
back-projected; a local one far above it (an edge the network smoothed, a lesion it missed
or painted in from another contrast) is back-projected whole, however small its share of
the stack's power.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from bids_mcsr.acquisition.region import stack_voxels_near
from bids_mcsr.acquisition.slice_profile import (
    PROFILE_SAMPLES,
    in_threads,
    resimulate_stack,
    spline_coefficients,
    stack_profile,
)
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack

DEFAULT_CONSISTENCY_ITERATIONS = 3  # chosen on the benchmark cases (docs/evaluation.md)
MIN_INPLANE_RATIO = 0.5  # stacks sampled much finer in-plane than the output are not back-projected
BLOCK_PLANES = 16  # grid planes back-projected at once (fixed: results do not depend on threads)
WIENER_WINDOW = 7  # in-plane voxels a side of the local residual power (49 values: +-20 % at the floor)


def back_project(residual: np.ndarray, stack: Stack, grid: Grid, workers: int = 1) -> np.ndarray:
    """A stack-space ``residual`` on ``grid``, linearly interpolated (edge values outside);
    in blocks of :data:`BLOCK_PLANES` grid planes, ``workers`` at a time."""
    vox = np.linalg.inv(stack.affine) @ grid.affine
    source = residual.astype(np.float32)
    out = np.empty(grid.shape, np.float32)

    def block(first: int) -> None:
        planes = out[first:first + BLOCK_PLANES]
        ndimage.affine_transform(source, vox[:3, :3], vox[:3, :3] @ [first, 0, 0] + vox[:3, 3],
                                 output_shape=planes.shape, output=planes, order=1, mode="nearest")

    in_threads(block, range(0, grid.shape[0], BLOCK_PLANES), workers)
    return out


def coverage(stack: Stack, grid: Grid) -> np.ndarray:
    """Grid voxels within half a voxel of the stack's outermost voxel centres along every
    stack axis (its field of view), as a boolean array."""
    vox = np.linalg.inv(stack.affine) @ grid.affine
    inside = ndimage.affine_transform(np.ones(stack.data.shape, np.uint8), vox[:3, :3], vox[:3, 3],
                                      output_shape=grid.shape, order=0, mode="grid-constant", cval=0)
    return inside.astype(bool)


def usable_for_back_projection(stack: Stack, grid: Grid) -> bool:
    """Whether the stack's in-plane sampling is close enough to the grid's to back-project.

    The forward model samples the volume at points in-plane; a stack sampled more than twice
    as finely in-plane as the output would alias when its residual is spread onto the grid.
    """
    finest = float(stack.voxel_sizes.min())  # in-plane: the slice axis is the coarsest
    return bool(finest >= MIN_INPLANE_RATIO * float(grid.spacing.min()))


def fill_from_neighbours(values: np.ndarray, axis: int, slices: Sequence[int]) -> np.ndarray:
    """``values`` with each of ``slices`` replaced by the mean of its two neighbours."""
    out = np.array(values, copy=True)
    for k in slices:
        index = [slice(None)] * values.ndim
        index[axis] = slice(k, k + 1)
        out[tuple(index)] = 0.5 * (np.take(values, [k - 1], axis=axis)
                                   + np.take(values, [k + 1], axis=axis))
    return out


def residual_gain(residual: np.ndarray, axis: int, sigma: float | None) -> np.ndarray | float:
    """Local Wiener gain of a stack's residual: per voxel, the share of the residual's power
    above the noise floor ``sigma``, the power averaged over a :data:`WIENER_WINDOW`-voxel
    square of the voxel's slice (``axis`` is the through-plane axis); 1 when the noise is
    not given (classic back-projection), 0 when it could not be estimated (NaN: nothing is
    back-projected, as with the earlier per-stack gain).

    >>> flat = np.full((9, 9, 2), 2.0)
    >>> float(residual_gain(flat, 2, 1.0).min()), residual_gain(flat, 2, None)
    (0.75, 1.0)
    >>> residual_gain(flat, 2, float("nan"))
    0.0
    """
    if sigma is None:
        return 1.0
    if not np.isfinite(sigma):
        return 0.0
    size = [WIENER_WINDOW] * 3
    size[axis] = 1
    power = ndimage.uniform_filter(np.square(residual, dtype=np.float32), size, mode="reflect")
    # below the floor the gain is 0 either way; dividing by the floor there avoids an overflow
    floor = max(sigma ** 2, float(np.finfo(np.float32).tiny))
    return np.clip(1.0 - sigma ** 2 / np.maximum(power, floor), 0.0, 1.0)


def enforce_consistency(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack], profile: str,
                        iterations: int, n_samples: int = PROFILE_SAMPLES, **kwargs) -> np.ndarray:
    """The volume after ``iterations`` rounds of :func:`consistency_rounds` (same keywords)."""
    out = None
    for out in consistency_rounds(volume, grid, stacks, profile, iterations, n_samples, **kwargs):
        pass
    return out


def consistency_rounds(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack], profile: str,
                       iterations: int, n_samples: int = PROFILE_SAMPLES,
                       heldout: Sequence[Sequence[int]] | None = None,
                       noise: Sequence[float] | None = None, workers: int = 1,
                       region: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Back-project the residuals of ``stacks`` into ``volume``, round after round.

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
    heldout
        Per stack, slices whose residual is not used: it is filled in from their two
        neighbours, as if they had not been acquired.
    noise
        Per stack, the noise standard deviation: residuals are weighted by
        :func:`residual_gain` (None: every residual whole, classic back-projection).
    workers
        Threads of the re-simulation and back-projection (the result does not depend on it).
    region
        Grid voxels the rounds may change (boolean, ``grid``'s shape;
        :func:`~bids_mcsr.acquisition.region.post_fit_region`): each stack's residual is
        taken on its voxels near it only (:func:`~bids_mcsr.acquisition.region.stack_voxels_near`).
        None: the whole grid.

    Yields
    ------
    numpy.ndarray
        The volume (float32) before the first round, then after each round (one array,
        updated in place: copy what must be kept); voxels no stack covers, or outside
        ``region``, are unchanged.
    """
    out = np.asarray(volume, np.float32).copy()
    yield out
    n = len(stacks)
    held = [[] for _ in range(n)] if heldout is None else [list(h) for h in heldout]
    sigmas = [None] * n if noise is None else list(noise)
    usable = [k for k in range(n) if usable_for_back_projection(stacks[k], grid)]
    if not usable:
        return
    covered = [coverage(stacks[k], grid) for k in usable]
    n_covering = np.maximum(np.sum(covered, axis=0, dtype=np.float32), 1.0)
    if region is not None:
        covered = [inside & region for inside in covered]
    near = [None if region is None else stack_voxels_near(region, grid, stacks[k]) for k in usable]
    for _ in range(iterations):
        coeffs = spline_coefficients(out)  # once for every stack of the round
        correction = np.zeros(grid.shape, np.float32)
        for k, inside, voxels in zip(usable, covered, near):
            stack = stacks[k]
            predicted = resimulate_stack(coeffs, grid, stack, stack_profile(stack, profile), n_samples,
                                         outside="edge", prefiltered=True, workers=workers,
                                         voxels=voxels)
            residual = stack.data - predicted
            if voxels is not None:
                residual[~voxels] = 0.0
            residual = fill_from_neighbours(residual, stack.through_plane_axis, held[k])
            residual *= residual_gain(residual, stack.through_plane_axis, sigmas[k])
            values = back_project(residual, stack, grid, workers)
            values[~inside] = 0.0
            correction += values
            del values
        out += correction / n_covering
        yield out

