"""A truth-known two-contrast head built from the ICBM 2009a template shipped with nilearn.

T1w is the template itself; a T2w-like contrast is mapped from its tissue probability maps
(CSF bright, grey matter intermediate, white matter dark), and a FLAIR-like one too (CSF
suppressed, grey matter brighter than white), so all contrasts share anatomy exactly.
Nothing is downloaded: nilearn carries these files in its wheel.
"""

from __future__ import annotations

import numpy as np
from nilearn import datasets, image


def mni_truth(resolution: int = 1, crop: bool = True) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Isotropic truth volumes ``{"T1w": ..., "T2w": ..., "FLAIR": ...}`` and their shared affine.

    ``resolution`` is 1 or 2 mm. ``crop`` trims the empty border around the head.
    """
    t1 = datasets.load_mni152_template(resolution=resolution)
    gm = image.resample_to_img(datasets.load_mni152_gm_template(resolution=resolution), t1,
                               interpolation="continuous", force_resample=True, copy_header=True)
    wm = image.resample_to_img(datasets.load_mni152_wm_template(resolution=resolution), t1,
                               interpolation="continuous", force_resample=True, copy_header=True)
    t1_data = 1000 * np.asarray(t1.get_fdata(), np.float32)
    g = np.clip(np.asarray(gm.get_fdata(), np.float32), 0, 1)
    w = np.clip(np.asarray(wm.get_fdata(), np.float32), 0, 1)
    head = t1_data > 0.05 * t1_data.max()
    csf = np.clip(1 - g - w, 0, 1) * head
    t2 = 800 * (1.0 * csf + 0.55 * g + 0.3 * w) * head
    # keep the T1w's non-brain texture faintly so T2w is not piecewise constant outside tissue maps
    t2 = t2 + 0.15 * t1_data * (g + w < 0.05)
    flair = 700 * (0.1 * csf + 0.8 * g + 0.55 * w) * head + 0.15 * t1_data * (g + w < 0.05)
    affine = t1.affine.copy()
    vols = {"T1w": t1_data, "T2w": t2.astype(np.float32), "FLAIR": flair.astype(np.float32)}
    if crop:
        idx = np.argwhere(head)
        lo = np.maximum(idx.min(axis=0) - 3, 0)
        hi = np.minimum(idx.max(axis=0) + 4, t1_data.shape)
        vols = {k: v[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].copy() for k, v in vols.items()}
        affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return vols, affine
