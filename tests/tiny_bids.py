"""A tiny synthetic BIDS dataset (an ellipsoid head, thick-slice T1w and T2w) for fast runs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mcsr.acquisition.simulate import simulate_stack

# contrast -> (voxel axis of the slices, intensity of the inner and the outer ellipsoid)
STACKS = {"T1w": (2, 800.0, 300.0), "T2w": (0, 200.0, 900.0), "FLAIR": (1, 500.0, 150.0)}


def phantom(contrast: str, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A 2 mm isotropic two-compartment ellipsoid of one contrast, and its affine."""
    _, inner, outer = STACKS[contrast]
    grid = np.indices((size,) * 3, dtype=np.float32) - (size - 1) / 2
    radius = np.sqrt((grid[0] / 0.45) ** 2 + (grid[1] / 0.4) ** 2 + (grid[2] / 0.35) ** 2)
    data = np.where(radius < size * 0.35, inner, np.where(radius < size * 0.9, outer, 0.0))
    noise = np.random.default_rng(len(contrast)).normal(0, 10, data.shape)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -size
    return (data + noise * (data > 0)).astype(np.float32), affine


def write_stack(anat: Path, name: str, contrast: str, thickness: float = 6.0,
                suffix: str | None = None) -> Path:
    """Write one thick-slice stack ``<anat>/<name>_<suffix>.nii.gz`` of the phantom of
    ``contrast`` (``suffix`` defaults to ``contrast``) and its sidecar."""
    anat.mkdir(parents=True, exist_ok=True)
    data, affine = phantom(contrast)
    lr, lr_affine = simulate_stack(data, affine, STACKS[contrast][0], thickness)
    suffix = suffix or contrast
    path = anat / f"{name}_{suffix}.nii.gz"
    img = nib.Nifti1Image(lr.astype(np.float32), lr_affine)
    img.set_qform(lr_affine, code=1)
    img.set_sform(lr_affine, code=1)
    nib.save(img, path)
    (anat / f"{name}_{suffix}.json").write_text(json.dumps({"SliceThickness": thickness}))
    return path


def tiny_dataset(root: Path, subjects: dict[str, tuple[str, ...]]) -> Path:
    """Write a dataset with the given contrasts per subject label; return its root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    (root / "participants.tsv").write_text(
        "participant_id\n" + "".join(f"sub-{s}\n" for s in subjects))
    for subject, contrasts in subjects.items():
        for contrast in contrasts:
            write_stack(root / f"sub-{subject}" / "anat", f"sub-{subject}", contrast)
    return root


def fast_args(work: Path) -> list[str]:
    """Options that keep a run to seconds: no N4, no registration, one epoch, CPU."""
    return ["-w", str(work), "--epochs", "1", "--nprocs", "1", "--omp-nthreads", "1",
            "--device", "cpu", "--bias-correction", "none", "--registration", "none",
            "--skip-bids-validation"]
