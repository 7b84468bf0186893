"""Quality metrics that need no ground truth, for the subject report and the group level.

* Held-out slices (computed by the fit, judged by :mod:`bids_mcsr.qc.flags`): a few slices of
  every thick stack were withheld; the SR output re-simulates them and is scored against
  cubic interpolation of the same slices from the stack's other slices. With the fitted
  pose correction (registration check), slice-profile width and noise level of each stack,
  these lead the report.
* Data consistency: each acquired stack re-simulated from the SR volume (same geometry,
  same slice profile) against the acquired voxels, inside the stack's own foreground.
  Back-projection makes the output reproduce its stacks, so this is near-perfect by
  construction: a check of the machinery, not a quality measure.
* Convergence: the MI between SR contrasts at the end of training, how much it still
  moved over the last epochs and the epoch its plateau rule stops at.
* Sharpness: high-frequency energy (mean absolute second difference) along the
  reference's slice axis against the in-plane axes; an isotropic result gives a ratio near
  1, a result that kept the thick slices' blur gives clearly less.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_mcsr.acquisition.slice_profile import resimulate_stack, slice_normal, spline_coefficients
from bids_mcsr.image.alignment import alignment_check, misaligned
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import foreground_mask
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import mutual_information, psnr, ssim
from bids_mcsr.inr.result import RESULT_KEYS, SRResult
from bids_mcsr.inr.stopping import mi_plateaued
from bids_mcsr.qc.flags import ALIGNMENT_STEP_MM, quality_flags
from bids_mcsr.qc.records import DEFAULT_MI_RULE, contrast_quality, mi_rule_epoch, stack_rows

CONVERGENCE_EPOCHS = 5
SSIM_MIN_SLICES = 11  # the Gaussian window (sigma 1.5) of metrics.ssim spans 11 voxels


def data_consistency(volume: np.ndarray, grid: Grid, stack: Stack,
                     profile: str, prefiltered: bool = False, workers: int = 1) -> dict:
    """PSNR and SSIM of an acquired stack against its re-simulation from an SR volume.

    Parameters
    ----------
    volume : ndarray
        SR volume of the stack's contrast, on ``grid``, in the stack's intensity scale.
    grid : Grid
        The SR output grid.
    stack : Stack
        An acquired (registered) stack.
    profile : str
        Slice profile used for the fit (``gaussian``, ``boxcar``, ``none``).
    prefiltered, workers
        As in :func:`~bids_mcsr.acquisition.slice_profile.resimulate_stack`: ``volume`` holds
        spline coefficients already; threads (the result does not depend on them).

    Returns
    -------
    dict
        ``psnr_db``, ``ssim`` (inside the stack's foreground, on the acquired intensity
        range; None for a stack of fewer than ``SSIM_MIN_SLICES`` slices, thinner than the
        SSIM window) and ``mask_voxels``.
    """
    predicted = resimulate_stack(volume, grid, stack, profile, prefiltered=prefiltered,
                                 workers=workers)
    mask = foreground_mask(stack.data)
    thick_enough = min(stack.data.shape) >= SSIM_MIN_SLICES
    return {"psnr_db": psnr(predicted, stack.data, mask),
            "ssim": ssim(predicted, stack.data, mask) if thick_enough else None,
            "mask_voxels": int(mask.sum())}


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def grid_axis_along(grid: Grid, direction: np.ndarray) -> int:
    """The voxel axis of ``grid`` most parallel to a world direction."""
    cols = grid.affine[:3, :3] / grid.spacing
    return int(np.argmax(np.abs(cols.T @ (direction / np.linalg.norm(direction)))))


def sharpness(volume: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
              through_axis: int) -> dict:
    """High-frequency energy per axis inside ``mask`` and the through/in-plane ratio.

    The energy along an axis is the mean absolute second difference ``[1, -2, 1]`` per
    mm squared; second differences respond to fine detail rather than to the smooth
    intensity changes that dominate first derivatives.

    Parameters
    ----------
    volume : ndarray
        A 3D image.
    mask : ndarray
        Where to average (eroded by one voxel so the mask edge does not count).
    spacing : sequence of float
        Voxel sizes in mm.
    through_axis : int
        Voxel axis of the reference's slice direction.

    Returns
    -------
    dict
        ``hf_per_axis`` (3 floats, intensity/mm^2), ``through_plane_axis`` and
        ``sharpness_ratio`` = through-plane energy / mean in-plane energy.
    """
    data = np.asarray(volume, np.float64)
    inner = ndimage.binary_erosion(np.asarray(mask, bool))
    if not inner.any():
        inner = np.asarray(mask, bool)
    energy = [float(np.abs(ndimage.correlate1d(data, [1.0, -2.0, 1.0], axis=a, mode="nearest"))
                    [inner].mean() / spacing[a] ** 2) for a in range(3)]
    in_plane = np.mean([e for a, e in enumerate(energy) if a != through_axis])
    ratio = float(energy[through_axis] / in_plane) if in_plane > 0 else float("nan")
    return {"hf_per_axis": energy, "through_plane_axis": int(through_axis),
            "sharpness_ratio": ratio}


def mi_convergence(history: dict, settings: dict | None = None,
                   last: int = CONVERGENCE_EPOCHS) -> dict:
    """Whether the training MI between contrasts had settled when training ended.

    Parameters
    ----------
    history : dict
        ``SRResult.history``.
    settings : dict, optional
        ``SRResult.settings``; its ``mi_stopping`` window and tolerance are used.
    last : int
        Epochs over which the change is reported.

    Returns
    -------
    dict
        ``final_mi_training`` (nats), ``mi_change_last_epochs`` (last minus the value
        ``last`` epochs earlier), ``mi_change_epochs``, ``mi_converged`` (True/False, or
        None with a single contrast).
    """
    values = [m for m in history.get("mi", []) if m is not None]
    if not values:
        return {"final_mi_training": None, "mi_change_last_epochs": None,
                "mi_change_epochs": 0, "mi_converged": None}
    rule = {**DEFAULT_MI_RULE, **((settings or {}).get("mi_stopping") or {})}
    window, tolerance = int(rule["window"]), float(rule["tolerance_nats"])
    span = min(last, len(values) - 1)
    return {"final_mi_training": float(values[-1]),
            "mi_change_last_epochs": float(values[-1] - values[-1 - span]),
            "mi_change_epochs": span,
            "mi_converged": mi_plateaued(values, window, tolerance)}


def sr_mutual_information(volumes: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, float]:
    """MI (nats) between every pair of SR contrasts inside ``mask``, keyed ``"A-B"``."""
    inside = np.asarray(mask, bool)
    return {f"{a}-{b}": mutual_information(volumes[a][inside], volumes[b][inside])
            for a, b in combinations(volumes, 2)}


def placed(stack: Stack, acquisition: dict | None) -> Stack:
    """``stack`` moved by the fit's pose correction (when the fit recorded one)."""
    correction = (acquisition or {}).get("pose_correction")
    if correction is None:
        return stack
    return stack.with_affine(np.asarray(correction, float) @ stack.affine)


