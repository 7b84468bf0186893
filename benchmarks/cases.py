"""Truth-known evaluation cases for the benchmarks (the evaluation protocol of the paper).

(a) ``mni``: the ICBM 2009a template (T1w) and a T2w-like contrast from its tissue maps,
    each simulated as 4 mm stacks in complementary orientations (T1w axial, T2w coronal)
    with a Gaussian slice profile.
(b) ``rorden``: a real same-subject pair (../shared/data/rorden): an axial 4 mm T1w
    simulated from the isotropic T1w, plus the real 2.4 mm oblique PD; only T1w has a truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import foreground_mask
from bids_mcsr.image.io import Stack, load_stack

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Case:
    name: str
    stacks: list[Stack]
    grid: Grid
    truth: dict[str, np.ndarray]
    mask: np.ndarray


def mni_case(resolution: int = 1, thickness: float = 4.0) -> Case:
    vols, affine = mni_truth(resolution)
    t1 = Stack(*simulate_stack(vols["T1w"], affine, 2, thickness), "T1w", "sim_acq-ax_T1w.nii.gz")
    t2 = Stack(*simulate_stack(vols["T2w"], affine, 1, thickness), "T2w", "sim_acq-cor_T2w.nii.gz")
    mask = vols["T1w"] > 0.05 * vols["T1w"].max()
    return Case("mni", [t1, t2], Grid(vols["T1w"].shape, affine), vols, mask)


def rorden_case(thickness: float = 4.0) -> Case:
    t1_path, pd_path = SHARED / "rorden" / "chris_t1.nii.gz", SHARED / "rorden" / "chris_PD.nii.gz"
    if not t1_path.exists():
        raise FileNotFoundError(f"{t1_path} not found (the rorden case needs ../shared/data)")
    img = nib.load(str(t1_path))
    t1 = np.asarray(img.get_fdata(), np.float32)
    axis = int(np.argmax(np.abs(img.affine[2, :3])))  # the voxel axis closest to superior
    lr = Stack(*simulate_stack(t1, img.affine, axis, thickness), "T1w", "sim_acq-ax_T1w.nii.gz")
    pd = load_stack(pd_path, "PDw")
    mask = foreground_mask(t1)
    return Case("rorden", [lr, pd], Grid(t1.shape, img.affine), {"T1w": t1}, mask)


def load_case(name: str, resolution: int = 1) -> Case:
    return mni_case(resolution) if name == "mni" else rorden_case()
