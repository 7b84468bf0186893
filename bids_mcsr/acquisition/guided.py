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
   them to the network volumes there, in the post-fit region
   (:func:`~bids_mcsr.acquisition.region.post_fit_region`; the network volume outside it).

Where the contrast follows the others, the maps reproduce the network's own output; where a
slice shows that it departs from them, the maps carry that departure to the neighbouring
slices' gap as a smooth interpolation would, instead of the trunk's guess. The other
contrasts' stacks, interpolated, are guides beside the networks (with up to three contrasts,
:data:`STACK_GUIDES_UP_TO`): where a whole head's network
underfits tissue that only lesions have, they still show it at their own in-plane resolution,
which is the through-plane direction of an orthogonal stack (on the lesion benchmark's T1w,
ce-T1w and T2w whole head, +0.3 to +2.8 dB inside the lesions and +0.03 to +0.44 dB in the
head; docs/evaluation.md). A stack's
held-out slices are left out of the fit (their maps come from their neighbours), so the
held-out scores stay a prediction.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import ndimage, stats

from bids_mcsr.acquisition.backprojection import coverage, fill_from_neighbours
from bids_mcsr.acquisition.region import stack_voxels_near
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
from bids_mcsr.image.metrics import resample_at, resample_to_grid

# up to STACK_GUIDES_UP_TO contrasts the other contrasts' stacks guide beside the networks and
# the maps are fitted in windows of STACK_GUIDED_WINDOW in-plane voxels; with more, the networks
# alone guide, in windows of NETWORK_GUIDED_WINDOW. Chosen on the lesion benchmark
# (docs/evaluation.md): on the whole heads of two and three contrasts the stacks in 5 x 5 windows
# put +0.4 to +2.8 dB into the lesions against the networks in 7 x 7; on the glioma crop (four
# contrasts) the stacks gained the heads 0.07-0.24 dB but painted a FLAIR-only lesion into the
# T2w and made a 6-stack participant's post-fit steps 1.7 times as long (6.5 against 3.8
# minutes), and 5 x 5 windows cost the heads up to 0.2 dB, with or without the stacks
STACK_GUIDES_UP_TO = 3
STACK_GUIDED_WINDOW = 5
NETWORK_GUIDED_WINDOW = 7
PARALLEL_COS = np.cos(np.radians(45.0))  # stacks whose slice normals are closer than this are parallel
GUIDE_EPS = 0.01  # ridge term, the guides in units of their robust spread inside the head


def robust_spread(values: np.ndarray) -> float:
    """The median absolute deviation scaled to a normal sample's standard deviation; 1 where
    that is 0."""
    spread = float(stats.median_abs_deviation(values, axis=None, scale="normal")) if values.size else 0.0
    return spread if spread > 0 else 1.0


def guide_window(n_contrasts: int) -> int:
    """The side (in-plane voxels) of the windows the maps are fitted in, with ``n_contrasts``
    contrasts.

    >>> [guide_window(n) for n in (2, 3, 4, 5)]
    [5, 5, 7, 7]
    """
    return STACK_GUIDED_WINDOW if n_contrasts <= STACK_GUIDES_UP_TO else NETWORK_GUIDED_WINDOW


