"""Up-front estimates of a subject's disk and memory needs, checked before any training.

A subject that cannot fit is refused in seconds with a one-line message instead of failing
(or being killed) hours later. The same plan sets the training batch and inference chunk,
so what is checked is what runs.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from bids_mcsr.acquisition.slice_profile import RESIMULATE_CHUNK
from bids_mcsr.errors import InputError
from bids_mcsr.image.geometry import make_output_grid
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.presets import ModelSpec

GB = 2**30
RUNTIME_BYTES = 2**30  # Python, torch, ANTsPy, nipype (455 MB), N4/registration images, torch.compile
BYTES_PER_SAMPLE = 64  # coordinates, value, contrast, stack, mask, epoch order of one LR voxel
BYTES_PER_VOXEL = 48  # output-grid masks and their resampling (float64 coordinates)
BYTES_PER_VOXEL_CONTRAST = 28  # prediction, volume, its float32 copy while writing; the prediction
# before the held-out slices joined the training and its guide's spline coefficients; its stacks
# interpolated as a guide and their coefficients, shared by the scored and the final guides (float32)
CONSISTENCY_BYTES_PER_VOXEL = 28  # spline coefficients, correction, coverage, their inputs
# float64 voxel and sample-point coordinates, per stack voxel of a re-simulation chunk; one
# chunk per worker thread (6-stack subject: +0.55 GB peak from 2 to 16 threads, 39 MB each)
CONSISTENCY_BYTES_PER_SAMPLE = 150
# host memory a fit on a CUDA GPU adds: the CUDA runtime, cuBLAS and the compiled kernels
# (one measurement: the 6-stack subject on an H100 peaked at 3.88 GB, on 2 CPU threads at
# 2.18 GB, 0.55 GB of the difference its 16 threads)
CUDA_HOST_BYTES = int(1.2 * 2**30)
ADAM_COPIES = 4  # weights, gradients, two moment estimates
DISK_FACTOR = 1.5  # float32 outputs, gzip rarely helps much on noisy volumes; sidecars, mask
DISK_MARGIN = 64 * 2**20  # report, figures, QC files
MIN_BATCH = 256
MIN_CHUNK, MAX_CHUNK, DEFAULT_CHUNK = 4096, 262144, 131072


@dataclass(frozen=True)
class Estimate:
    """What one subject/session will need.

    Attributes
    ----------
    samples : int
        Training samples (every voxel of every input stack).
    output_voxels : int
        Voxels of the output grid.
    n_contrasts : int
        Volumes written.
    """

    samples: int
    output_voxels: int
    n_contrasts: int

    @property
    def disk_bytes(self) -> int:
        """Bytes the derivatives take: ``n_contrasts x voxels x 4 x 1.5`` plus a margin."""
        return int(self.n_contrasts * self.output_voxels * 4 * DISK_FACTOR + DISK_MARGIN)


def parameter_count(spec: ModelSpec, n_contrasts: int) -> int:
    """Trainable parameters of ``spec`` (hash tables at their full size: an upper bound)."""
    args = spec.encoding_args
    if spec.encoding == "hashgrid":
        encoding = args["n_levels"] * 2 ** args["log2_table_size"] * args["n_features"]
        width = args["n_levels"] * args["n_features"]
    else:
        encoding, width = 0, 2 * args["n_frequencies"]
    trunk = 0
    for _ in range(spec.trunk_depth):
        trunk += (width + 1) * spec.trunk_width
        width = spec.trunk_width
    heads = n_contrasts * ((width + 1) * spec.head_width + spec.head_width + 1)
    return encoding + trunk + heads


def evaluation_bytes(spec: ModelSpec, n_contrasts: int) -> int:
    """Activation bytes one network evaluation keeps for the backward pass.

    Hash grid, per level: 8 corner indices (int64, 3 axes and the flat one), 8 weights and
    8 looked-up feature vectors; Fourier: the projection and its sine and cosine; each
    layer: its linear output and its ReLU.
    """
    args = spec.encoding_args
    if spec.encoding == "hashgrid":
        encoding = args["n_levels"] * (8 * 4 * 8 + 8 * 4 + 8 * args["n_features"] * 4 + 9 * 4)
    else:
        encoding = 3 * args["n_frequencies"] * 4
    layers = 2 * spec.trunk_depth * spec.trunk_width + n_contrasts * (2 * spec.head_width + 1)
    return encoding + 4 * (3 + layers)


@dataclass(frozen=True)
class MemoryPlan:
    """Training batch, inference chunk and the peak memory they lead to.

    Attributes
    ----------
    batch_size : int
        Samples per training step.
    chunk : int
        Voxels per inference chunk.
    peak_bytes : int
        Estimated peak resident memory of the subject's process.
    fits : bool
        Whether ``peak_bytes`` is within the limit it was planned for (True without one).
    """

    batch_size: int
    chunk: int
    peak_bytes: int
    fits: bool


def plan_memory(need: Estimate, spec: ModelSpec, n_profile: int, mem_gb: float | None = None,
                workers: int = 1, cuda: bool = False) -> MemoryPlan:
    """Fit the training batch and inference chunk to ``mem_gb``.

    Fixed costs (runtime, :data:`CUDA_HOST_BYTES` more for a fit on a GPU (``cuda``),
    samples, model with Adam state, output volumes) come first; half of what is left goes
    to one training step's activations (forward and backward, each sample evaluated at
    ``n_profile`` points through its slab) or one inference chunk. Without ``mem_gb`` the
    model's batch size and :data:`DEFAULT_CHUNK`-voxel chunks are used. The data-consistency
    step (one contrast at a time, stacks re-simulated in chunks, one chunk per thread of
    ``workers``; the training samples are freed by then) is the other candidate for the peak.
    """
    runtime = RUNTIME_BYTES + (CUDA_HOST_BYTES if cuda else 0)
    persistent = (runtime + ADAM_COPIES * 4 * parameter_count(spec, need.n_contrasts)
                  + need.output_voxels * (BYTES_PER_VOXEL + BYTES_PER_VOXEL_CONTRAST * need.n_contrasts))
    fixed = persistent + need.samples * BYTES_PER_SAMPLE  # the samples live until training ends
    per_eval = evaluation_bytes(spec, need.n_contrasts)
    per_sample = 2 * n_profile * per_eval  # forward activations and their gradients
    if mem_gb is None:
        batch, chunk = spec.batch_size, DEFAULT_CHUNK
    else:
        spare = max(0.0, mem_gb * GB - fixed) / 2
        batch = int(min(spec.batch_size, max(MIN_BATCH, spare // per_sample)))
        chunk = int(np.clip(spare // per_eval, MIN_CHUNK, MAX_CHUNK))
    consistency = (need.output_voxels * CONSISTENCY_BYTES_PER_VOXEL
                   + workers * min(need.samples, RESIMULATE_CHUNK) * CONSISTENCY_BYTES_PER_SAMPLE)
    peak = max(fixed + max(batch * per_sample, chunk * per_eval), persistent + consistency)
    return MemoryPlan(batch, chunk, int(peak), mem_gb is None or peak <= mem_gb * GB)


def estimate(stacks: Sequence[Stack], spacing: float | None = None,
             output_grid: Path | None = None) -> Estimate:
    """Estimate a subject's needs from its input stacks.

    Parameters
    ----------
    stacks : sequence of Stack
        The loaded input stacks.
    spacing : float, optional
        ``--output-resolution``; default the finest in-plane spacing.
    output_grid : Path, optional
        ``--output-grid`` image.

    Returns
    -------
    Estimate
        Sample and voxel counts.
    """
    if output_grid is not None:
        voxels = int(np.prod(nib.load(output_grid).shape[:3]))
    else:
        voxels = make_output_grid(stacks, spacing).n_voxels
    return Estimate(samples=int(sum(s.data.size for s in stacks)), output_voxels=voxels,
                    n_contrasts=len({s.contrast for s in stacks}))


def check_disk(output_dir: Path, need: Estimate) -> None:
    """Raise when ``output_dir``'s file system has less free space than the outputs need.

    Raises
    ------
    InputError
        Naming the directory, both sizes and the fix.
    """
    free = shutil.disk_usage(output_dir).free
    if free < need.disk_bytes:
        raise InputError(output_dir, f"has {free / GB:.2f} GB free, the outputs need about "
                         f"{need.disk_bytes / GB:.2f} GB",
                         "free disk space, choose another output_dir or a coarser "
                         "--output-resolution")


def check_memory(mem_gb: float | None, need: Estimate, spec: ModelSpec, n_profile: int,
                 first_file: str, workers: int = 1, cuda: bool = False) -> MemoryPlan:
    """Plan memory for ``--mem-gb`` (``workers`` and ``cuda`` as in :func:`plan_memory`) and
    raise when even the smallest batch cannot fit.

    Raises
    ------
    InputError
        Naming the subject's first input, both sizes and the fix.
    """
    plan = plan_memory(need, spec, n_profile, mem_gb, workers, cuda)
    if not plan.fits:
        raise InputError(first_file, f"training on {need.samples} samples and "
                         f"{need.output_voxels} output voxels needs about "
                         f"{plan.peak_bytes / GB:.2f} GB, more than --mem-gb {mem_gb:g}",
                         "give a larger --mem-gb or a coarser --output-resolution")
    return plan
