"""The rules that judge a fit without ground truth: thresholds, verdicts and flags.

This module is the one home of the QC rules; the subject report and the group level both
call them:

* the verdict: super-resolution against cubic B-spline interpolation of the same held-out
  slices (see :mod:`bids_mcsr.acquisition.holdout`), ``better`` when it gains more than
  :data:`GAIN_MARGIN_DB`, ``worse`` when it loses more, ``no better`` in between;
* the registration check, twice: the rigid pose correction the fit applied to a stack on top
  of registration, a problem above :data:`POSE_SHIFT_MAX_MM` or
  :data:`POSE_ROTATION_MAX_DEG`; and the alignment check of the report
  (:func:`bids_mcsr.image.alignment.alignment_check`), a problem when the reference matches
  a stack better (:func:`bids_mcsr.image.alignment.misaligned`) with the
  stack moved by :data:`ALIGNMENT_STEP_MM` along a world axis than where it is;
* the noise level of each stack, a problem above :data:`NOISE_PERCENT_MAX` percent of the
  stack's intensity range;
* the slice profile: the FWHM the fit used against the one the header's ``SliceThickness``
  implies (:func:`fwhm_ratio`), a problem when they differ by more than a factor
  :data:`FWHM_RATIO_MAX` (a header thicker than the spacing, a learned width far off).
"""

from __future__ import annotations

import math
import numbers

from bids_mcsr.acquisition.slice_profile import slab_fwhm_of_thickness

GAIN_MARGIN_DB = 0.2
POSE_SHIFT_MAX_MM = 3.0
POSE_ROTATION_MAX_DEG = 3.0
NOISE_PERCENT_MAX = 10.0
FWHM_RATIO_MAX = 1.5
ALIGNMENT_STEP_MM = 5.0


def known(value: object) -> bool:
    """A finite number (numpy scalars included), not None, NaN or a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _num(value: object, digits: int = 1) -> str:
    return f"{float(value):.{digits}f}" if known(value) else "n/a"

def verdict(gain_db: float | None) -> str | None:
    """``better``, ``no better`` or ``worse`` for a held-out gain (dB, SR minus cubic);
    None when nothing was held out."""
    if not known(gain_db):
        return None
    if gain_db > GAIN_MARGIN_DB:
        return "better"
    return "worse" if gain_db < -GAIN_MARGIN_DB else "no better"


def verdict_text(quality: dict) -> str:
    """The verdict of one contrast as a sentence, from its
    :func:`bids_mcsr.qc.records.contrast_quality` numbers."""
    gain = quality.get("heldout_gain_db")
    judged = verdict(gain)
    if judged is None:
        return ("no slice could be held out (isotropic stacks, or stacks of fewer than 10 "
                "slices): no estimate of what super-resolution added")
    scores = (f"SR {_num(quality.get('heldout_sr_psnr'), 2)} dB vs cubic "
              f"{_num(quality.get('heldout_cubic_psnr'), 2)} dB on "
              f"{quality.get('heldout_voxels')} voxels")
    if judged == "better":
        return f"SR better than interpolation by {gain:.2f} dB on held-out slices ({scores})"
    if judged == "worse":
        return f"SR worse than interpolation by {-gain:.2f} dB on held-out slices ({scores})"
    return (f"SR no better than interpolation on held-out slices: {gain:+.2f} dB, within "
            f"±{GAIN_MARGIN_DB:g} dB ({scores})")


def pose_problem(shift_mm: float | None, rotation_deg: float | None) -> bool:
    """Whether a pose correction after registration is too large to trust the registration."""
    return ((known(shift_mm) and shift_mm > POSE_SHIFT_MAX_MM)
            or (known(rotation_deg) and rotation_deg > POSE_ROTATION_MAX_DEG))


def fwhm_ratio(fitted_mm: float | None, header_mm: float | None, profile: str | None) -> float | None:
    """The slab FWHM the fit used over the one the header's SliceThickness implies under the
    fit's slice ``profile``
    (:func:`~bids_mcsr.acquisition.slice_profile.slab_fwhm_of_thickness` x thickness): 1 when
    the header was taken as it is; None if either is unknown."""
    if not (known(fitted_mm) and known(header_mm)) or header_mm <= 0:
        return None
    return float(fitted_mm / (slab_fwhm_of_thickness(profile) * header_mm))


def profile_problem(ratio: float | None) -> bool:
    """Whether the fitted FWHM and the header disagree by more than ``FWHM_RATIO_MAX``."""
    return known(ratio) and ratio > 0 and abs(math.log(ratio)) > math.log(FWHM_RATIO_MAX)


def noise_problem(noise_percent: float | None) -> bool:
    """Whether a stack's noise exceeds ``NOISE_PERCENT_MAX`` % of its intensity range."""
    return known(noise_percent) and noise_percent > NOISE_PERCENT_MAX


def quality_flags(quality: dict) -> list[str]:
    """Why one contrast of one fit deserves a look, from its
    :func:`bids_mcsr.qc.records.contrast_quality` numbers (or a group-table row with the
    same keys); empty for a healthy fit."""
    reasons = []
    gain, judged = quality.get("heldout_gain_db"), verdict(quality.get("heldout_gain_db"))
    if judged in ("no better", "worse"):
        reasons.append(f"SR {judged} than interpolation on held-out slices: {gain:+.2f} dB "
                       f"(SR {_num(quality.get('heldout_sr_psnr'), 2)} vs cubic "
                       f"{_num(quality.get('heldout_cubic_psnr'), 2)} dB)")
    if quality.get("misaligned_stacks"):
        reasons.append(f"registration looks wrong: {quality['misaligned_stacks']} stack(s) "
                       f"match the reference better moved by {ALIGNMENT_STEP_MM:g} mm than "
                       "where they are")
    shift, rotation = quality.get("pose_shift_max_mm"), quality.get("pose_rotation_max_deg")
    if pose_problem(shift, rotation):
        reasons.append(f"registration looks wrong: the fit moved a stack by {_num(shift)} mm "
                       f"/ {_num(rotation)}° on top of registration (limit "
                       f"{POSE_SHIFT_MAX_MM:g} mm / {POSE_ROTATION_MAX_DEG:g}°)")
    noise = quality.get("noise_percent_max")
    if noise_problem(noise):
        reasons.append(f"noisy stack: noise {_num(noise)} % of its intensity range "
                       f"(limit {NOISE_PERCENT_MAX:g} %)")
    if profile_problem(quality.get("fwhm_ratio")):
        reasons.append(f"slice profile: fitted FWHM {_num(quality.get('fwhm_fitted_mm'), 2)} "
                       f"mm vs header SliceThickness {_num(quality.get('fwhm_header_mm'), 2)} "
                       "mm (check the header)")
    return reasons
