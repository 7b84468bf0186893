"""Through-plane slice profiles: where inside a slab a low-resolution voxel samples the object.

A low-resolution voxel is modelled as the weighted mean of the continuous image over
sample points along the slice normal, at offsets (mm) from the voxel centre.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack

PROFILES = ("none", "gaussian", "boxcar")
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
SLAB_MAX_OF_SPACING = 1.0  # the widest slab the forward model gives a stack, x its slice spacing
# the modelled FWHM, x the slice thickness, per profile: the boxcar is the slab itself; the
# Gaussian has the variance of a rectangular slab of that thickness (sigma = thickness / sqrt(12)),
# a FWHM of 0.68 x the thickness
SLAB_FWHM_OF_THICKNESS = {"boxcar": 1.0, "gaussian": 2.0 * np.sqrt(2.0 * np.log(2.0)) / np.sqrt(12.0)}
GAP_OF_SPACING = 0.9  # a SliceThickness under this share of the spacing declares gaps
PROFILE_SAMPLES = 5  # quadrature points across a slab (forward model, back-projection, scoring)
RESIMULATE_CHUNK = 2**18  # stack voxels re-simulated at once (bounds the coordinate arrays)


def slab_fwhm_of_thickness(profile: str | None) -> float:
    """The modelled FWHM of ``profile``'s slab, x the slice thickness
    (:data:`SLAB_FWHM_OF_THICKNESS`); 1, the thickness itself, for a profile without a slab
    (``none``) or an unknown one.

    >>> [round(float(slab_fwhm_of_thickness(p)), 2) for p in ("boxcar", "gaussian", "none")]
    [1.0, 0.68, 1.0]
    """
    return SLAB_FWHM_OF_THICKNESS.get(profile, 1.0)


def slab_fwhm(stack: Stack, profile: str) -> float:
    """The through-plane FWHM (mm) the forward model gives a stack's slab under ``profile``.

    The slice thickness is the header's (the spacing when it has none), capped at
    :data:`SLAB_MAX_OF_SPACING` times the slice spacing. The ``boxcar`` is a slab of that
    thickness; the ``gaussian`` has the variance of such a slab (FWHM
    :data:`SLAB_FWHM_OF_THICKNESS` x thickness), not a FWHM equal to it. Both err on the
    narrow side of a Gaussian slab whose FWHM is the thickness, because the two errors cost very
    differently: too wide a slab makes the fit sharpen what was never blurred (on the
    robustness benchmark, a header twice the truth put the output 6 dB below cubic
    interpolation, thin slices declared 4 mm 1-2 dB below), too narrow a slab only leaves some
    blur (a Gaussian slab modelled at 0.68 of its FWHM still gains 3 dB over cubic;
    docs/evaluation.md). A stack that carries the FWHM a fit settled on
    (``Stack.slab_fwhm_mm``) is modelled with that; ``none`` (point samples) has no slab, and
    the thickness is returned.
    """
    if stack.slab_fwhm_mm is not None:
        return float(stack.slab_fwhm_mm)
    return slab_fwhm_of_thickness(profile) * min(stack.thickness, widest_slab_mm(stack))


def widest_slab_mm(stack: Stack) -> float:
    """The thickest slab a stack is believed to have: :data:`SLAB_MAX_OF_SPACING` times its
    slice spacing (a header above it is capped there and flagged by :func:`header_too_thick`)."""
    return SLAB_MAX_OF_SPACING * stack.slice_spacing


def header_too_thick(stack: Stack) -> bool:
    """Whether a thick stack's SliceThickness exceeds :func:`widest_slab_mm` (by more than
    0.1 %: a rotated affine's spacing of 4.9999996 mm is 5 mm).

    >>> from bids_mcsr.image.io import Stack
    >>> affine = np.diag([1, 1, 4.9999996, 1])
    >>> [header_too_thick(Stack(np.zeros((4, 4, 4)), affine, "T1w", slice_thickness=t)) for t in (5, 6)]
    [False, True]
    """
    return not stack.is_isotropic and stack.thickness > 1.001 * widest_slab_mm(stack)


def header_declares_gap(stack: Stack) -> bool:
    """Whether a thick stack's SliceThickness is less than :data:`GAP_OF_SPACING` times its slice
    spacing: slices with gaps between them, or a header that understates the slab.

    >>> from bids_mcsr.image.io import Stack
    >>> affine = np.diag([1, 1, 4, 1])
    >>> [header_declares_gap(Stack(np.zeros((4, 4, 4)), affine, "T1w", slice_thickness=t)) for t in (1, 4)]
    [True, False]
    """
    return not stack.is_isotropic and stack.thickness < GAP_OF_SPACING * stack.slice_spacing


def profile_offsets(profile: str, thickness: float,
                    n_samples: int = PROFILE_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Offsets along the slice normal (mm) and their weights (summing to 1).

    ``gaussian``: Gauss-Hermite quadrature of a Gaussian with FWHM = ``thickness``.
    ``boxcar``: midpoint rule over ``[-thickness/2, thickness/2]``.
    ``none``: a single point at the slice centre.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r}; choose from {PROFILES}")
    if profile == "none" or n_samples <= 1:
        return np.zeros(1), np.ones(1)
    if profile == "gaussian":
        nodes, weights = np.polynomial.hermite_e.hermegauss(n_samples)
        sigma = thickness * FWHM_TO_SIGMA
        return nodes * sigma, weights / weights.sum()
    edges = np.linspace(-thickness / 2, thickness / 2, n_samples + 1)
    return (edges[:-1] + edges[1:]) / 2, np.full(n_samples, 1.0 / n_samples)



def stack_profile(stack: Stack, profile: str) -> str:
    """The profile a stack is modelled with: ``profile``, except ``none`` (point samples) for
    (near-)isotropic stacks."""
    return "none" if stack.is_isotropic else profile


def slice_normal(stack: Stack) -> np.ndarray:
    """Unit world vector along the stack's slice (through-plane) axis."""
    col = stack.affine[:3, stack.through_plane_axis]
    return col / np.linalg.norm(col)


