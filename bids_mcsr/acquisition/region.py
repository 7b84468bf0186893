"""Where the post-fit steps work: the fit's foreground on the output grid, with a margin.

Guided upsampling, back-projection and held-out scoring re-simulate every thick stack
through its acquisition and interpolate maps and residuals onto the output grid, many times
over (a 6-stack, 4-contrast whole head: about 120 re-simulations and 50 interpolated maps).
Most of a stack's field of view, and three quarters of a whole-head grid, is air, where none
of them changes anything worth the time: they work in the region (:func:`post_fit_region`)
and, in each stack, on the voxels near it (:func:`stack_voxels_near`); outside the region
the output is the network's.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack

# stack voxels kept around the region, in-plane: what a map at the region's edge reads
# (the guided maps' two window passes, 2 x 3 voxels for 7 x 7 windows, and the cubic
# interpolation's 2), which also covers back-projection's (its Wiener window's 3 and the
# linear interpolation's 1); through-plane: the cubic interpolation's 2 slices
STACK_MARGIN_INPLANE = 8
STACK_MARGIN_SLICES = 2


def region_margin_mm(stacks: Sequence[Stack], grid: Grid) -> float:
    """How far beyond the fit's foreground the post-fit steps work: the stacks' coarsest slice
    spacing (about how far a re-simulated slab reads, and so what a round of back-projection
    passes on to the next) and two grid voxels (the cubic interpolation's reach). With half
    of that (4 mm) two rounds of back-projecting 6 mm slabs onto a 2 mm grid differed from
    the whole grid's by up to 0.3 % of their change inside the head; with 10 mm by 0.0002 %.

    >>> from bids_mcsr.image.geometry import Grid
    >>> thick = Stack(np.zeros((4, 4, 4)), np.diag([1, 1, 4, 1]), "T1w")
    >>> region_margin_mm([thick], Grid((8, 8, 8), np.eye(4)))
    6.0
    """
    return max(s.slice_spacing for s in stacks) + 2 * float(np.max(grid.spacing))


def post_fit_region(mask: np.ndarray, grid: Grid, margin_mm: float) -> np.ndarray:
    """The grid voxels within ``margin_mm`` (along every axis) of the fit's foreground ``mask``
    (:func:`region_margin_mm`).

    >>> from bids_mcsr.image.geometry import Grid
    >>> mask = np.zeros((12, 1, 1), bool); mask[5] = True
    >>> np.flatnonzero(post_fit_region(mask, Grid((12, 1, 1), np.diag([2.0, 2.0, 2.0, 1.0])), 4.0))
    array([3, 4, 5, 6, 7])
    """
    reach = np.ceil(margin_mm / np.asarray(grid.spacing, float) - 1e-6).astype(int)
    return ndimage.maximum_filter(np.asarray(mask, np.uint8), size=tuple(2 * reach + 1),
                                  mode="constant").astype(bool)


def stack_voxels_near(region: np.ndarray, grid: Grid, stack: Stack) -> np.ndarray:
    """The voxels of ``stack`` whose centres lie in ``region`` (on ``grid``), widened by
    :data:`STACK_MARGIN_INPLANE` voxels in-plane and :data:`STACK_MARGIN_SLICES` slices: the
    ones the post-fit steps re-simulate (a boolean array, the stack's shape)."""
    vox = np.linalg.inv(grid.affine) @ stack.affine
    seen = ndimage.affine_transform(np.asarray(region, np.uint8), vox[:3, :3], vox[:3, 3],
                                    output_shape=stack.data.shape, order=0, mode="constant", cval=0)
    size = [2 * STACK_MARGIN_INPLANE + 1] * 3
    size[stack.through_plane_axis] = 2 * STACK_MARGIN_SLICES + 1
    return ndimage.maximum_filter(seen, size=size, mode="constant").astype(bool)
