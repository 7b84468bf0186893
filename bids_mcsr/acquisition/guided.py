"""Cross-contrast guided upsampling: each contrast as a local linear map of every contrast's
network output, the map fitted on the contrast's own slices.

Between a thick stack's slices the split-head network predicts a contrast from the shared
trunk, which the other contrasts shaped there: where a structure shows in one contrast only
(an enhancing rim on a contrast-enhanced T1w, a lesion invisible in the T2w) the head follows
the others between its own slices and loses or paints it (docs/evaluation.md, the lesion
benchmark). Guided upsampling (the guided filter of He et al. 2013, used as joint upsampling)
decides that from the data instead:

1. re-simulate every contrast's network volume, and every other contrast's stacks
   interpolated onto the grid, through the stack's own acquisition
   (:func:`~bids_mcsr.acquisition.slice_profile.resimulate_stack`): the guides, as the stack
   would have seen them;
2. on each slice, in windows of :func:`guide_window` in-plane voxels, fit the acquired
   intensities as a linear combination of the guides plus an offset (ridge term
   :data:`GUIDE_EPS` on guides scaled to their robust spread inside the head), and average
   the coefficients over the same windows;
3. interpolate the coefficient maps onto the output grid (cubic B-spline: linear
   interpolation put the ce-T1w's lesions of the lesion benchmark 0.8 dB lower) and apply
   them to the network volumes there.

Where the contrast follows the others, the maps reproduce the network's own output; where a
slice shows that it departs from them, the maps carry that departure to the neighbouring
slices' gap as a smooth interpolation would, instead of the trunk's guess. The other
contrasts' stacks, interpolated, are guides beside the networks: where a whole head's network
underfits tissue that only lesions have, they still show it at their own in-plane resolution,
which is the through-plane direction of an orthogonal stack (on the lesion benchmark's T1w,
ce-T1w and T2w whole head, +0.3 to +2.8 dB inside the lesions and +0.03 to +0.44 dB in the
head; docs/evaluation.md). A stack's
held-out slices are left out of the fit (their maps come from their neighbours), so the
held-out scores stay a prediction.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage, stats

from bids_mcsr.acquisition.backprojection import coverage, fill_from_neighbours
from bids_mcsr.acquisition.slice_profile import (
    PROFILE_SAMPLES,
    in_threads,
    resimulate_stack,
    slice_normal,
    spline_coefficients,
    stack_profile,
)
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import resample_to_grid

# the windows the local maps are fitted in: the smallest odd side of at least MIN_GUIDE_WINDOW
# in-plane voxels with VOXELS_PER_COEFFICIENT voxels per fitted coefficient (guides and offset):
# 5 x 5 for up to five guides (two or three contrasts: lesions +0.4 to +1.1 dB, heads -0.04 to
# -0.17 against 7 x 7 on the lesion benchmark's whole heads), 7 x 7 beyond (four contrasts, where
# 5 x 5 cost the heads 0.1-0.3 dB and let a FLAIR-only lesion into the T1w); chosen on those rows
# (docs/evaluation.md)
MIN_GUIDE_WINDOW = 5
VOXELS_PER_COEFFICIENT = 4
PARALLEL_COS = np.cos(np.radians(45.0))  # stacks whose slice normals are closer than this are parallel
GUIDE_EPS = 0.01  # ridge term, the guides in units of their robust spread inside the head


def robust_spread(values: np.ndarray) -> float:
    """The median absolute deviation scaled to a normal sample's standard deviation; 1 where
    that is 0."""
    spread = float(stats.median_abs_deviation(values, axis=None, scale="normal")) if values.size else 0.0
    return spread if spread > 0 else 1.0


def guide_window(n_guides: int) -> int:
    """The side (in-plane voxels) of the windows the maps of ``n_guides`` guides are fitted in.

    >>> [guide_window(n) for n in (2, 3, 5, 6, 7)]
    [5, 5, 5, 7, 7]
    """
    window = MIN_GUIDE_WINDOW
    while window * window < VOXELS_PER_COEFFICIENT * (n_guides + 1):
        window += 2
    return window


def local_linear_maps(data: np.ndarray, guides: Sequence[np.ndarray], axis: int,
                      window: int = MIN_GUIDE_WINDOW,
                      eps: float = GUIDE_EPS) -> tuple[list[np.ndarray], np.ndarray]:
    """Per voxel of a stack, the coefficients of ``data ~ sum_k a_k guides_k + b`` fitted in
    in-plane windows of its slice (``axis`` is the slice normal), averaged over the same
    windows. Each slice's maps depend on that slice alone, and they scale with ``data``
    (the ridge acts on the guides only).

    Returns
    -------
    slopes : list of numpy.ndarray
        ``a_k``, one map per guide, the stack's shape.
    offset : numpy.ndarray
        ``b``.
    """
    size = [window] * 3
    size[axis] = 1

    def box(v: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(v, size, mode="nearest")

    k = len(guides)
    means = [box(g) for g in guides]
    mean_y = box(data)
    cov = np.empty(data.shape + (k, k), np.float32)
    for i in range(k):
        for j in range(i, k):
            cov[..., i, j] = cov[..., j, i] = box(guides[i] * guides[j]) - means[i] * means[j]
    cov += eps * np.eye(k)
    cross = np.stack([box(g * data) - m * mean_y for g, m in zip(guides, means)], -1)
    slopes = np.linalg.solve(cov, cross[..., None])[..., 0]
    offset = mean_y - np.einsum("...k,k...->...", slopes, np.stack(means))
    return [box(slopes[..., i]) for i in range(k)], box(offset)


class Guides:
    """Every contrast's network volume, and its stacks interpolated, on the output grid,
    prepared once for guiding any of them: spline coefficients (for re-simulating stacks) and
    robust spreads.

    Parameters
    ----------
    volumes : mapping of str to numpy.ndarray
        Each contrast's network volume (each in its own intensity scale).
    grid : Grid
        Their grid, the output grid.
    mask : numpy.ndarray
        The fit's foreground on ``grid``: each guide's unit is its robust spread there (over
        the whole grid, a whole head's background, most of the box, made the unit about
        1e-5 of the head's and the ridge term nil).
    profile, n_samples : str, int
        The slice-profile model and its quadrature points.
    workers : int
        Threads that re-simulate stacks and interpolate maps (results do not depend on it).
    stacks : mapping of str to sequence of Stack, optional
        Each contrast's stacks, placed where the fit put them: interpolated onto ``grid``
        (:func:`interpolated_stacks`, the contrast's network volume outside them), guides
        beside the network volumes for each stack of another contrast that they see from
        another direction (:meth:`guides_of`).
    """

    def __init__(self, volumes: Mapping[str, np.ndarray], grid: Grid, mask: np.ndarray, profile: str,
                 n_samples: int = PROFILE_SAMPLES, workers: int = 1,
                 stacks: Mapping[str, Sequence[Stack]] | None = None) -> None:
        self.volumes, self.grid = dict(volumes), grid
        self.profile, self.n_samples, self.workers = profile, n_samples, workers
        given = {c: list(own) for c, own in (stacks or {}).items()} if len(self.volumes) > 1 else {}
        # a contrast's stacks are kept only where they would guide a stack of another contrast
        # (:meth:`guides_of`): two parallel axial stacks need no interpolated guides
        self.stacks = {}
        for c, own in given.items():
            theirs = [s for d, other in given.items() if d != c for s in other]
            if any(sees_across(o, s) for o in own for s in theirs):
                self.stacks[c] = own
        # every guide by key: the networks by contrast, the interpolated stacks by (contrast,)
        self.guides = {**self.volumes, **{(c,): interpolated_stacks(own, grid, self.volumes[c])
                                          for c, own in self.stacks.items()}}
        inside = np.asarray(mask, bool)
        self.scales = {key: robust_spread(v[inside]) for key, v in self.guides.items()}
        self.coefficients = ({key: spline_coefficients(v) for key, v in self.guides.items()}
                             if len(self.volumes) > 1 else {})

    def guides_of(self, contrast: str, stack: Stack) -> list:
        """The keys of the guides of ``contrast``'s ``stack``: every network volume, and every
        other contrast's interpolated stacks where one of them is isotropic or not parallel to
        ``stack`` (a parallel stack has nothing between this one's slices to show, and on the
        lesion benchmark a FLAIR-only lesion in an axial FLAIR went into the axial T1w)."""
        return [*self.volumes, *[(c,) for c, own in self.stacks.items()
                                 if c != contrast and any(sees_across(o, stack) for o in own)]]

    def upsample(self, contrast: str, stacks: Sequence[Stack],
                 heldout: Sequence[Sequence[int]] | None = None,
                 final: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """``contrast``'s volume upsampled by the local linear maps of its thick stacks.

        Parameters
        ----------
        contrast : str
            The contrast; ``stacks`` are its stacks, in its volume's intensity scale.
        stacks : sequence of Stack
            The contrast's stacks.
        heldout : sequence of sequence of int, optional
            Per stack, slices held out to score the fit.
        final : bool
            Whether to make the output too (False: only the version to score, ``final`` None;
            a stack with held-out slices then is not also upsampled by its own maps).

        Returns
        -------
        scored, final : numpy.ndarray
            The mean of the stacks' upsamplings with the held-out slices' maps taken from
            their neighbours (to score on them) and with every slice's own (the output); one
            array when nothing is held out, and the network's own volume where only one
            contrast is given or the contrast has a (near-)isotropic stack.
        """
        own = self.volumes[contrast]
        thick = [k for k, s in enumerate(stacks) if stack_profile(s, self.profile) != "none"]
        if len(self.volumes) < 2 or not thick or len(thick) < len(stacks):
            return own, own if final else None  # nothing to guide by, or an isotropic stack measures it all
        output = np.zeros(self.grid.shape, np.float64)
        scored = np.zeros(self.grid.shape, np.float64)
        held_any = False
        for k in thick:
            stack = stacks[k]
            axis = stack.through_plane_axis
            keys = self.guides_of(contrast, stack)
            seen = [(resimulate_stack(self.coefficients[key], self.grid, stack, self.profile,
                                      self.n_samples, outside="edge", prefiltered=True,
                                      workers=self.workers)
                     / self.scales[key]).astype(np.float32) for key in keys]
            slopes, offset = local_linear_maps(stack.data, seen, axis, guide_window(len(keys)))
            maps = [offset, *slopes]
            inner = sorted(int(s) for s in (heldout[k] if heldout is not None else ())
                           if 0 < s < stack.data.shape[axis] - 1)
            if inner:  # each slice's maps are its own, so the others' stay as they are
                held_any = True
                scored += self._apply(stack, keys, [fill_from_neighbours(m, axis, inner) for m in maps])
                if final:
                    output += self._apply(stack, keys, maps)
            else:
                upsampled = self._apply(stack, keys, maps)
                scored += upsampled
                output += upsampled
        output = (output / len(thick)).astype(np.float32)
        return ((scored / len(thick)).astype(np.float32) if held_any else output), (output if final else None)

    def _apply(self, stack: Stack, keys: Sequence, maps: Sequence[np.ndarray]) -> np.ndarray:
        """The offset and slope maps (in ``stack``'s voxels, offset first, then one per guide of
        ``keys``) interpolated onto the grid and applied to the guides there."""
        on_grid: list[np.ndarray | None] = [None] * len(maps)

        def resample(i: int) -> None:
            on_grid[i] = resample_to_grid(stack.with_data(maps[i]), self.grid)
        in_threads(resample, range(len(maps)), self.workers)
        up = on_grid[0].astype(np.float64)
        for a, key in zip(on_grid[1:], keys):
            up += a * (self.guides[key] / self.scales[key])
        return up


def sees_across(other: Stack, stack: Stack) -> bool:
    """Whether ``other`` shows what lies between ``stack``'s slices: it is isotropic, or its
    slice normal is more than 45 degrees from ``stack``'s (:data:`PARALLEL_COS`)."""
    return other.is_isotropic or abs(float(slice_normal(other) @ slice_normal(stack))) < PARALLEL_COS


def interpolated_stacks(stacks: Sequence[Stack], grid: Grid, fill: np.ndarray) -> np.ndarray:
    """One contrast's stacks interpolated onto ``grid`` (cubic B-spline), averaged where
    several cover a voxel, and ``fill`` (its network volume) outside all of them: a guide
    for the other contrasts (:class:`Guides`) that holds what the stacks measured at their
    own resolution, with no edge values streaked beyond their field of view."""
    total = np.zeros(grid.shape, np.float64)
    count = np.zeros(grid.shape, np.int16)
    for stack in stacks:
        inside = coverage(stack, grid)
        total += np.where(inside, resample_to_grid(stack, grid, order=3), 0.0)
        count += inside
    return np.where(count > 0, total / np.maximum(count, 1), fill).astype(np.float32)
