"""Realistic thick-slice acquisitions of a truth-known head, for the robustness benchmark.

Deliberately independent of the app's forward model (``bids_mcsr.acquisition.slice_profile``) and of its
evaluation simulator (``bids_mcsr.acquisition.simulate``): every profile here is integrated numerically on
a fine grid of offsets, the noise is Rician, headers can lie and stacks can be misplaced.

Profiles (``w`` = the nominal thickness, mm):

* ``gaussian``: FWHM = ``w`` (what the app assumes by default);
* ``rect``: a rectangular slab of width ``w``;
* ``thin``: a 1 mm rectangular slab (thin slices; with 4 mm spacing a 3 mm gap);
* ``sinc``: a truncated sinc (main lobe FWHM = ``w``, three lobes each side; negative side
  lobes), the profile of a short truncated-sinc RF pulse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import make_interp_spline
from scipy.spatial.transform import Rotation

from bids_mcsr.image.io import Stack

FINE_MM = 0.1  # offset step of the numerical profile integration
THIN_MM = 1.0
SINC_FWHM = 1.2067  # FWHM of sin(pi x)/(pi x) in units of its zero spacing


def profile_kernel(kind: str, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (mm) and weights (summing to 1) of a slice profile of nominal width ``w``."""
    if kind == "gaussian":
        sigma = w / (2 * np.sqrt(2 * np.log(2)))
        z = np.arange(-3 * sigma, 3 * sigma + 1e-9, FINE_MM)
        p = np.exp(-0.5 * (z / sigma) ** 2)
    elif kind in ("rect", "thin"):
        width = THIN_MM if kind == "thin" else w
        z = np.arange(-width / 2 + FINE_MM / 2, width / 2, FINE_MM)
        p = np.ones_like(z)
    elif kind == "sinc":
        zero = w / SINC_FWHM
        z = np.arange(-3 * zero, 3 * zero + 1e-9, FINE_MM)
        p = np.sinc(z / zero)
    else:
        raise ValueError(f"unknown profile {kind!r}")
    return z, p / p.sum()


