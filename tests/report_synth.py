"""Small synthetic subjects for the report and group-level tests (no template, no training)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from scipy import ndimage

from bids_mcsr.geometry import Grid
from bids_mcsr.io import Stack
from bids_mcsr.simulate import simulate_stack
from bids_mcsr.superres import SRResult

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


def fake_result(volumes: dict[str, np.ndarray], affine: np.ndarray,
                mi: list[float] | None = None) -> SRResult:
    """An SRResult whose 'SR volumes' are the given ones (e.g. the truth), on their grid."""
    mi = mi if mi is not None else [0.5, 0.8, 0.9, 0.91, 0.911, 0.911, 0.911, 0.911, 0.911]
    epochs = list(range(1, len(mi) + 1))
    loss = {c: [0.1 / e for e in epochs] for c in volumes}
    mask = (volumes["T1w"] > 0.3 * volumes["T1w"].max()).astype(np.uint8)
    return SRResult(contrasts=list(volumes), volumes=volumes, grid=Grid(SHAPE, affine),
                    mask=mask, history={"epoch": epochs, "loss": loss, "mi": mi,
                                        "seconds": [1.0 * e for e in epochs]},
                    stopped_epoch=epochs[-1], epochs_run=len(epochs), final_mi=mi[-1],
                    runtime_s=12.5, device="cpu (2 threads)",
                    settings={"model": {"name": "fast"}, "slice_profile": "gaussian",
                              "mi_stopping": {"enabled": True, "window": 4,
                                              "tolerance_nats": 2e-3, "min_epochs": 6}})


def browser_dom(html: Path, tmp: Path) -> str:
    """The DOM of a page after a headless chromium loaded it (images included)."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
         "--virtual-time-budget=5000", "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=90, check=True)
    return out.stdout
