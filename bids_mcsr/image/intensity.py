"""Foreground masks and intensity normalisation (robust percentiles, or min-max) from the
low-resolution inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Head/brain foreground of one stack: Otsu threshold, largest component, holes filled.

    Works on the acquired (anisotropic) voxels only; no high-resolution data is needed.
    """
    smooth = ndimage.gaussian_filter(data.astype(np.float32), 1.0)
    thr = threshold_otsu(smooth)
    mask = smooth > 0.5 * thr
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask = ndimage.binary_fill_holes(mask)
    return mask.astype(bool)


SCALINGS = ("percentile", "minmax")


@dataclass(frozen=True)
class IntensityScaler:
    """Affine map of one stack's intensities to roughly [0, 1] and back (``low`` to 0,
    ``high`` to 1)."""

    low: float
    high: float

    @classmethod
    def fit(cls, data: np.ndarray, mask: np.ndarray, method: str = "percentile") -> "IntensityScaler":
        """The scaler of one stack.

        Parameters
        ----------
        data : numpy.ndarray
            The stack's voxels.
        mask : numpy.ndarray
            Its foreground (bool, same shape).
        method : {"percentile", "minmax"}
            ``"percentile"``: ``low`` the 0.5th percentile of all voxels, ``high`` the 99.5th
            inside the foreground (robust to a few extreme voxels); ``"minmax"``: the minimum
            and maximum of all voxels (the published code), to exactly [0, 1].

        Returns
        -------
        IntensityScaler
            ``high > low`` unless the stack is constant.
        """
        if method == "minmax":
            return cls(float(data.min()), float(data.max()))
        if method != "percentile":
            raise ValueError(f"unknown intensity scaling {method!r}; choose from {SCALINGS}")
        low = float(np.percentile(data, 0.5))
        fg = data[mask] if mask.any() else data.ravel()
        high = float(np.percentile(fg, 99.5))
        if high <= low:
            high = float(data.max())
        return cls(low, high)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.low) / (self.high - self.low)).astype(np.float32)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return (y * (self.high - self.low) + self.low).astype(np.float32)