def spline_coefficients(volume: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients of a volume (float32), for ``prefiltered`` re-simulation."""
    return ndimage.spline_filter(np.asarray(volume, np.float32), order=3, output=np.float32)


def resimulate_stack(volume: np.ndarray, grid: Grid, stack: Stack, profile: str,
                     n_samples: int = PROFILE_SAMPLES, outside: str = "zero",
                     prefiltered: bool = False, workers: int = 1,
                     voxels: np.ndarray | None = None) -> np.ndarray:
    """Predict an acquired stack from a volume on ``grid`` (data-consistency check).

    Each voxel of ``stack`` is the profile-weighted mean of the volume, cubic-spline
    interpolated at points along the slice normal. Points outside the grid read 0
    (``outside="zero"``) or the nearest edge voxel (``outside="edge"``). Works through the
    stack in chunks of :data:`RESIMULATE_CHUNK` voxels, ``workers`` chunks at a time (threads:
    SciPy's interpolation releases the GIL; the result does not depend on ``workers``).
    ``prefiltered``: ``volume`` holds :func:`spline_coefficients` already (re-simulating
    several stacks from one volume). ``voxels`` (boolean, the stack's shape): only those are
    predicted, the others read 0 (:func:`~bids_mcsr.acquisition.region.stack_voxels_near`).
    """
    offsets, weights = profile_offsets(profile, slab_fwhm(stack, profile), n_samples)
    normal = slice_normal(stack)
    coeffs = volume if prefiltered else spline_coefficients(volume)
    stack_to_grid = np.linalg.inv(grid.affine) @ stack.affine  # voxel indices to voxel indices
    step = np.linalg.inv(grid.affine[:3, :3]) @ normal  # 1 mm along the normal, in grid voxels
    mode = "constant" if outside == "zero" else "nearest"
    out = np.zeros(stack.data.size)
    wanted = np.arange(stack.data.size) if voxels is None else np.flatnonzero(voxels)

    def chunk(start: int) -> None:
        flat = wanted[start:start + RESIMULATE_CHUNK]
        idx = np.stack(np.unravel_index(flat, stack.data.shape)).astype(np.float64)
        gidx = stack_to_grid[:3, :3] @ idx + stack_to_grid[:3, 3:4]
        for off, w in zip(offsets, weights):
            out[flat] += w * ndimage.map_coordinates(coeffs, gidx + (off * step)[:, None],
                                                     order=3, prefilter=False, mode=mode)

    in_threads(chunk, range(0, wanted.size, RESIMULATE_CHUNK), workers)
    return out.reshape(stack.data.shape).astype(np.float32)


def in_threads(job, items, workers: int) -> None:
    """Run ``job`` on every item, ``workers`` at a time in threads (in order when 1)."""
    if workers <= 1:
        for item in items:
            job(item)
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(job, items):  # re-raises a job's exception
            pass