def local_linear_maps(data: np.ndarray, guides: Sequence[np.ndarray], axis: int,
                      window: int = STACK_GUIDED_WINDOW,
                      eps: float = GUIDE_EPS, where: np.ndarray | None = None
                      ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per voxel of a stack, the coefficients of ``data ~ sum_k a_k guides_k + b`` fitted in
    in-plane windows of its slice (``axis`` is the slice normal), averaged over the same
    windows. Each slice's maps depend on that slice alone, and they scale with ``data``
    (the ridge acts on the guides only). ``where`` (boolean, the stack's shape): the slopes
    are fitted on those voxels only, 0 elsewhere, before the averaging.

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
    fitted = np.ones(data.shape, bool) if where is None else np.asarray(where, bool)
    cov = np.empty((int(fitted.sum()), k, k), np.float32)
    for i in range(k):
        for j in range(i, k):
            cov[:, i, j] = cov[:, j, i] = (box(guides[i] * guides[j]) - means[i] * means[j])[fitted]
    cov += eps * np.eye(k)
    cross = np.stack([(box(g * data) - m * mean_y)[fitted] for g, m in zip(guides, means)], -1)
    slopes = np.zeros(data.shape + (k,), np.float32)
    slopes[fitted] = np.linalg.solve(cov, cross[..., None])[..., 0]
    offset = mean_y - np.einsum("...k,k...->...", slopes, np.stack(means))
    return [box(slopes[..., i]) for i in range(k)], box(offset)


class Prepared(NamedTuple):
    """A guide on the output grid, ready to be re-simulated and applied."""

    volume: np.ndarray
    scale: float  # its robust spread inside the fit's foreground, the guide's unit
    coefficients: np.ndarray | None  # its cubic spline coefficients (None where nothing is guided)


class Guides:
    """Every contrast's network volume, and its stacks interpolated, on the output grid,
    prepared once for guiding any of them: spline coefficients (for re-simulating stacks) and
    robust spreads.

    Parameters
    ----------
    volumes : mapping of str to numpy.ndarray
        Each contrast's network volume (each in its own intensity scale): the guides of the
        output.
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
    region : numpy.ndarray, optional
        The grid voxels that are guided (boolean, ``grid``'s shape;
        :func:`~bids_mcsr.acquisition.region.post_fit_region`): the stacks are re-simulated
        near them only (:func:`~bids_mcsr.acquisition.region.stack_voxels_near`) and the
        output is the network volume elsewhere. None: the whole grid.
    stacks : mapping of str to sequence of Stack, optional
        Each contrast's stacks, placed where the fit put them: interpolated onto ``grid``
        (:func:`interpolated_stacks`, the contrast's network volume outside them), guides
        beside the network volumes for each stack of another contrast that they see from
        another direction (:meth:`guides_of`), with up to :data:`STACK_GUIDES_UP_TO`
        contrasts.
    scored_volumes : mapping of str to numpy.ndarray, optional
        The network volumes the scored version is guided by (the network before the held-out
        slices joined its training); ``volumes`` when not given. The interpolated stacks
        guide both versions.
    """

    def __init__(self, volumes: Mapping[str, np.ndarray], grid: Grid, mask: np.ndarray, profile: str,
                 n_samples: int = PROFILE_SAMPLES, workers: int = 1, region: np.ndarray | None = None,
                 stacks: Mapping[str, Sequence[Stack]] | None = None,
                 scored_volumes: Mapping[str, np.ndarray] | None = None) -> None:
        self.volumes, self.grid = dict(volumes), grid
        self.profile, self.n_samples, self.workers = profile, n_samples, workers
        self.active = len(self.volumes) > 1
        given = ({c: list(own) for c, own in (stacks or {}).items()}
                 if self.active and len(self.volumes) <= STACK_GUIDES_UP_TO else {})
        # a contrast's stacks are kept only where they would guide a stack of another contrast
        # (:meth:`guides_of`): two parallel axial stacks need no interpolated guides
        self.stacks = {}
        for c, own in given.items():
            theirs = [s for d, other in given.items() if d != c for s in other]
            if any(sees_across(o, s) for o in own for s in theirs):
                self.stacks[c] = own
        self.inside = np.asarray(mask, bool)
        self.region = region
        self.guided = (np.flatnonzero(region) if region is not None  # flat indices of the guided voxels
                       else np.arange(grid.n_voxels))
        # every guide by key: the networks by contrast, the interpolated stacks by (contrast,);
        # the stacks' entries are shared by the output's and the scored version's guides
        stack_guides = self._prepared({(c,): interpolated_stacks(own, grid, self.volumes[c])
                                       for c, own in self.stacks.items()})
        self.final = {**self._prepared(self.volumes), **stack_guides}
        self.scored = (self.final if scored_volumes is None or scored_volumes is volumes
                       else {**self._prepared(dict(scored_volumes)), **stack_guides})

    def _prepared(self, guides: Mapping) -> dict[object, Prepared]:
        """Each guide of ``guides`` (by key) prepared."""
        return {key: Prepared(v, robust_spread(v[self.inside]),
                              spline_coefficients(v) if self.active else None)
                for key, v in guides.items()}

    def guides_of(self, contrast: str, stack: Stack) -> list:
        """The keys of the guides of ``contrast``'s ``stack``: every network volume, and every
        other contrast's interpolated stacks where one of them is isotropic or not parallel to
        ``stack`` (a parallel stack has nothing between this one's slices to show, and on the
        lesion benchmark a FLAIR-only lesion in an axial FLAIR went into the axial T1w)."""
        return [*self.volumes, *[(c,) for c, own in self.stacks.items()
                                 if c != contrast and any(sees_across(o, stack) for o in own)]]

    def upsample(self, contrast: str, stacks: Sequence[Stack],
                 heldout: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``contrast``'s volume upsampled by the local linear maps of its thick stacks.

        Parameters
        ----------
        contrast : str
            The contrast; ``stacks`` are its stacks, in its volume's intensity scale.
        stacks : sequence of Stack
            The contrast's stacks.
        heldout : sequence of sequence of int, optional
            Per stack, slices held out to score the fit.

        Returns
        -------
        scored, final : numpy.ndarray
            The mean of the stacks' upsamplings of the scored version's guides with the
            held-out slices' maps taken from their neighbours (to score on them), and of the
            output's guides with every slice's own (the output), in the region (the
            network volumes outside it); the network volumes where only one contrast is given
            or the contrast has a (near-)isotropic stack.
        """
        thick = [k for k, s in enumerate(stacks) if stack_profile(s, self.profile) != "none"]
        if not self.active or not thick or len(thick) < len(stacks):
            # nothing to guide by, or an isotropic stack measures it all
            return self.scored[contrast].volume, self.final[contrast].volume
        output = np.zeros(self.guided.size, np.float64)
        scored = np.zeros(self.guided.size, np.float64)
        one_version = self.scored is self.final  # until a stack holds slices out
        for k in thick:
            stack = stacks[k]
            axis = stack.through_plane_axis
            keys = self.guides_of(contrast, stack)
            near = None if self.region is None else stack_voxels_near(self.region, self.grid, stack)
            # the interpolated stacks are re-simulated once, for both versions
            shared = {key: self._seen(self.final[key], stack, near)
                      for key in keys if key not in self.volumes}
            maps = self._maps(stack, keys, self.final, shared, near)
            upsampled = self._apply(stack, [self.final[key] for key in keys], maps)
            output += upsampled
            inner = sorted(int(s) for s in (heldout[k] if heldout is not None else ())
                           if 0 < s < stack.data.shape[axis] - 1)
            one_version = one_version and not inner
            if self.scored is self.final and not inner:
                scored += upsampled
                continue
            if self.scored is not self.final:
                maps = self._maps(stack, keys, self.scored, shared, near)
            if inner:  # each slice's maps are its own, so the others' stay as they are
                maps = [fill_from_neighbours(m, axis, inner) for m in maps]
            scored += self._apply(stack, [self.scored[key] for key in keys], maps)
        output = self._filled(self.final[contrast].volume, output / len(thick))
        return (output if one_version else self._filled(self.scored[contrast].volume,
                                                        scored / len(thick))), output

    def _filled(self, volume: np.ndarray, guided: np.ndarray) -> np.ndarray:
        """``volume`` (float32) with the guided voxels' values ``guided``."""
        out = np.array(volume, np.float32)
        out.reshape(-1)[self.guided] = guided
        return out

    def _maps(self, stack: Stack, keys: Sequence, guides: Mapping[object, Prepared],
              shared: Mapping, near: np.ndarray | None) -> list[np.ndarray]:
        """The offset and slope maps (offset first, then one per key of ``keys``) of ``stack``
        by ``guides`` seen on its voxels ``near`` the region, the re-simulated guides of
        ``shared`` (by key) taken as they are."""
        seen = [shared[key] if key in shared else self._seen(guides[key], stack, near) for key in keys]
        slopes, offset = local_linear_maps(stack.data, seen, stack.through_plane_axis,
                                           guide_window(len(self.volumes)), where=near)
        return [offset, *slopes]

    def _seen(self, guide: Prepared, stack: Stack, near: np.ndarray | None) -> np.ndarray:
        """``guide`` as ``stack`` would have acquired it on its voxels ``near`` the region (0
        elsewhere), in units of its robust spread."""
        return (resimulate_stack(guide.coefficients, self.grid, stack, self.profile, self.n_samples,
                                 outside="edge", prefiltered=True, workers=self.workers, voxels=near)
                / guide.scale).astype(np.float32)

    def _apply(self, stack: Stack, guides: Sequence[Prepared], maps: Sequence[np.ndarray]) -> np.ndarray:
        """The offset and slope maps (in ``stack``'s voxels, offset first, then one per guide of
        ``guides``) interpolated (cubic B-spline, edge values outside the stack) onto the
        guided voxels and applied to the guides there, in the order of ``self.guided``."""
        ijk = np.stack(np.unravel_index(self.guided, self.grid.shape))
        at: list[np.ndarray | None] = [None] * len(maps)

        def interpolate(i: int) -> None:
            at[i] = resample_at(stack.with_data(maps[i]), self.grid, ijk)
        in_threads(interpolate, range(len(maps)), self.workers)
        up = at[0].astype(np.float64)
        for a, guide in zip(at[1:], guides):
            up += a * (guide.volume.reshape(-1)[self.guided] / guide.scale)
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
