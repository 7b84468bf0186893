"""Preprocessing of stacks with ANTsPy: N4 bias-field correction and rigid registration.

Registration never resamples a stack: the rigid transform is folded into the stack's affine,
so the INR is fitted to the voxels as acquired.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from nibabel.affines import voxel_sizes

from bids_mcsr.image.io import Stack

# nibabel affines are RAS+, ITK/ANTs physical space is LPS+: flip x and y.
_RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

REGISTRATION_SAMPLING = 0.1
"""Share of voxels the Mattes metric samples (ANTsPy's default 0.2). Measured on the 1 mm
template's 4 mm axial T1w / coronal T2w, aligned and moved 3 mm / 3 degrees two ways: 30 s
-> 15 s on one thread, the largest head displacement left 0.17-0.19 mm -> 0.17-0.23 mm."""
FIXED_VOXELS_RATIO = 2.0
"""A reference with this many times the moving stack's voxels is registered onto the stack
instead (the stack fixed: ANTs' transform then maps the stack onto the reference as it is, no
inversion): ANTs samples its metric on the fixed image's voxels, so
a 1 mm 3D reference made each 4 mm stack's registration twice as slow (52-57 s against 24-30
s, the same accuracy to 0.14 mm over the field of view, docs/evaluation.md)."""


def set_threads(threads: int | None) -> None:
    """Limit the threads ITK (ANTs) uses in this process."""
    if threads:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(threads))


def to_ants(stack: Stack):
    """The stack as an ANTs image with the same voxels and the same world placement.

    Parameters
    ----------
    stack : Stack
        Input stack.

    Returns
    -------
    ants.ANTsImage
        Float image whose index-to-physical mapping equals ``stack.affine`` (in LPS).
    """
    import ants

    lps = _RAS_LPS @ np.asarray(stack.affine, float)
    spacing = voxel_sizes(lps)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(np.ascontiguousarray(stack.data, dtype=np.float32),
                           origin=tuple(lps[:3, 3]), spacing=tuple(spacing),
                           direction=direction)


def n4_correct(stack: Stack, threads: int | None = None) -> Stack:
    """Remove a smooth bias field from a stack with ANTs N4.

    The field is fitted inside a simple foreground mask (above 5% of the 99th percentile; ANTs'
    default mask can leave the field flat). The shrink factor is chosen so that no axis drops
    below 8 voxels, which keeps thick-slice stacks (few slices) valid.

    Parameters
    ----------
    stack : Stack
        Input stack (intensities >= 0 expected).
    threads : int, optional
        ITK threads.

    Returns
    -------
    Stack
        Same geometry, corrected intensities (float32), rescaled so that the foreground
        median is that of the input (N4 itself returns an arbitrary global scale).
    """
    import ants

    set_threads(threads)
    foreground = stack.data > 0.05 * np.percentile(stack.data, 99)
    mask = to_ants(stack.with_data(foreground.astype(np.float32)))
    shrink = int(max(1, min(4, min(stack.data.shape) // 8)))
    corrected = ants.n4_bias_field_correction(to_ants(stack), mask=mask, shrink_factor=shrink).numpy()
    scale = np.median(stack.data[foreground]) / max(float(np.median(corrected[foreground])), 1e-12)
    return stack.with_data((corrected * scale).astype(np.float32))


def _itk_matrix(transform) -> np.ndarray:
    """4x4 homogeneous matrix (LPS, fixed -> moving points) of an ANTs affine transform."""
    params = np.asarray(transform.parameters, float)
    center = np.asarray(transform.fixed_parameters, float)
    linear = params[:9].reshape(3, 3)
    translation = params[9:12]
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = translation + center - linear @ center
    return matrix


def register_rigid(moving: Stack, reference: Stack, seed: int = 0) -> tuple[np.ndarray, Stack]:
    """Rigidly align ``moving`` to ``reference`` (Mattes mutual information, ANTs).

    The same inputs and seed give the same transform: ANTs runs in a fresh process with one
    ITK thread and a fixed sampling seed. ITK keeps the thread count it first started with for
    the life of a process, and its threaded metric sums vary run to run with several threads
    (0.01-0.05 mm on the demo, enough to move the output grid's edge by a voxel; measured).
    A reference with more than :data:`FIXED_VOXELS_RATIO` times the stack's voxels (a 1 mm 3D
    scan) is the moving image and the stack the fixed one; ANTs' transform is then used as it
    is instead of inverted.

    Parameters
    ----------
    moving : Stack
        Stack to align.
    reference : Stack
        Fixed stack.
    seed : int
        The run's seed; ANTs' metric sampling gets ``ants_seed(seed)``.

    Returns
    -------
    world : ndarray, shape (4, 4)
        RAS+ transform taking a point of the moving stack's world to the reference's world.
    aligned : Stack
        ``moving`` with the same voxels and the affine ``world @ moving.affine``.
    """
    swap = reference.data.size > FIXED_VOXELS_RATIO * moving.data.size
    fixed, free = (moving, reference) if swap else (reference, moving)
    with tempfile.TemporaryDirectory(prefix="bids_mcsr_rigid_") as tmp:
        inputs, output = Path(tmp) / "stacks.npz", Path(tmp) / "fixed_to_moving.npy"
        np.savez(inputs, moving=free.data, moving_affine=free.affine,
                 reference=fixed.data, reference_affine=fixed.affine)
        # TMPDIR: the transform files ANTs writes go into this directory and away with it
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1", TMPDIR=tmp)
        done = subprocess.run([sys.executable, "-m", __name__, str(inputs), str(ants_seed(seed)),
                               str(output)], env=env, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"ANTs rigid registration of {moving.name} failed: {last}")
        fixed_to_moving = np.load(output)
    ras = _RAS_LPS @ fixed_to_moving @ _RAS_LPS  # fixed world -> free world
    world = ras if swap else np.linalg.inv(ras)
    return world, moving.with_affine(world @ moving.affine)


def ants_seed(seed: int) -> int:
    """The ``antsRegistration --random-seed`` of a run seed: never 0, which ANTs takes as
    "seed from the clock" (measured: seed 0 gave a different transform each call).

    >>> [ants_seed(s) for s in (0, 1, -1)]
    [1, 2, 2147483647]
    """
    return seed % (2**31 - 1) + 1


def _ants_rigid(moving: Stack, reference: Stack, seed: int) -> np.ndarray:
    """ANTs' rigid registration in this process; its 4x4 LPS fixed -> moving matrix."""
    import ants

    ants.config.set_ants_deterministic(True, seed)  # antsRegistration --random-seed
    result = ants.registration(fixed=to_ants(reference), moving=to_ants(moving),
                               type_of_transform="Rigid", aff_metric="mattes",
                               aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
                               aff_iterations=(500, 250, 100), smoothing_in_mm=False,
                               aff_random_sampling_rate=REGISTRATION_SAMPLING)
    try:
        return _itk_matrix(ants.read_transform(result["fwdtransforms"][0]))
    finally:
        for path in result["fwdtransforms"] + result["invtransforms"]:
            if os.path.exists(path):
                os.remove(path)


