"""Image-quality metrics and the cubic B-spline baseline.

PSNR and SSIM are computed inside a mask on the truth's intensity range within that
mask (``data_range = max - min`` of the truth in the mask), i.e. on min-max normalised
intensities without letting the zero background inflate the score.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack


def _range_in(truth: np.ndarray, mask: np.ndarray) -> float:
    vals = truth[mask]
    return float(vals.max() - vals.min())


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) inside ``mask``."""
    mask = mask.astype(bool)
    mse = float(np.mean((pred[mask].astype(np.float64) - truth[mask]) ** 2))
    return float(10 * np.log10(_range_in(truth, mask) ** 2 / max(mse, 1e-20)))


def ssim(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean 3D SSIM (Gaussian window, sigma 1.5) over the voxels inside ``mask``."""
    mask = mask.astype(bool)
    _, smap = structural_similarity(truth.astype(np.float64), pred.astype(np.float64),
                                    data_range=_range_in(truth, mask), gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False, full=True)
    return float(smap[mask].mean())


def mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """Histogram estimate of the mutual information (nats) between paired samples."""
    hist, _, _ = np.histogram2d(np.ravel(a), np.ravel(b), bins=bins)
    pxy = hist / max(hist.sum(), 1)
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    return float((pxy[nz] * np.log(pxy[nz] / (px @ py)[nz])).sum())


def _grid_to_stack(stack: Stack, grid: Grid) -> np.ndarray:
    """The 4 x 4 map from ``grid`` voxel indices to ``stack`` voxel indices."""
    return np.linalg.inv(stack.affine) @ grid.affine


def resample_to_grid(stack: Stack, grid: Grid, order: int = 3) -> np.ndarray:
    """B-spline interpolation (``order``) of a stack onto ``grid``; outside reads the edge."""
    vox = _grid_to_stack(stack, grid)
    return ndimage.affine_transform(stack.data.astype(np.float64), vox[:3, :3], vox[:3, 3],
                                    output_shape=grid.shape, order=order, mode="nearest"
                                    ).astype(np.float32)


def resample_at(stack: Stack, grid: Grid, ijk: np.ndarray, order: int = 3) -> np.ndarray:
    """:func:`resample_to_grid` at the grid voxels ``ijk`` (indices, shape ``(3, N)``) only:
    ``resample_to_grid(stack, grid, order)[tuple(ijk)]``, at a fraction of the cost."""
    vox = _grid_to_stack(stack, grid)
    return ndimage.map_coordinates(stack.data.astype(np.float64), vox[:3, :3] @ ijk + vox[:3, 3:],
                                   order=order, mode="nearest").astype(np.float32)


def resample_planes(stack: Stack, grid: Grid, point: Sequence[int], order: int = 3) -> list[np.ndarray]:
    """:func:`resample_to_grid` of the three grid planes through voxel ``point`` only: plane
    ``a`` is ``resample_to_grid(stack, grid, order)`` indexed at ``point[a]`` along axis
    ``a``, at a fraction of the cost (a report's figures need three planes, not the grid)."""
    planes = []
    for axis in range(3):
        ranges = [np.arange(n) if a != axis else np.array([point[a]]) for a, n in enumerate(grid.shape)]
        ijk = np.stack([i.ravel() for i in np.meshgrid(*ranges, indexing="ij")])
        values = resample_at(stack, grid, ijk, order)
        planes.append(values.reshape([len(r) for r in ranges]).squeeze(axis))
    return planes


def cubic_baseline(stacks: Sequence[Stack], grid: Grid) -> np.ndarray:
    """The interpolation baseline: mean of the cubic B-spline resamplings of one contrast's stacks."""
    return np.mean([resample_to_grid(s, grid, order=3) for s in stacks], axis=0).astype(np.float32)