def acquire(truth: np.ndarray, affine: np.ndarray, axis: int, profile: str, thickness: float,
            spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Thick slices of ``truth`` along voxel ``axis``: data and the affine of their centres."""
    h = float(np.linalg.norm(affine[:3, axis]))
    n_hr = truth.shape[axis]
    step = spacing / h
    n_lr = max(1, int(np.floor(n_hr * h / spacing)))
    first = (n_hr - 1) / 2 - (n_lr - 1) / 2 * step
    centres = first + step * np.arange(n_lr)
    offsets, weights = profile_kernel(profile, thickness)
    spline = make_interp_spline(np.arange(n_hr, dtype=float), truth.astype(np.float64), k=3, axis=axis)
    pos = np.clip(centres[:, None] + offsets[None, :] / h, 0, n_hr - 1)
    samples = spline(pos.ravel())  # axis replaced by n_lr * n_offsets
    shape = list(truth.shape)
    shape[axis:axis + 1] = [n_lr, len(offsets)]
    lr = np.tensordot(samples.reshape(shape), weights, axes=([axis + 1], [0]))
    vox = np.eye(4)
    vox[axis, axis] = step
    vox[axis, 3] = first
    return lr.astype(np.float32), np.asarray(affine, float) @ vox


def rician(data: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the data plus complex Gaussian noise of standard deviation ``sigma``."""
    if sigma <= 0:
        return data
    re = data + rng.normal(0, sigma, data.shape)
    im = rng.normal(0, sigma, data.shape)
    return np.hypot(re, im).astype(np.float32)


def misplacement(shift_mm: float, angle_deg: float, centre: np.ndarray) -> np.ndarray:
    """A rigid world transform: ``angle_deg`` about an oblique axis through ``centre``,
    then ``shift_mm`` along an oblique direction."""
    rot = Rotation.from_rotvec(np.radians(angle_deg) * np.array([1.0, 1.0, 1.0]) / np.sqrt(3))
    m = np.eye(4)
    m[:3, :3] = rot.as_matrix()
    m[:3, 3] = centre - m[:3, :3] @ centre + shift_mm * np.array([1.0, -1.0, 1.0]) / np.sqrt(3)
    return m


@dataclass
class StackSpec:
    """One acquired stack: its contrast, slice axis (None: 3D isotropic) and profile."""

    contrast: str
    axis: int | None
    profile: str = "gaussian"
    thickness: float = 4.0
    spacing: float = 4.0
    header: str = "right"  # right, missing, double, half (what the sidecar says)
    misplace: tuple[float, float] = (0.0, 0.0)  # mm, degrees left after registration


@dataclass
class Acquisition:
    """A benchmark row: a name and the stacks acquired."""

    name: str
    stacks: list[StackSpec]
    noise_percent: float = 0.0
    notes: dict = field(default_factory=dict)


HEADER_FACTOR = {"right": 1.0, "double": 2.0, "half": 0.5}


def header_thickness(spec: StackSpec) -> float | None:
    """What the sidecar says: the acquired slab's width (1 mm for thin slices), scaled."""
    if spec.header == "missing":
        return None
    truth = THIN_MM if spec.profile == "thin" else spec.thickness
    if spec.header == "nominal":  # the sidecar gives the nominal slice distance
        return spec.spacing
    return truth * HEADER_FACTOR[spec.header]


def make_stacks(row: Acquisition, truth: dict[str, np.ndarray], affine: np.ndarray,
                mask: np.ndarray, seed: int) -> tuple[list[Stack], dict[str, np.ndarray]]:
    """The row's stacks and, per misplaced stack name, the transform it was misplaced by."""
    rng = np.random.default_rng([seed, 7])
    stacks, moved = [], {}
    for i, spec in enumerate(row.stacks):
        vol = truth[spec.contrast]
        sigma = row.noise_percent / 100 * float(np.percentile(vol[mask], 99.5))
        name = f"sim_run-{i + 1}_{spec.contrast}.nii.gz"
        if spec.axis is None:
            data, aff, thick = vol, np.asarray(affine, float), None
        else:
            data, aff = acquire(vol, affine, spec.axis, spec.profile, spec.thickness, spec.spacing)
            thick = header_thickness(spec)
        data = rician(data, sigma, rng)
        if any(spec.misplace):
            centre = aff[:3, :3] @ ((np.asarray(data.shape) - 1) / 2) + aff[:3, 3]
            m = misplacement(*spec.misplace, centre)
            aff = m @ aff
            moved[name] = m
        stacks.append(Stack(np.asarray(data, np.float32), aff, spec.contrast, name, thick))
    return stacks, moved


AX, COR, SAG = 2, 1, 0  # voxel axes of the (RAS) template


def rows() -> list[Acquisition]:
    """Every acquisition of the benchmark: one change at a time, then together."""
    def pair(profile="gaussian", header="right", spacing=4.0, misplace=(0.0, 0.0)):
        return [StackSpec("T1w", AX, profile, 4.0, spacing, header),
                StackSpec("T2w", COR, profile, 4.0, spacing, header, misplace)]
    return [
        Acquisition("gaussian FWHM 4", pair()),
        Acquisition("rect 4", pair("rect")),
        Acquisition("thin 1 every 4, header 1", pair("thin")),
        Acquisition("thin 1 every 4, header 4", pair("thin", "nominal")),
        Acquisition("sinc side lobes 4", pair("sinc")),
        Acquisition("rect 4, header missing", pair("rect", "missing")),
        Acquisition("rect 4, header x2", pair("rect", "double")),
        Acquisition("rect 4, header x0.5", pair("rect", "half")),
        Acquisition("rect 4 + 1% noise", pair("rect"), 1.0),
        Acquisition("rect 4 + 3% noise", pair("rect"), 3.0),
        Acquisition("rect 4, 2 mm + 2 deg off", pair("rect", misplace=(2.0, 2.0))),
        Acquisition("3 contrasts rect 4 + 2% noise",
                    pair("rect") + [StackSpec("FLAIR", SAG, "rect")], 2.0),
        Acquisition("3D T1w + axial T2w, FLAIR, rect 4 + 2% noise",
                    [StackSpec("T1w", None), StackSpec("T2w", AX, "rect"),
                     StackSpec("FLAIR", AX, "rect")], 2.0),
        Acquisition("all: rect, header missing, 3% noise, 2 mm + 2 deg",
                    pair("rect", "missing", misplace=(2.0, 2.0)), 3.0),
        Acquisition("rect 6 every 4 (overlapping slabs), header 6",
                    [StackSpec("T1w", AX, "rect", 6.0, 4.0), StackSpec("T2w", COR, "rect", 6.0, 4.0)]),
        Acquisition("rect 4 every 5 (1 mm gaps), header 4", pair("rect", spacing=5.0)),
    ]
