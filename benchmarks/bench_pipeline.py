"""Participant-level performance on a realistic two-contrast subject.

Two 4 mm stacks in complementary orientations (T1w axial, T2w coronal) simulated from the
whole ICBM 2009a 1 mm template (about 197x233x47 and 197x58x189 voxels; output 197x233x189
at 1 mm), run through the same library steps as the participant workflow: N4, rigid
registration, INR training, inference, data consistency, writing. Prints a table and writes
JSON with wall time per step, training throughput, peak resident memory and the quality
reached.

Usage::

    python benchmarks/bench_pipeline.py [--model fast] [--epochs N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import cubic_baseline, psnr, ssim
from bids_mcsr.inr.presets import model_spec
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.preprocess import n4_correct, register_rigid
from bids_mcsr.inr.memory import Estimate, plan_memory
from bids_mcsr.inr.sampling import profile_points_per_sample
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.superres import super_resolve


def match_intensity(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares ``a * pred + b`` against the truth inside ``mask``: N4 changes the
    intensity scale, so quality after N4 is scored up to a global linear map."""
    a, b = np.polyfit(pred[mask].astype(np.float64), truth[mask].astype(np.float64), 1)
    return (a * pred + b).astype(np.float32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fast", choices=["fast", "paper"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--profile", default="gaussian", choices=["none", "gaussian", "boxcar"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    vols, affine = mni_truth(1, crop=False)
    t1 = Stack(*simulate_stack(vols["T1w"], affine, 2, 4.0), "T1w", "acq-ax_T1w")
    t2 = Stack(*simulate_stack(vols["T2w"], affine, 1, 4.0), "T2w", "acq-cor_T2w")
    grid = Grid(vols["T1w"].shape, affine)
    mask = vols["T1w"] > 0.05 * vols["T1w"].max()
    steps: dict[str, float] = {}

    t = time.perf_counter()
    t1c, t2c = n4_correct(t1, a.threads), n4_correct(t2, a.threads)
    steps["N4 (2 stacks)"] = time.perf_counter() - t
    t = time.perf_counter()
    _, t2r = register_rigid(t2c, t1c, a.threads)
    steps["rigid registration"] = time.perf_counter() - t
    rates: list[float] = []
    res = super_resolve([t1c, t2r], SRConfig(model=a.model, epochs=a.epochs, slice_profile=a.profile,
                                             device=a.device, threads=a.threads), grid=grid,
                        progress=lambda info: rates.append(info["points_per_s"]))
    steps["INR setup"] = res.timings["setup_s"]
    steps["INR training"] = res.timings["training_s"]
    steps["inference"] = res.timings["inference_s"]
    steps["data consistency"] = res.timings["consistency_s"]
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for c in res.contrasts:
            nib.save(res.to_nifti(c), str(Path(tmp) / f"{c}.nii.gz"))
    steps["writing"] = time.perf_counter() - t
    total = sum(steps.values())

    quality = {}
    for raw, corrected in ((t1, t1c), (t2, t2r)):
        c, truth = raw.contrast, vols[raw.contrast]
        cub = cubic_baseline([raw], grid)  # of the simulated stack, as in bench_quality
        cub_n4 = match_intensity(cubic_baseline([corrected], grid), truth, mask)  # same inputs as SR
        sr = match_intensity(res.volumes[c], truth, mask)
        quality[c] = {"psnr": psnr(sr, truth, mask), "ssim": ssim(sr, truth, mask),
                      "cubic_psnr": psnr(cub, truth, mask), "cubic_ssim": ssim(cub, truth, mask),
                      "cubic_n4_psnr": psnr(cub_n4, truth, mask), "cubic_n4_ssim": ssim(cub_n4, truth, mask)}
    device = res.device
    n_profile = profile_points_per_sample([t1, t2], a.profile, SRConfig.profile_samples)
    estimated_gb = plan_memory(Estimate(t1.data.size + t2.data.size, grid.n_voxels, 2),
                               model_spec(a.model, epochs=a.epochs), n_profile).peak_bytes / 2**30
    print(f"bids-mcsr pipeline benchmark: {a.model} model, profile {a.profile}, device {device}, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"stacks {t1.data.shape} + {t2.data.shape} -> grid {grid.shape} at 1 mm; "
          f"epochs run {res.epochs_run} (stopped at {res.stopped_epoch})")
    print(f"{'step':<22} {'wall s':>8}")
    for k, v in steps.items():
        print(f"{k:<22} {v:8.1f}")
    print(f"{'total':<22} {total:8.1f}")
    print(f"peak resident memory   {peak_rss_gb():.2f} GB (estimated up front: {estimated_gb:.2f} GB)")
    print(f"training throughput    {np.mean(rates):.0f} points/s (network evaluations)")
    print(f"inference throughput   {grid.n_voxels / res.timings['inference_s']:.0f} voxels/s")
    print("SR and cubic-after-N4 scored after a least-squares linear intensity match to the truth "
          "(N4 rescales); 'cubic' interpolates the simulated stacks, 'cubic N4' the SR's own inputs")
    print(f"{'contrast':<9} {'SR PSNR':>8} {'cubic':>7} {'cubic N4':>9} {'SR SSIM':>8} {'cubic':>7} {'cubic N4':>9}")
    for c, q in quality.items():
        print(f"{c:<9} {q['psnr']:8.2f} {q['cubic_psnr']:7.2f} {q['cubic_n4_psnr']:9.2f} "
              f"{q['ssim']:8.4f} {q['cubic_ssim']:7.4f} {q['cubic_n4_ssim']:9.4f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "device": device, "threads": a.threads, "torch": torch.__version__,
            "python": platform.python_version(), "model": a.model, "profile": a.profile,
            "epochs_run": res.epochs_run, "steps_s": steps, "total_s": total,
            "peak_rss_gb": peak_rss_gb(), "estimated_peak_gb": estimated_gb, "train_points_per_s": float(np.mean(rates)), "quality": quality, "history": res.history}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
