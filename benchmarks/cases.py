"""Truth-known evaluation cases for the benchmarks (the evaluation protocol of the paper).

(a) ``mni``: the ICBM 2009a template (T1w) and a T2w-like contrast from its tissue maps,
    each simulated as 4 mm stacks in complementary orientations (T1w axial, T2w coronal)
    with a Gaussian slice profile.
(b) ``rorden``: a real same-subject pair (../shared/data/rorden): an axial 4 mm T1w
    simulated from the isotropic T1w, plus the real 2.4 mm oblique PD; only T1w has a truth.

:func:`real_anatomy_truth` gives the robustness and lesion benchmarks a second truth with a
real subject's anatomy: the rorden T1w (0.88 mm, one living brain's folding and noise rather
than a 152-subject average) and T2w- and FLAIR-like contrasts mapped from its own tissue
classes.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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


def head_mask(t1: np.ndarray) -> np.ndarray:
    """The voxels the benchmarks score: the T1w truth above 5 % of its maximum."""
    return t1 > 0.05 * t1.max()


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
    mask = head_mask(vols["T1w"])
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


def central_crop(vols: dict[str, np.ndarray], affine: np.ndarray,
                 crop: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The central ``crop`` (voxels; the whole axis where it is shorter) of volumes that share
    one grid, and the crop's voxel-to-world affine."""
    lo = np.maximum((np.asarray(next(iter(vols.values())).shape) - np.asarray(crop)) // 2, 0)
    cut = tuple(slice(a, a + c) for a, c in zip(lo, crop))
    moved = np.array(affine, float)
    moved[:3, 3] = moved[:3, :3] @ lo + moved[:3, 3]
    return {k: np.ascontiguousarray(v[cut]) for k, v in vols.items()}, moved


@contextmanager
def temporary_tempdir() -> Iterator[None]:
    """Point :mod:`tempfile` at a fresh directory, removed with whatever was left in it."""
    before = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="bids_mcsr_bench_") as tmp:
        tempfile.tempdir = tmp
        try:
            yield
        finally:
            tempfile.tempdir = before


def real_t1() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The rorden T1w reoriented to RAS: voxels, affine and voxel sizes (mm)."""
    path = SHARED / "rorden" / "chris_t1.nii.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the real-anatomy case needs ../shared/data)")
    img = nib.as_closest_canonical(nib.load(str(path)))
    return (np.asarray(img.get_fdata(), np.float32), img.affine,
            tuple(float(z) for z in img.header.get_zooms()[:3]))


def tissue_classes(t1: np.ndarray, mask: np.ndarray,
                   spacing: tuple[float, float, float]) -> tuple[np.ndarray, ...]:
    """CSF, grey and white matter posteriors of ``t1`` inside ``mask`` (ANTs Atropos, Otsu
    initialised, 3 classes ordered by mean T1, no MRF prior: with one, the classes differed
    from run to run, whatever the seed and threads)."""
    import ants

    with temporary_tempdir():  # Atropos leaves its probability images in the temp directory
        seg = ants.atropos(a=ants.from_numpy(t1, spacing=spacing),
                           x=ants.from_numpy(mask.astype(np.float32), spacing=spacing),
                           i="Otsu[3]", m="[0,1x1x1]", c="[5,0]")
    return tuple(p.numpy().astype(np.float32) for p in seg["probabilityimages"])


def real_anatomy_truth(crop: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """A central ``crop`` (voxels of 0.88 mm) of the real rorden T1w, reoriented to RAS, with
    T2w- and FLAIR-like contrasts from its own tissue classes.

    The classes are :func:`tissue_classes` inside the crop's foreground; each derived
    contrast is a mix of the three posteriors with the weights of ``phantom.mni_truth`` (the
    template case's contrasts), so it keeps this subject's boundaries, partial volumes and
    fine folding. The T1w is the acquisition itself, its noise included.

    Returns
    -------
    vols : dict
        ``{"T1w", "T2w", "FLAIR"}`` on the crop's grid (float32).
    affine : numpy.ndarray
        The crop's voxel-to-world affine (RAS-aligned axes, as the template's).
    mask : numpy.ndarray
        The foreground scored (T1w above 5 % of its maximum).
    """
    full, full_affine, spacing = real_t1()
    cropped, affine = central_crop({"T1w": full}, full_affine, crop)
    t1 = cropped["T1w"]
    mask = head_mask(t1)
    csf, gm, wm = tissue_classes(t1, mask, spacing)
    scale = 1000.0 / float(np.percentile(t1[mask], 99.5))
    vols = {"T1w": scale * t1,
            "T2w": 800 * (1.0 * csf + 0.55 * gm + 0.3 * wm) * mask,
            "FLAIR": 700 * (0.1 * csf + 0.8 * gm + 0.55 * wm) * mask}
    return vols, affine, mask


def real_anatomy_brain(crop: tuple[int, int, int]) -> np.ndarray:
    """The brain of :func:`real_anatomy_truth`'s crop (cerebrum, cerebellum and brainstem;
    scalp, skull and neck left out), where the issue scores.

    Found on the whole head, then cropped: grey plus white matter (:func:`tissue_classes`
    above one half), eroded by 3 voxels to part it from the scalp, its largest component
    dilated back, closed over 6 voxels and its holes (ventricles) filled (ANTs ``iMath``).
    """
    import ants

    t1, affine, spacing = real_t1()
    head = head_mask(t1)
    _, gm, wm = tissue_classes(t1, head, spacing)
    tissue = ants.from_numpy(((gm + wm) > 0.5).astype(np.float32), spacing=spacing)
    core = ants.iMath(ants.iMath(tissue, "ME", 3), "GetLargestComponent")
    brain = ants.iMath(ants.iMath(ants.iMath(core, "MD", 3), "MC", 6), "FillHoles").numpy() > 0.5
    return central_crop({"brain": brain & head}, affine, crop)[0]["brain"]


def template_case(crop: tuple[int, int, int]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The template's truth (ICBM 2009a, 1 mm), its central ``crop``: volumes, affine and
    :func:`head_mask`."""
    vols, affine = central_crop(*mni_truth(1), crop)
    return vols, affine, head_mask(vols["T1w"])


def template_brain(crop: tuple[int, int, int]) -> np.ndarray:
    """The brain of :func:`template_case`'s crop: its head mask (nilearn's ICBM 2009a is
    skull-stripped)."""
    return template_case(crop)[2]


CASES = {"template": template_case, "real": real_anatomy_truth}  # --case: the truth's builder
BRAINS = {"template": template_brain, "real": real_anatomy_brain}  # --case: the brain scored too
CASE_HELP = ("template: the ICBM 2009a crop (1 mm); real: the rorden subject's T1w and contrasts "
             "from its tissue classes (0.88 mm, needs ../shared/data)")


def load_case(name: str, resolution: int = 1) -> Case:
    return mni_case(resolution) if name == "mni" else rorden_case()
