"""What a fit reports of itself: the held-out score per contrast and stack, and each stack's
acquisition as the fit saw it (header, modelled slab, pose, noise, held-out slices)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bids_mcsr.acquisition.holdout import pooled_psnr
from bids_mcsr.image.intensity import IntensityScaler
from bids_mcsr.image.io import Stack


def heldout_summary(errors: Sequence[dict], data_range: float, rounds: int | None = None,
                    curve: Sequence[float] = ()) -> dict:
    """Held-out PSNR of the output and of cubic interpolation, and their difference."""
    sr, cubic = pooled_psnr(errors, "sr", data_range), pooled_psnr(errors, "cubic", data_range)
    out = {"voxels": int(sum(e["n"] for e in errors)), "sr_psnr": sr, "cubic_psnr": cubic,
           "gain_db": None if sr is None or cubic is None else sr - cubic}
    if rounds is not None:
        out["consistency_rounds"] = int(rounds)
        out["consistency_curve_psnr"] = [float(10 * np.log10(data_range ** 2 / max(m, 1e-20)))
                                         for m in curve]
    return out


def describe_gain(summary: dict) -> str:
    if summary["gain_db"] is None:
        return "none (no slice could be held out)"
    return (f"SR {summary['sr_psnr']:.2f} dB vs cubic {summary['cubic_psnr']:.2f} dB "
            f"({summary['gain_db']:+.2f} dB)")


def describe_acquisition(stack: Stack, fitted, heldout: np.ndarray,
                         scaler: IntensityScaler, sigma: float) -> dict:
    """What the run knows of one stack's acquisition: header, fitted profile and pose,
    noise (``sigma``) and held-out slices."""
    return {"name": stack.name, "contrast": stack.contrast,
            "header_thickness_mm": stack.slice_thickness,
            "spacing_mm": stack.slice_spacing,
            "fitted_fwhm_mm": fitted.fwhm_mm, "pose_shift_mm": fitted.shift_mm,
            "pose_rotation_deg": fitted.rotation_deg, "pose_correction": fitted.correction,
            "noise_sigma": sigma, "noise_percent": 100 * sigma / (scaler.high - scaler.low),
            "heldout_slices": [int(k) for k in heldout], "isotropic": stack.is_isotropic}
