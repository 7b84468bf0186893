"""Chunked inference of the INR on a voxel grid."""

from __future__ import annotations

import numpy as np
import torch

from bids_mcsr.image.geometry import CoordinateFrame, Grid, voxel_centres_chunk


def predict_points(model: torch.nn.Module, coords: np.ndarray, device: torch.device,
                   chunk_size: int = 65536) -> np.ndarray:
    """Predictions of every head at normalised ``coords`` ``(N, 3)``, shape ``(N, C)``."""
    out = []
    with torch.inference_mode():
        for start in range(0, coords.shape[0], chunk_size):
            x = torch.from_numpy(coords[start:start + chunk_size]).to(device)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_grid(model: torch.nn.Module, frame: CoordinateFrame, grid: Grid, device: torch.device,
                 chunk_size: int = 65536) -> np.ndarray:
    """Every contrast on ``grid``, shape ``(C, *grid.shape)``, in normalised intensities.

    Works through the grid in chunks of ``chunk_size`` voxels so memory stays bounded.
    """
    result: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, grid.n_voxels, chunk_size):
            stop = min(start + chunk_size, grid.n_voxels)
            x = frame.normalise(voxel_centres_chunk(grid.shape, grid.affine, start, stop))
            pred = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
            if result is None:
                result = np.empty((pred.shape[1], grid.n_voxels), np.float32)
            result[:, start:stop] = pred.T
    assert result is not None
    return result.reshape((-1,) + tuple(grid.shape))
