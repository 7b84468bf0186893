"""Is a stack where it belongs? A registration check that needs no high-resolution data.

The reference is sampled where the moving stack's voxels are, in place and moved a little
along each world axis; a stack whose voxels share more information with a moved copy than
with the reference in place is misaligned. Used by the QC (a 5 mm step: registration
failures) and by the fit (a 1 mm step: whether to refine the stacks' poses,
:mod:`bids_mcsr.inr.superres`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bids_mcsr.image.intensity import foreground_mask
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import mutual_information

ALIGNMENT_MARGIN = 0.1  # a moved copy must beat the place by 10 % of its MI
ALIGNMENT_MAX_POINTS = 300_000  # voxels of the moving stack compared at most


def alignment_check(moving: Stack, reference: Stack, step_mm: float,
                    max_points: int = ALIGNMENT_MAX_POINTS) -> dict:
    """Does the reference match ``moving`` best where it is, or moved by ``step_mm``?

    The reference is sampled (linear interpolation) at the world positions of the moving
    stack's foreground voxels, in place and moved by ``±step_mm`` along each world axis; the
    mutual information of each copy with the moving voxels is compared on the voxels every
    copy covers. Independent of the registration and of the fit's pose correction: a stack
    misaligned by more than about half the step matches better moved towards its true place.

    Parameters
    ----------
    moving, reference : Stack
        Placed as the fit used them (registered, pose-corrected).
    step_mm : float
        How far the moved copies go.
    max_points : int
        Voxels used at most (an even in-plane subsampling of larger stacks).

    Returns
    -------
    dict
        ``mi_in_place`` and ``mi_moved`` (the best moved copy, nats), ``offset_mm`` (its
        world offset, 3 floats) and ``voxels`` compared; MI values are None when the stacks
        do not overlap.
    """
    axis = moving.through_plane_axis
    stride = [1, 1, 1]
    excess = moving.data.size / max_points
    if excess > 1:
        step = int(np.ceil(np.sqrt(excess)))
        stride = [1 if a == axis else step for a in range(3)]
    data = moving.data[::stride[0], ::stride[1], ::stride[2]]
    fg = foreground_mask(moving.data)[::stride[0], ::stride[1], ::stride[2]].ravel()
    idx = np.indices(data.shape).reshape(3, -1) * np.asarray(stride)[:, None]
    world = moving.affine[:3, :3] @ idx[:, fg] + moving.affine[:3, 3:4]
    to_ref = np.linalg.inv(reference.affine)
    limits = np.asarray(reference.data.shape, float)[:, None] - 0.5
    offsets = [np.zeros(3)] + [sign * step_mm * np.eye(3)[a] for a in range(3)
                               for sign in (-1.0, 1.0)]
    ref = np.asarray(reference.data, np.float64)
    inside = np.ones(world.shape[1], bool)
    sampled = []
    for offset in offsets:
        vox = to_ref[:3, :3] @ (world + offset[:, None]) + to_ref[:3, 3:4]
        inside &= np.all((vox > -0.5) & (vox < limits), axis=0)
        sampled.append(ndimage.map_coordinates(ref, vox, order=1, mode="nearest"))
    values = data.ravel()[fg][inside]
    if values.size < 100:
        return {"mi_in_place": None, "mi_moved": None, "offset_mm": None,
                "voxels": int(values.size)}
    mis = [mutual_information(values, s[inside]) for s in sampled]
    best = 1 + int(np.argmax(mis[1:]))
    return {"mi_in_place": mis[0], "mi_moved": mis[best],
            "offset_mm": [float(v) + 0.0 for v in offsets[best]], "voxels": int(values.size)}


def misaligned(check: dict | None) -> bool:
    """Whether an alignment check found a better match away from the stack's place: the
    best MI of the moved copies above the MI in place by more than :data:`ALIGNMENT_MARGIN`
    (relative)."""
    if not check or check.get("mi_in_place") is None or check.get("mi_moved") is None:
        return False
    return check["mi_moved"] > (1 + ALIGNMENT_MARGIN) * check["mi_in_place"]


def misaligned_stacks(stacks: list[Stack], reference: int, min_step_mm: float) -> list[int]:
    """Indices of the thick stacks (the reference and isotropic stacks left out) that
    :func:`misaligned` finds away from their place, each checked with a step of its finest
    voxel size, at least ``min_step_mm`` (a sub-voxel step cannot tell)."""
    return [k for k, s in enumerate(stacks)
            if k != reference and not s.is_isotropic
            and misaligned(alignment_check(s, stacks[reference],
                                           max(min_step_mm, float(s.voxel_sizes.min()))))]
