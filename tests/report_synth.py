"""Small synthetic subjects for the report and group-level tests (no template, no training)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.inr.result import SRResult

SPACING = 2.0
SHAPE = (40, 44, 36)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def phantom(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two contrasts of one ellipsoidal 'head' with isotropic texture, and their affine."""
    rng = np.random.default_rng(seed)
    idx = np.indices(SHAPE, dtype=float)
    centre = (np.asarray(SHAPE) - 1) / 2
    r = np.sqrt(sum(((idx[a] - centre[a]) / (0.42 * SHAPE[a])) ** 2 for a in range(3)))
    head = ndimage.gaussian_filter((r < 1).astype(float), 1.0)
    texture = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.5)
    texture /= texture.std()
    t1 = 600 * head * (1 + 0.3 * texture)
    t2 = 500 * head * (1 - 0.3 * texture) + 200 * head * (r < 0.5)
    affine = np.diag([SPACING, SPACING, SPACING, 1.0])
    affine[:3, 3] = [-40.0, -44.0, -30.0]
    return {"T1w": t1.astype(np.float32), "T2w": t2.astype(np.float32)}, affine


def stacks_of(volumes: dict[str, np.ndarray], affine: np.ndarray,
              thickness: float = 6.0) -> list[Stack]:
    """A T1w stack with thick axial slices and a T2w stack with thick sagittal slices."""
    t1 = simulate_stack(volumes["T1w"], affine, 2, thickness)
    t2 = simulate_stack(volumes["T2w"], affine, 0, thickness)
    return [Stack(*t1, contrast="T1w", path="/raw/sub-01/anat/sub-01_T1w.nii.gz"),
            Stack(*t2, contrast="T2w", path="/raw/sub-01/anat/sub-01_T2w.nii.gz")]


def fake_fit(stacks: list[Stack], gain_db: float | dict = 1.5, shift_mm: float | dict = 0.4,
             rotation_deg: float = 0.3, noise_percent: float | dict = 1.2,
             fwhm_mm: float | dict | None = None, header_mm: float | None = 6.0,
             sr_psnr: float = 32.0, rounds: int = 2) -> dict:
    """The ``validation`` and ``acquisition`` entries of a fit of ``stacks`` (as the SR core
    writes them to ``result.json``), with chosen held-out gains, pose corrections, noise and
    fitted widths; a dict value sets one contrast (others get the healthy default)."""
    def pick(value, contrast, default):
        return value.get(contrast, default) if isinstance(value, dict) else value

    validation, acquisition = {}, []
    for stack in stacks:
        c = stack.contrast
        gain = pick(gain_db, c, 1.5)
        held = {"voxels": 900, "sr_psnr": sr_psnr, "cubic_psnr": sr_psnr - gain,
                "gain_db": gain}
        validation[c] = {**held, "consistency_rounds": rounds,
                         "consistency_curve_psnr": [sr_psnr - 0.5, sr_psnr - 0.1, sr_psnr][
                             :rounds + 1], "stacks": [dict(held)]}
        shift = pick(shift_mm, c, 0.4) if stack is not stacks[0] else 0.0
        correction = np.eye(4)
        correction[0, 3] = shift
        acquisition.append({
            "name": stack.name, "contrast": c, "header_thickness_mm": header_mm,
            "spacing_mm": stack.slice_spacing,
            "fitted_fwhm_mm": pick(fwhm_mm, c, None) or 0.95 * stack.thickness,
            "pose_shift_mm": shift,
            "pose_rotation_deg": rotation_deg if stack is not stacks[0] else 0.0,
            "pose_correction": correction.tolist(), "noise_sigma": 5.0,
            "noise_percent": pick(noise_percent, c, 1.2), "heldout_slices": [3, 7],
            "isotropic": False})
    return {"validation": validation, "acquisition": acquisition}


def fake_result(volumes: dict[str, np.ndarray], affine: np.ndarray,
                mi: list[float] | None = None, fit: dict | None = None) -> SRResult:
    """An SRResult whose 'SR volumes' are the given ones (e.g. the truth), on their grid,
    with the held-out validation and acquisition of ``fit`` (default: a healthy
    :func:`fake_fit` of :func:`stacks_of`)."""
    mi = mi if mi is not None else [0.5, 0.8, 0.9, 0.91, 0.911, 0.911, 0.911, 0.911, 0.911]
    epochs = list(range(1, len(mi) + 1))
    loss = {c: [0.1 / e for e in epochs] for c in volumes}
    heldout = {c: [0.02 / e + 0.002 * max(0, e - 7) for e in epochs] for c in volumes}
    fit = fit if fit is not None else fake_fit(stacks_of(volumes, affine))
    mask = (volumes["T1w"] > 0.3 * volumes["T1w"].max()).astype(np.uint8)
    return SRResult(contrasts=list(volumes), volumes=volumes, grid=Grid(SHAPE, affine),
                    mask=mask, history={"epoch": epochs, "loss": loss, "mi": mi,
                                        "seconds": [1.0 * e for e in epochs],
                                        "heldout_mse": heldout,
                                        "best_epoch": min(7, epochs[-1])},
                    stopped_epoch=epochs[-1], epochs_run=len(epochs), final_mi=mi[-1],
                    runtime_s=12.5, device="cpu (2 threads)",
                    settings={"model": {"name": "fast"}, "slice_profile": "gaussian",
                              "mi_stopping": {"enabled": True, "window": 4,
                                              "tolerance_nats": 2e-3, "min_epochs": 6}},
                    acquisition=fit["acquisition"], validation=fit["validation"])


def browser_dom(html: Path, tmp: Path) -> str:
    """The DOM of a page after a headless chromium loaded it (images included)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
         "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=True)
    return out.stdout