def itk_transform_text(world: np.ndarray) -> str:
    """An ITK text transform file (as ANTs writes) equivalent to a RAS world transform.

    ITK transforms map points of the fixed (reference) space to the moving space, in LPS.

    Parameters
    ----------
    world : ndarray, shape (4, 4)
        RAS+ transform moving-world -> reference-world (as from ``register_rigid``).

    Returns
    -------
    str
        Content of an ``Insight Transform File V1.0``.
    """
    lps = _RAS_LPS @ np.linalg.inv(world) @ _RAS_LPS
    values = list(lps[:3, :3].ravel()) + list(lps[:3, 3])
    return ("#Insight Transform File V1.0\n#Transform 0\n"
            "Transform: AffineTransform_double_3_3\n"
            f"Parameters: {' '.join(f'{v:.10g}' for v in values)}\n"
            "FixedParameters: 0 0 0\n")


def save_stack(stack: Stack, path: Path) -> Path:
    """Write a stack as NIfTI (float32, sform = qform = its affine)."""
    import nibabel as nib

    nib.save(stack.to_nifti(), str(path))
    return Path(path)


if __name__ == "__main__":  # the process ``register_rigid`` starts: stacks.npz seed out.npy
    _stacks = np.load(sys.argv[1])
    _matrix = _ants_rigid(Stack(_stacks["moving"], _stacks["moving_affine"], "moving"),
                          Stack(_stacks["reference"], _stacks["reference_affine"], "reference"),
                          int(sys.argv[2]))
    np.save(sys.argv[3], _matrix)
