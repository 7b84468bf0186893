"""Loading and validating anisotropic input stacks."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from bids_mcsr.errors import InputError

log = logging.getLogger("bids_mcsr")
# sidecar fields that are lists (one value per volume) when a 4D file holds several acquisitions
_PER_VOLUME_FIELDS = ("EchoTime", "InversionTime", "FlipAngle", "RepetitionTime",
                      "RepetitionTimeExcitation")


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
        Contrast key (``T1w``, ``ce-gadolinium_T1w``, ...; see ``bids.contrast_key``).
    path
        File the stack came from, used in messages.
    slice_thickness
        Through-plane slice thickness in mm when known (e.g. from the JSON sidecar);
        ``None`` means "equal to the slice spacing".
    metadata
        The sidecar's fields the run reports.
    slab_fwhm_mm
        The through-plane FWHM (mm) a fit settled on for this stack; None (as read): the
        forward model derives it from the thickness
        (:func:`bids_mcsr.acquisition.slice_profile.slab_fwhm`).
    """

    data: np.ndarray
    affine: np.ndarray
    contrast: str
    path: str | None = None
    slice_thickness: float | None = None
    metadata: dict = field(default_factory=dict)
    slab_fwhm_mm: float | None = None

    @property
    def name(self) -> str:
        """The file name, for messages (``<T1w stack>`` when there is no file)."""
        return os.path.basename(self.path) if self.path else f"<{self.contrast} stack>"

    @property
    def voxel_sizes(self) -> np.ndarray:
        """Voxel sizes (mm) along the voxel axes, from the affine."""
        return voxel_sizes(self.affine)

    @property
    def through_plane_axis(self) -> int:
        """Voxel axis with the coarsest spacing (the slice direction)."""
        return int(np.argmax(self.voxel_sizes))

    @property
    def slice_spacing(self) -> float:
        """Distance between slice centres in mm (the voxel size along the slice axis)."""
        return float(self.voxel_sizes[self.through_plane_axis])

    @property
    def thickness(self) -> float:
        """Slice thickness in mm (the spacing along the slice axis when not given)."""
        if self.slice_thickness is not None:
            return float(self.slice_thickness)
        return self.slice_spacing

    @property
    def is_isotropic(self) -> bool:
        vs = self.voxel_sizes
        return bool(vs.max() / vs.min() < 1.2)

    def with_affine(self, affine: np.ndarray) -> "Stack":
        """The same voxels placed by another affine (e.g. after rigid registration)."""
        return Stack(self.data, np.asarray(affine, float), self.contrast, self.path,
                     self.slice_thickness, dict(self.metadata), self.slab_fwhm_mm)

    def with_data(self, data: np.ndarray) -> "Stack":
        return Stack(np.asarray(data, np.float32), self.affine, self.contrast, self.path,
                     self.slice_thickness, dict(self.metadata), self.slab_fwhm_mm)

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
    zooms = voxel_sizes(affine)
    det = abs(np.linalg.det(affine[:3, :3]))
    if det < 1e-6 * max(float(np.prod(zooms)), 1e-12) or np.any(zooms < 1e-3):
        raise InputError(path, "the affine is singular (zero or collapsed voxel axes)",
                         "fix the header's sform/qform (e.g. reconvert from DICOM with dcm2niix)")
    return affine


def sidecar_of(path: Path) -> dict:
    """The JSON sidecar next to a NIfTI file (``x.nii.gz`` -> ``x.json``), or ``{}``."""
    sidecar = path.with_name(path.name.split(".")[0] + ".json")
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def single_acquisition(metadata: dict) -> bool:
    """Whether a sidecar describes one acquisition: present, and no field that varies per
    volume (``EchoTime``, ``InversionTime``, ``FlipAngle``, ``RepetitionTime``) is a list
    of several values."""
    return bool(metadata) and not any(
        isinstance(metadata.get(key), list) and len(set(map(str, metadata[key]))) > 1
        for key in _PER_VOLUME_FIELDS)


