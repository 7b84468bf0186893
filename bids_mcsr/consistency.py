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
other contrasts); the back-projection keeps what the stacks measure exactly. It also puts
back their noise and any error of the forward model, so the number of rounds is chosen per
contrast on held-out slices (:mod:`bids_mcsr.holdout`): slices withheld from the rounds,
whose residual is filled in from their neighbours, score every round and the best is kept,
zero rounds included.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .holdout import fill_from_neighbours, heldout_errors
from .io import Stack
from .slice_profile import resimulate_stack, spline_coefficients

DEFAULT_CONSISTENCY_ITERATIONS = 3  # chosen on the benchmark cases (docs/evaluation.md)
MIN_INPLANE_RATIO = 0.5  # stacks sampled much finer in-plane than the output are not back-projected


def back_project(residual: np.ndarray, stack: Stack, grid: Grid) -> np.ndarray:
    """A stack-space ``residual`` on ``grid``, linearly interpolated (edge values outside)."""
    vox = np.linalg.inv(stack.affine) @ grid.affine
    return ndimage.affine_transform(residual.astype(np.float32), vox[:3, :3], vox[:3, 3],
                                    output_shape=grid.shape, order=1, mode="nearest")


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


def enforce_consistency(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack], profile: str,
                        iterations: int, n_samples: int = 5) -> np.ndarray:
    """The volume after ``iterations`` rounds of :func:`consistency_rounds`."""
    out = None
    for out in consistency_rounds(volume, grid, stacks, profile, iterations, n_samples):
        pass
    return out


def consistency_rounds(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack], profile: str,
                       iterations: int, n_samples: int = 5,
                       heldout: Sequence[Sequence[int]] | None = None) -> Iterator[np.ndarray]:
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

    Yields
    ------
    numpy.ndarray
        The volume (float32) before the first round, then after each round (one array,
        updated in place: copy what must be kept); voxels no stack covers are unchanged.
    """
    out = np.asarray(volume, np.float32).copy()
    yield out
    held = [[] for _ in stacks] if heldout is None else [list(h) for h in heldout]
    usable = [(s, h) for s, h in zip(stacks, held) if usable_for_back_projection(s, grid)]
    if not usable:
        return
    covered = [coverage(s, grid) for s, _ in usable]
    n_covering = np.maximum(np.sum(covered, axis=0, dtype=np.float32), 1.0)
    for _ in range(iterations):
        correction = np.zeros(grid.shape, np.float32)
        for (stack, slices), inside in zip(usable, covered):
            stack_profile = "none" if stack.is_isotropic else profile  # as in training
            predicted = resimulate_stack(out, grid, stack, stack_profile, n_samples, outside="edge")
            residual = fill_from_neighbours(stack.data - predicted, stack.through_plane_axis, slices)
            values = back_project(residual, stack, grid)
            values[~inside] = 0.0
            correction += values
            del values
        out += correction / n_covering
        yield out


def choose_rounds(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack],
                  heldout: Sequence[Sequence[int]], masks: Sequence[np.ndarray], profile: str,
                  max_rounds: int, n_samples: int = 5) -> tuple[np.ndarray, int, list[float]]:
    """Back-projection with the number of rounds (0 to ``max_rounds``) that best predicts
    the held-out slices.

    Returns
    -------
    volume, rounds, curve
        The chosen volume, its number of rounds and the pooled held-out mean squared error
        after each round (empty, and ``max_rounds`` rounds run, when nothing is held out).
    """
    best: tuple[float, int, np.ndarray] | None = None
    curve: list[float] = []
    last = volume
    for rounds, current in enumerate(consistency_rounds(volume, grid, stacks, profile,
                                                        max_rounds, n_samples, heldout)):
        last = current
        if not any(len(h) for h in heldout):
            continue
        coeffs = spline_coefficients(current)
        errors = [heldout_errors(coeffs, grid, s, h, m, profile, n_samples)
                  for s, h, m in zip(stacks, heldout, masks)]
        n = sum(e["n"] for e in errors)
        if n == 0:
            continue
        curve.append(sum(e["sr"] for e in errors) / n)
        if best is None or curve[-1] < best[0]:
            best = (curve[-1], rounds, current.copy())
    if best is None:
        return last, max_rounds, curve
    return best[2], best[1], curve
