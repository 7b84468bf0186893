"""Through-plane slice profiles: where inside a slab a low-resolution voxel samples the object.

A low-resolution voxel is modelled as the weighted mean of the continuous image over
sample points along the slice normal, at offsets (mm) from the voxel centre.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .geometry import Grid
from .io import Stack

PROFILES = ("none", "gaussian", "boxcar")
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def profile_offsets(profile: str, thickness: float, n_samples: int = 5) -> tuple[np.ndarray, np.ndarray]:
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


def profile_quantile(profile: str, u: torch.Tensor) -> torch.Tensor:
    """Offsets, in units of the slice thickness, at quantiles ``u`` in (0, 1) of the profile."""
    if profile == "gaussian":
        u = u.clamp(1e-6, 1 - 1e-6)
        return (FWHM_TO_SIGMA * np.sqrt(2.0)) * torch.erfinv(2 * u - 1)
    if profile == "boxcar":
        return u - 0.5
    return torch.zeros_like(u)


def slice_normal(stack: Stack) -> np.ndarray:
    """Unit world vector along the stack's slice (through-plane) axis."""
    col = stack.affine[:3, stack.through_plane_axis]
    return col / np.linalg.norm(col)


def resimulate_stack(volume: np.ndarray, grid: Grid, stack: Stack, profile: str = "gaussian",
                     n_samples: int = 5) -> np.ndarray:
    """Predict an acquired stack from a volume on ``grid`` (data-consistency check).

    Each voxel of ``stack`` is the profile-weighted mean of the volume, cubic-spline
    interpolated at points along the slice normal. Points outside the grid read 0.
    """
    offsets, weights = profile_offsets(profile, stack.thickness, n_samples)
    normal = slice_normal(stack)
    coeffs = ndimage.spline_filter(np.asarray(volume, np.float64), order=3)
    world_to_grid = np.linalg.inv(grid.affine)
    idx = np.indices(stack.data.shape, dtype=np.float64).reshape(3, -1)
    world = stack.affine[:3, :3] @ idx + stack.affine[:3, 3:4]
    out = np.zeros(idx.shape[1])
    for off, w in zip(offsets, weights):
        pts = world + (off * normal)[:, None]
        gidx = world_to_grid[:3, :3] @ pts + world_to_grid[:3, 3:4]
        out += w * ndimage.map_coordinates(coeffs, gidx, order=3, mode="constant", cval=0.0,
                                           prefilter=False)
    return out.reshape(stack.data.shape).astype(np.float32)
