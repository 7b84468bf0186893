"""A tiny BIDS dataset of thick-slice stacks (an ellipsoid head) for fast server tests.

Written with nibabel alone, so that these tests do not depend on bids_mcsr's internals.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

SIZE = 24  # voxels of the 2 mm isotropic phantom
THICKNESS = 3  # voxels averaged into one thick slice (6 mm)
# contrast -> (voxel axis of the slices, intensity inside, intensity of the shell)
CONTRASTS = {"T1w": (2, 800.0, 300.0), "T2w": (0, 200.0, 900.0), "FLAIR": (1, 500.0, 150.0)}


def thick_stack(contrast: str) -> nib.Nifti1Image:
    """The phantom of ``contrast`` as 6 mm slices along its slice axis (2 mm in-plane).

    Parameters
    ----------
    contrast : str
        A key of ``CONTRASTS``.

    Returns
    -------
    nibabel.Nifti1Image
    """
    axis, inner, outer = CONTRASTS[contrast]
    grid = np.indices((SIZE,) * 3, dtype=np.float32) - (SIZE - 1) / 2
    radius = np.sqrt((grid[0] / 0.45) ** 2 + (grid[1] / 0.4) ** 2 + (grid[2] / 0.35) ** 2)
    data = np.where(radius < SIZE * 0.35, inner, np.where(radius < SIZE * 0.9, outer, 0.0))
    data += np.random.default_rng(len(contrast)).normal(0, 10, data.shape) * (data > 0)
    shape = list(data.shape)
    shape[axis : axis + 1] = [SIZE // THICKNESS, THICKNESS]
    thick = data.reshape(shape).mean(axis=axis + 1).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[axis, axis] = 2.0 * THICKNESS
    affine[:3, 3] = -SIZE + np.diag(affine)[:3] / 2
    return nib.Nifti1Image(thick, affine)


def write_image(anat: Path, name: str, image: nib.Nifti1Image) -> Path:
    """Save ``<anat>/<name>.nii.gz`` with a qform and sform, and its sidecar."""
    anat.mkdir(parents=True, exist_ok=True)
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    path = anat / f"{name}.nii.gz"
    nib.save(image, path)
    thickness = float(max(nib.affines.voxel_sizes(image.affine)))
    (anat / f"{name}.json").write_text(json.dumps({"SliceThickness": thickness}))
    return path


def tiny_dataset(root: Path, units: dict[str, tuple[str, ...]]) -> Path:
    """Write a dataset; return its root.

    Parameters
    ----------
    root : Path
        Where to write it.
    units : dict
        ``sub-01`` or ``sub-03/ses-1`` -> its contrasts.

    Returns
    -------
    Path
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    subjects = sorted({unit.split("/")[0] for unit in units})
    (root / "participants.tsv").write_text("participant_id\n" + "\n".join(subjects) + "\n")
    for unit, contrasts in units.items():
        prefix = unit.replace("/", "_")
        for contrast in contrasts:
            write_image(root / unit / "anat", f"{prefix}_{contrast}", thick_stack(contrast))
    return root


def make_constant(path: Path) -> None:
    """Overwrite an image with ones: the BIDS-App refuses it in its input check."""
    image = nib.load(path)
    nib.save(nib.Nifti1Image(np.ones(image.shape, np.float32), image.affine), path)
