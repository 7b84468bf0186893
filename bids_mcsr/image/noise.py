"""Noise level of an acquired stack, from its own voxels."""

from __future__ import annotations

import numpy as np
from skimage.restoration import estimate_sigma

from bids_mcsr.image.io import Stack

MAX_SLICES = 12  # in-plane slices the estimate looks at (the central ones)


def estimate_noise(stack: Stack) -> float:
    """Standard deviation of the stack's noise, in its intensity units.

    The median of the wavelet (Donoho) estimates of scikit-image on the central in-plane
    slices: in-plane sampling is the finest, so the finest wavelet scale there is mostly
    noise, whatever the slice profile did through-plane.
    """
    axis = stack.through_plane_axis
    n = stack.data.shape[axis]
    first = max(0, n // 2 - MAX_SLICES // 2)
    picks = range(first, min(n, first + MAX_SLICES))
    sigmas = [estimate_sigma(np.take(stack.data, k, axis=axis).astype(np.float64))
              for k in picks]
    return float(np.median(sigmas))
