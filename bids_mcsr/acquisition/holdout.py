"""Held-out slices: the run's own estimate of quality between the acquired slices.

A few slices of every thick-slice stack are withheld from the first half of the training
(:data:`~bids_mcsr.inr.training.HELDOUT_JOINS_AT`; they train after that) and from
back-projection. The volume fitted by then re-simulates them through the stack's acquisition model;
cubic B-spline interpolation along the slice axis predicts them from the remaining slices of
the same stack. Both are scored against the acquired slices, so their difference estimates,
without any high-resolution truth, what super-resolution added over interpolation where it
matters: between the slices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.interpolate import make_interp_spline

from bids_mcsr.acquisition.backprojection import consistency_rounds
from bids_mcsr.acquisition.slice_profile import (
    PROFILE_SAMPLES,
    resimulate_stack,
    spline_coefficients,
    stack_profile,
)
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack

HOLDOUT_FRACTION = 0.05  # share of a stack's slices withheld
MIN_HELDOUT = 2  # slices withheld per stack, at least
MIN_SLICES = 10  # stacks with fewer slices keep them all
EDGE = 2  # slices at each end that are never withheld


def choose_heldout(stack: Stack, rng: np.random.Generator,
                   fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """Indices (sorted) of the slices of ``stack`` to withhold.

    None for (near-)isotropic stacks, stacks of fewer than :data:`MIN_SLICES` slices or
    ``fraction <= 0``; otherwise ``max(MIN_HELDOUT, fraction x slices)`` slices, never
    within :data:`EDGE` of either end and never two adjacent ones (so each has acquired
    neighbours on both sides).
    """
    n = stack.data.shape[stack.through_plane_axis]
    if fraction <= 0 or stack.is_isotropic or n < MIN_SLICES:
        return np.zeros(0, int)
    wanted = max(MIN_HELDOUT, int(round(fraction * n)))
    chosen: list[int] = []
    for k in rng.permutation(np.arange(EDGE, n - EDGE)):
        if len(chosen) == wanted:
            break
        if all(abs(int(k) - c) > 1 for c in chosen):
            chosen.append(int(k))
    return np.array(sorted(chosen), int)


def slice_mask(stack: Stack, slices: Sequence[int]) -> np.ndarray:
    """Boolean array of the stack's shape, true on ``slices`` (along its slice axis)."""
    mask = np.zeros(stack.data.shape, bool)
    index = [slice(None)] * 3
    index[stack.through_plane_axis] = np.asarray(slices, int)
    mask[tuple(index)] = True
    return mask


def take_slices(data: np.ndarray, axis: int, slices: Sequence[int]) -> np.ndarray:
    return np.take(data, np.asarray(slices, int), axis=axis)


def single_slice(stack: Stack, k: int) -> Stack:
    """Slice ``k`` of a stack as a one-slice stack at its place in the world."""
    axis = stack.through_plane_axis
    shift = np.eye(4)
    shift[axis, 3] = k
    return Stack(take_slices(stack.data, axis, [k]), stack.affine @ shift, stack.contrast,
                 stack.path, stack.thickness, dict(stack.metadata), stack.slab_fwhm_mm)


def interpolate_heldout(stack: Stack, slices: Sequence[int]) -> np.ndarray:
    """Cubic B-spline interpolation of the held-out ``slices`` from the stack's other slices
    (along the slice axis), shape of ``take_slices(stack.data, axis, slices)``."""
    axis = stack.through_plane_axis
    n = stack.data.shape[axis]
    kept = np.setdiff1d(np.arange(n), slices)
    spline = make_interp_spline(kept.astype(float), take_slices(stack.data, axis, kept), k=3,
                                axis=axis)
    return spline(np.asarray(slices, float)).astype(np.float32)


def no_errors() -> dict:
    """The :func:`heldout_errors` of a stack with nothing held out."""
    return {"sr": 0.0, "cubic": 0.0, "n": 0}


def heldout_errors(coeffs: np.ndarray, grid: Grid, stack: Stack, slices: Sequence[int],
                   mask: np.ndarray, profile: str, n_samples: int = PROFILE_SAMPLES) -> dict:
    """Squared errors on a stack's held-out slices, inside its foreground ``mask``.

    ``coeffs`` are the volume's :func:`~bids_mcsr.acquisition.slice_profile.spline_coefficients`.

    Returns
    -------
    dict
        ``sr`` and ``cubic``: sums of squared errors of the volume re-simulated through
        the stack's acquisition model, and of cubic interpolation from the other slices;
        ``n``: voxels scored.
    """
    if len(slices) == 0:
        return no_errors()
    axis = stack.through_plane_axis
    acquired = take_slices(stack.data, axis, slices).astype(np.float64)
    inside = take_slices(mask, axis, slices).astype(bool)
    sr = np.concatenate([resimulate_stack(coeffs, grid, single_slice(stack, k),
                                          stack_profile(stack, profile),
                                          n_samples, outside="edge", prefiltered=True)
                         for k in slices], axis=axis)
    cubic = interpolate_heldout(stack, slices)
    return {"sr": float(((sr - acquired)[inside] ** 2).sum()),
            "cubic": float(((cubic - acquired)[inside] ** 2).sum()), "n": int(inside.sum())}


def pooled_psnr(errors: Sequence[dict], key: str, data_range: float) -> float | None:
    """PSNR (dB) of the pooled squared errors ``key`` of several :func:`heldout_errors`."""
    n = sum(e["n"] for e in errors)
    if n == 0:
        return None
    mse = sum(e[key] for e in errors) / n
    return float(10 * np.log10(data_range ** 2 / max(mse, 1e-20)))


def validate(volume: np.ndarray, grid: Grid, stacks: Sequence[Stack],
             heldout: Sequence[Sequence[int]], masks: Sequence[np.ndarray], profile: str,
             rounds: int, n_samples: int = PROFILE_SAMPLES,
             noise: Sequence[float] | None = None, workers: int = 1,
             region: np.ndarray | None = None) -> tuple[list[dict], list[float]]:
    """Score a contrast's fit on its stacks' held-out slices.

    The network's ``volume`` goes through ``rounds`` of back-projection that leave the
    held-out slices out, as the output's own rounds would with every slice (``noise`` and
    ``workers`` and ``region`` as in
    :func:`~bids_mcsr.acquisition.backprojection.consistency_rounds`).

    Returns
    -------
    errors, curve
        Per stack, the :func:`heldout_errors` after the last round; the pooled held-out
        mean squared error before the first round and after each round.
    """
    curve: list[float] = []
    errors = [no_errors() for _ in stacks]
    if not any(len(h) for h in heldout):
        return errors, curve  # nothing to score: the output's own rounds are the only ones
    for current in consistency_rounds(volume, grid, stacks, profile, rounds, n_samples,
                                      heldout=heldout, noise=noise, workers=workers,
                                      region=region):
        coeffs = spline_coefficients(current)
        errors = [heldout_errors(coeffs, grid, s, h, m, profile, n_samples)
                  for s, h, m in zip(stacks, heldout, masks)]
        n = sum(e["n"] for e in errors)
        if n:
            curve.append(sum(e["sr"] for e in errors) / n)
    return errors, curve