def _first_volume(data: np.ndarray, path: object, single: bool) -> np.ndarray:
    """The 3D volume of a 4D+ array: its only one, or its first if ``single`` acquisition."""
    n_volumes = int(np.prod(data.shape[3:]))
    if n_volumes > 1 and not single:
        raise InputError(path, f"is {data.ndim}D with shape {data.shape}, expected one 3D "
                         "volume (its JSON sidecar does not describe a single acquisition)",
                         "split it and give a single 3D volume per run (e.g. fslsplit)")
    if n_volumes > 1:
        log.warning("%s: is 4D with %d volumes and its sidecar describes one acquisition; "
                    "using the first volume only", path, n_volumes)
    return data.reshape(data.shape[:3] + (n_volumes,))[..., 0]


def validate_data(data: np.ndarray, path: object, single: bool = False) -> np.ndarray:
    """Return a 3D float32 array, or raise for 2D/4D, non-finite or constant images.

    A 4D image gives its first volume when ``single`` (its sidecar describes one
    acquisition, see :func:`single_acquisition`), and is refused otherwise.
    """
    data = np.asarray(data)
    if data.ndim > 3:
        data = _first_volume(data, path, single)
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


def direction_cosines(affine: np.ndarray) -> np.ndarray:
    """The nearest rotation (orthonormal 3x3) to an affine's direction matrix."""
    m = affine[:3, :3] / voxel_sizes(affine)
    u, _, vt = np.linalg.svd(m)
    return u @ vt


def _rotation_degrees(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between the direction cosines of two affines."""
    cos = (np.trace(direction_cosines(a).T @ direction_cosines(b)) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1, 1))))


def check_qform_sform(img: nib.Nifti1Image, path: object) -> None:
    """Log a warning when a header's qform and sform are both set but disagree.

    nibabel (and so this app) uses the sform when its code is > 0; the warning says so
    when the two differ by more than 1 mm anywhere in the field of view or 1 degree.
    """
    hdr = img.header
    if not (int(hdr["sform_code"]) > 0 and int(hdr["qform_code"]) > 0):
        return
    try:
        with np.errstate(all="ignore"):
            qform, sform = img.get_qform(), img.get_sform()
    except ValueError as err:  # e.g. quaternion parameters that are not a rotation
        log.warning("%s: the qform is invalid (%s); using the sform (sform_code %d)",
                    path, err, int(hdr["sform_code"]))
        return
    if not (np.all(np.isfinite(qform)) and np.all(np.isfinite(sform))):
        return
    shape = np.asarray(img.shape[:3], float) - 1
    corners = np.array([[shape[i] * ((k >> i) & 1) for i in range(3)] + [1] for k in range(8)])
    shift = float(np.abs((corners @ qform.T - corners @ sform.T)[:, :3]).max())
    try:
        with np.errstate(all="ignore"):  # a zero voxel axis: no angle (svd raises)
            angle = _rotation_degrees(qform, sform)
    except np.linalg.LinAlgError:
        angle = 0.0
    if shift > 1.0 or angle > 1.0:
        log.warning("%s: qform and sform differ (up to %.1f mm, %.1f degrees); using the sform "
                    "(sform_code %d) as nibabel does; fix the header if the qform is right",
                    path, shift, angle, int(hdr["sform_code"]))


def load_stack(path: str | os.PathLike, contrast: str,
               slice_thickness: float | None = None, metadata: dict | None = None) -> Stack:
    """Load and validate one NIfTI stack.

    Parameters
    ----------
    path : str or PathLike
        NIfTI file.
    contrast : str
        Its contrast key (``T1w``, ``ce-gadolinium_T1w``).
    slice_thickness : float, optional
        Slice thickness in mm.
    metadata : dict, optional
        Its sidecar; default the JSON file next to it, if any. Decides whether a 4D image
        may be reduced to its first volume.

    Raises
    ------
    InputError
        For missing, unreadable, truncated, 2D, 4D (unless one acquisition), non-finite,
        constant or singular-affine images.
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
    if data.ndim > 3 and metadata is None:
        metadata = sidecar_of(path)
    data = validate_data(data, path, single_acquisition(metadata or {}))
    check_qform_sform(img, path)
    if slice_thickness is not None and not (np.isfinite(slice_thickness) and slice_thickness > 0):
        raise InputError(path, f"has an invalid SliceThickness {slice_thickness!r}",
                         "fix or remove SliceThickness in the JSON sidecar")
    return Stack(data, affine, contrast, str(path), slice_thickness)