def input_summary(stack: Stack) -> dict:
    """File, shape, voxel size, orientation and slice thickness of one stack."""
    return {"file": stack.name, "contrast": stack.contrast,
            "shape": [int(n) for n in stack.data.shape],
            "voxel_size_mm": [round(float(v), 4) for v in stack.voxel_sizes],
            "orientation": "".join(nib.aff2axcodes(stack.affine)),
            "slice_thickness_mm": round(stack.thickness, 4),
            "through_plane_axis": stack.through_plane_axis}


def subject_metrics(stacks: Sequence[Stack], reference_index: int, result: SRResult,
                    workers: int = 1) -> dict:
    """Every no-ground-truth metric of one fit.

    Parameters
    ----------
    stacks : sequence of Stack
        The registered stacks the fit used.
    reference_index : int
        Index of the reference stack in ``stacks``.
    result : SRResult
        The fit.
    workers : int
        Threads of the stacks' re-simulation (the result does not depend on them).

    Returns
    -------
    dict
        ``inputs`` (one summary per stack, with its data consistency), ``stacks`` (the
        acquisition and held-out rows of :func:`bids_mcsr.qc.records.stack_rows`), ``per_contrast``
        (the :func:`bids_mcsr.qc.records.contrast_quality` numbers and their ``flags``, mean data
        consistency over the contrast's stacks, SR sharpness), ``mi_between_sr``, the
        convergence entries of :func:`mi_convergence`, ``mi_rule_epoch`` and ``best_epoch``.
    """
    profile = result.settings["slice_profile"]
    inputs = [input_summary(stack) for stack in stacks]
    for contrast in dict.fromkeys(s.contrast for s in stacks):  # one contrast's spline at a time
        coeffs = spline_coefficients(result.volumes[contrast])
        for stack, summary in zip(stacks, inputs):
            if stack.contrast == contrast:
                summary["data_consistency"] = data_consistency(
                    coeffs, result.grid, stack, profile, prefiltered=True, workers=workers)
    axis = grid_axis_along(result.grid, slice_normal(stacks[reference_index]))
    fit = result_dict(result)
    rows = stack_rows(fit, [s.name for s in stacks])
    fitted = (result.acquisition if len(result.acquisition) == len(stacks)
              else [None] * len(stacks))
    reference = placed(stacks[reference_index], fitted[reference_index])
    for k, (row, stack) in enumerate(zip(rows, stacks)):
        row["alignment"] = (None if k == reference_index else
                            alignment_check(placed(stack, fitted[k]), reference, ALIGNMENT_STEP_MM))
    per_contrast = {}
    for contrast in result.contrasts:
        dcs = [i["data_consistency"] for i in inputs if i["contrast"] == contrast]
        quality = contrast_quality(fit, contrast, rows)
        quality["misaligned_stacks"] = sum(misaligned(r.get("alignment")) for r in rows
                                           if r["contrast"] == contrast)
        per_contrast[contrast] = {
            **quality, "flags": quality_flags(quality),
            "dc_psnr_db": _mean([d["psnr_db"] for d in dcs]),
            "dc_ssim": _mean([d["ssim"] for d in dcs]),
            **sharpness(result.volumes[contrast], result.mask, result.grid.spacing, axis)}
    return {"inputs": inputs, "stacks": rows, "per_contrast": per_contrast,
            "mi_between_sr": sr_mutual_information(result.volumes, result.mask),
            **mi_convergence(result.history, result.settings),
            "mi_rule_epoch": mi_rule_epoch(result.history, result.settings),
            "best_epoch": result.history.get("best_epoch")}


def result_dict(result: SRResult) -> dict:
    """The ``result.json`` content of an SRResult (what the QC record is built from)."""
    return {key: getattr(result, key) for key in RESULT_KEYS}
