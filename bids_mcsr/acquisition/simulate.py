"""Simulate anisotropic low-resolution stacks from an isotropic image (evaluation protocol)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline

from bids_mcsr.acquisition.slice_profile import FWHM_TO_SIGMA, PROFILES


def _blur_along(data: np.ndarray, axis: int, profile: str, width_vox: float) -> np.ndarray:
    """Convolve along one axis with the slice profile (width in voxels of the input)."""
    if profile == "none":
        return data
    if profile == "gaussian":
        return ndimage.gaussian_filter1d(data, sigma=width_vox * FWHM_TO_SIGMA, axis=axis,
                                         mode="nearest", truncate=4.0)
    # boxcar of a non-integer width: mean of linearly interpolated shifts at fine midpoints
    n = max(4, int(np.ceil(4 * width_vox)))
    offsets = (np.arange(n) + 0.5) / n * width_vox - width_vox / 2
    out = np.zeros_like(data)
    for off in offsets:
        shift = [0.0, 0.0, 0.0]
        shift[axis] = -off
        out += ndimage.shift(data, shift, order=1, mode="nearest")
    return out / n


def simulate_stack(data: np.ndarray, affine: np.ndarray, axis: int, thickness: float,
                   spacing: float | None = None, profile: str = "gaussian") -> tuple[np.ndarray, np.ndarray]:
    """Thick-slice acquisition of an image along one voxel axis.

    Parameters
    ----------
    data, affine
        The (near-)isotropic source image and its voxel-to-world affine.
    axis
        Voxel axis that becomes the slice direction.
    thickness
        Slice thickness in mm (the FWHM of the Gaussian, or the boxcar width).
    spacing
        Distance between slice centres in mm (default: ``thickness``; larger means a gap).
    profile
        ``gaussian``, ``boxcar`` or ``none`` (point sampling, as in the published code).

    Returns
    -------
    lr_data, lr_affine
        The stack and an affine that places every slice centre where it physically is.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown slice profile {profile!r}; choose from {PROFILES}")
    if data.ndim != 3 or axis not in (0, 1, 2):
        raise ValueError("simulate_stack needs a 3D image and an axis in 0, 1, 2")
    spacing = float(thickness if spacing is None else spacing)
    h = float(np.linalg.norm(affine[:3, axis]))
    blurred = _blur_along(np.asarray(data, np.float64), axis, profile, thickness / h)
    n_hr = data.shape[axis]
    step = spacing / h
    n_lr = max(1, int(np.floor(n_hr * h / spacing)))
    first = (n_hr - 1) / 2 - (n_lr - 1) / 2 * step
    centres = first + step * np.arange(n_lr)
    spline = make_interp_spline(np.arange(n_hr, dtype=float), blurred, k=3, axis=axis)
    lr = spline(centres).astype(np.float32)
    vox_to_hr = np.eye(4)
    vox_to_hr[axis, axis] = step
    vox_to_hr[axis, 3] = first
    return lr, np.asarray(affine, float) @ vox_to_hr
