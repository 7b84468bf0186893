"""Loading and validating anisotropic input stacks."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .errors import InputError


@dataclass
class Stack:
    """One acquired stack of one contrast in scanner space.

    Parameters
    ----------
    data
        3D float32 intensities.
    affine
        4x4 voxel-to-world (scanner RAS+ mm) matrix; the single source of geometric truth.
    contrast
        BIDS suffix of the contrast (``T1w``, ``T2w``, ...).
    path
        File the stack came from, used in messages.
    slice_thickness
        Through-plane slice thickness in mm when known (e.g. from the JSON sidecar);
        ``None`` means "equal to the slice spacing".
    """

    data: np.ndarray
    affine: np.ndarray
    contrast: str
    path: str | None = None
    slice_thickness: float | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return os.path.basename(self.path) if self.path else f"<{self.contrast} stack>"

    @property
    def voxel_sizes(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def through_plane_axis(self) -> int:
        """Voxel axis with the coarsest spacing (the slice direction)."""
        return int(np.argmax(self.voxel_sizes))

    @property
    def thickness(self) -> float:
        """Slice thickness in mm (the spacing along the slice axis when not given)."""
        if self.slice_thickness is not None:
            return float(self.slice_thickness)
        return float(self.voxel_sizes[self.through_plane_axis])

    @property
    def is_isotropic(self) -> bool:
        vs = self.voxel_sizes
        return bool(vs.max() / vs.min() < 1.2)

    def with_affine(self, affine: np.ndarray) -> "Stack":
        """The same voxels placed by another affine (e.g. after rigid registration)."""
        return Stack(self.data, np.asarray(affine, float), self.contrast, self.path,
                     self.slice_thickness, dict(self.metadata))

    def with_data(self, data: np.ndarray) -> "Stack":
        return Stack(np.asarray(data, np.float32), self.affine, self.contrast, self.path,
                     self.slice_thickness, dict(self.metadata))

    def to_nifti(self) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.data.astype(np.float32), self.affine)
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


def validate_affine(affine: np.ndarray, path: object) -> np.ndarray:
    """Return the affine as float64, or raise if it is non-finite or singular."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(path, "the affine (sform/qform) has non-finite entries",
                         "fix the header (e.g. reconvert from DICOM with dcm2niix)")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    det = abs(np.linalg.det(affine[:3, :3]))
    if det < 1e-6 * max(float(np.prod(zooms)), 1e-12) or np.any(zooms < 1e-3):
        raise InputError(path, "the affine is singular (zero or collapsed voxel axes)",
                         "fix the header's sform/qform (e.g. reconvert from DICOM with dcm2niix)")
    return affine


def validate_data(data: np.ndarray, path: object) -> np.ndarray:
    """Return a 3D float32 array, or raise for 2D/4D, non-finite or constant images."""
    data = np.asarray(data)
    if data.ndim > 3:
        extra = data.shape[3:]
        if int(np.prod(extra)) == 1:
            data = data.reshape(data.shape[:3])
        else:
            raise InputError(path, f"is {data.ndim}D with shape {data.shape}, expected one 3D volume",
                             "split it and give a single 3D volume per run (e.g. fslsplit)")
    if data.ndim < 3 or min(data.shape) < 2:
        raise InputError(path, f"has shape {data.shape}, expected a 3D volume with at least "
                         "2 voxels along each axis", "give a 3D stack of several slices")
    data = data.astype(np.float32, copy=False)
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise InputError(path, f"has {n_bad} NaN/Inf voxels",
                         "replace them (e.g. fslmaths in -nan out) or exclude the run")
    if float(data.max()) == float(data.min()):
        raise InputError(path, f"is constant (every voxel is {float(data.max()):g})",
                         "check the conversion from DICOM or exclude the run")
    return data


def load_stack(path: str | os.PathLike, contrast: str,
               slice_thickness: float | None = None) -> Stack:
    """Load and validate one NIfTI stack.

    Raises
    ------
    InputError
        For missing, unreadable, truncated, 2D/4D, non-finite, constant or
        singular-affine images.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "does not exist", "check the path or the BIDS filters")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise TypeError(type(img).__name__)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(path, f"is not a readable NIfTI image ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'corrupt'})",
                         "re-export or re-convert the file") from None
    affine = validate_affine(img.affine, path)
    data = validate_data(data, path)
    if slice_thickness is not None and not (np.isfinite(slice_thickness) and slice_thickness > 0):
        raise InputError(path, f"has an invalid SliceThickness {slice_thickness!r}",
                         "fix or remove SliceThickness in the JSON sidecar")
    return Stack(data, affine, contrast, str(path), slice_thickness)
