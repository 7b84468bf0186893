"""Up-front estimates of a subject's disk and memory needs, checked before any training.

A subject that cannot fit is refused in seconds with a one-line message instead of failing
(or being killed) hours later.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from bids_mcsr.errors import InputError
from bids_mcsr.geometry import make_output_grid
from bids_mcsr.io import Stack

GB = 2**30
BYTES_PER_SAMPLE = 40  # coordinates, slab vectors, value, contrast, mask of one LR voxel
DISK_FACTOR = 1.5  # float32 outputs, gzip rarely helps much on noisy volumes; sidecars, mask
DISK_MARGIN = 64 * 2**20  # report, figures, QC files
MODEL_BYTES = {"fast": 256 * 2**20, "paper": 512 * 2**20}  # weights, gradients, Adam, encoding


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

    def memory_bytes(self, model: str) -> int:
        """Peak bytes of training and inference: samples, the model, the output volumes."""
        volumes = (2 * self.n_contrasts + 1) * self.output_voxels * 4
        return int(self.samples * BYTES_PER_SAMPLE + MODEL_BYTES.get(model, MODEL_BYTES["paper"])
                   + volumes)


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


def check_memory(mem_gb: float | None, need: Estimate, model: str, first_file: str) -> None:
    """Raise when the estimated peak memory exceeds ``--mem-gb`` (no check without it).

    Raises
    ------
    InputError
        Naming the subject's first input, both sizes and the fix.
    """
    if mem_gb is None:
        return
    need_bytes = need.memory_bytes(model)
    if need_bytes > mem_gb * GB:
        raise InputError(first_file, f"training on {need.samples} samples and "
                         f"{need.output_voxels} output voxels needs about "
                         f"{need_bytes / GB:.2f} GB, more than --mem-gb {mem_gb:g}",
                         "give a larger --mem-gb or a coarser --output-resolution")
