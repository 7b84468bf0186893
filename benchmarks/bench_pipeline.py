"""Participant-level performance on a realistic two-contrast subject.

Two 4 mm stacks in complementary orientations (T1w axial, T2w coronal) simulated from the
whole ICBM 2009a 1 mm template (about 197x233x47 and 197x58x189 voxels; output 197x233x189
at 1 mm), run through the same library steps as the participant workflow: N4, rigid
registration, INR training, inference, data consistency, writing. Prints a table and writes
JSON with wall time per step, training throughput, peak resident memory, the quality reached
and the time to reach it; beside each figure, the previous release's
(``benchmarks/results/pipeline_previous.json``), so that regressions show.

Time to final quality: after every epoch the network is scored on a fixed sample of the
head's voxels (``--eval-points``; the scoring time is left out of the training clock), and
the figure is the training time after which every contrast's PSNR is within 0.1 dB of its
value at the end of training.

Usage::

    python benchmarks/bench_pipeline.py [--model fast] [--epochs N] [--json out.json]
    python benchmarks/bench_pipeline.py --truth-mm 2 --epochs 1   # a quick check that it runs
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

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import CoordinateFrame, Grid, voxel_centres_at
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import cubic_baseline, psnr, ssim
from bids_mcsr.image.preprocess import n4_correct, register_rigid
from bids_mcsr.inr.config import SRConfig
from bids_mcsr.inr.inference import predict_points
from bids_mcsr.inr.memory import Estimate, plan_memory
from bids_mcsr.inr.presets import model_spec
from bids_mcsr.inr.sampling import profile_points_per_sample
from bids_mcsr.inr.superres import super_resolve


def match_intensity(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares ``a * pred + b`` against the truth inside ``mask``: N4 changes the
    intensity scale, so quality after N4 is scored up to a global linear map."""
    a, b = np.polyfit(pred[mask].astype(np.float64), truth[mask].astype(np.float64), 1)
    return (a * pred + b).astype(np.float32)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


PREVIOUS = Path(__file__).parent / "results" / "pipeline_previous.json"
FINAL_QUALITY_DB = 0.1  # "reached the final quality": within this of the PSNR at the end


class QualityCurve:
    """PSNR of the network against training time, scored after every epoch through
    ``super_resolve``'s ``progress`` and ``on_epoch_end`` callbacks.

    Parameters
    ----------
    stacks : list of Stack
        The stacks the network is trained on (they define its coordinate frame), in
        ``super_resolve``'s contrast order.
    grid : Grid
        The grid of ``truths`` and ``mask``.
    truths : dict
        Truth volume per contrast.
    mask : numpy.ndarray
        Where to score; ``n_points`` of its voxels (fixed, seeded) are used.
    n_points : int
        Voxels scored per epoch.
    """

    def __init__(self, stacks: list[Stack], grid: Grid, truths: dict[str, np.ndarray],
                 mask: np.ndarray, n_points: int):
        flat = np.flatnonzero(mask.ravel())
        chosen = np.sort(np.random.default_rng(0).choice(flat, min(n_points, flat.size), replace=False))
        world = voxel_centres_at(grid.shape, grid.affine, chosen)
        self.coords = CoordinateFrame.from_stacks(stacks).normalise(world).astype(np.float32)
        self.contrasts = list(dict.fromkeys(s.contrast for s in stacks))
        self.truth = {c: truths[c].ravel()[chosen].astype(np.float64) for c in self.contrasts}
        self.peak = {c: float(np.ptp(truths[c][mask])) for c in self.contrasts}
        self.seconds: list[float] = []
        self.psnr: dict[str, list[float]] = {c: [] for c in self.contrasts}
        self.rates: list[float] = []
        self._scoring_s = 0.0
        self._trained_s = 0.0

    def progress(self, info: dict) -> None:
        """``super_resolve``'s ``progress``: training time so far, without the scoring."""
        self.rates.append(info["points_per_s"])
        self._trained_s = info["seconds"] - self._scoring_s

    def on_epoch_end(self, epoch: int, model: torch.nn.Module) -> None:
        """``super_resolve``'s ``on_epoch_end``: score the network on the sample (PSNR after a
        least-squares linear intensity match, as the final figures)."""
        t = time.perf_counter()
        pred = predict_points(model, self.coords, next(model.parameters()).device).astype(np.float64)
        for i, c in enumerate(self.contrasts):
            a, b = np.polyfit(pred[:, i], self.truth[c], 1)
            mse = float(np.mean((a * pred[:, i] + b - self.truth[c]) ** 2))
            self.psnr[c].append(float(10 * np.log10(self.peak[c] ** 2 / max(mse, 1e-20))))
        self.seconds.append(self._trained_s)
        self._scoring_s += time.perf_counter() - t

    def time_to_final(self, tolerance_db: float = FINAL_QUALITY_DB) -> tuple[float, int]:
        """Training seconds, and the epoch, at which every contrast's PSNR first came within
        ``tolerance_db`` of its value after the last epoch."""
        for k, seconds in enumerate(self.seconds):
            if all(self.psnr[c][k] >= self.psnr[c][-1] - tolerance_db for c in self.contrasts):
                return seconds, k + 1
        raise ValueError("no epoch was scored")

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "psnr": self.psnr, "points": int(self.coords.shape[0])}


def load_previous(path: Path | None) -> dict:
    """The previous release's figures (the ``--json`` layout), or {} without a file."""
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text())


def beside(value: float | None, fmt: str) -> str:
    """A previous figure formatted for its column, ``-`` where it was not measured."""
    return "-" if value is None else format(value, fmt)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fast", choices=["fast", "paper"])
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--profile", default=None, choices=["none", "gaussian", "boxcar"],
                   help="slice profile; default: the model's")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--truth-mm", type=int, default=1, choices=[1, 2],
                   help="voxel size of the template (1: the benchmark; 2: a quick check)")
    p.add_argument("--thickness", type=float, default=4.0, help="slice thickness of the stacks, mm")
    p.add_argument("--eval-points", type=int, default=200_000,
                   help="head voxels scored after every epoch for the time to final quality")
    p.add_argument("--previous", type=Path, default=PREVIOUS,
                   help="figures of the previous release, printed beside (the --json layout)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    previous = load_previous(a.previous)
    vols, affine = mni_truth(a.truth_mm, crop=False)
    t1 = Stack(*simulate_stack(vols["T1w"], affine, 2, a.thickness), "T1w", "acq-ax_T1w")
    t2 = Stack(*simulate_stack(vols["T2w"], affine, 1, a.thickness), "T2w", "acq-cor_T2w")
    grid = Grid(vols["T1w"].shape, affine)
    mask = vols["T1w"] > 0.05 * vols["T1w"].max()
    steps: dict[str, float] = {}

    t = time.perf_counter()
    t1c, t2c = n4_correct(t1, a.threads), n4_correct(t2, a.threads)
    steps["N4 (2 stacks)"] = time.perf_counter() - t
    t = time.perf_counter()
    _, t2r = register_rigid(t2c, t1c)
    steps["rigid registration"] = time.perf_counter() - t
    curve = QualityCurve([t1c, t2r], grid, vols, mask, a.eval_points)
    res = super_resolve([t1c, t2r], SRConfig(model=a.model, epochs=a.epochs, slice_profile=a.profile,
                                             device=a.device, threads=a.threads), grid=grid,
                        progress=curve.progress, on_epoch_end=curve.on_epoch_end)
    profile = res.settings["slice_profile"]
    to_final_s, to_final_epoch = curve.time_to_final()
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
    n_profile = profile_points_per_sample([t1, t2], profile, SRConfig.profile_samples)
    estimated_gb = plan_memory(Estimate(t1.data.size + t2.data.size, grid.n_voxels, 2),
                               model_spec(a.model, epochs=a.epochs), n_profile).peak_bytes / 2**30
    settings = {"model": a.model, "profile": profile, "epochs": res.settings["model"]["epochs"],
                "truth_mm": a.truth_mm, "thickness_mm": a.thickness, "threads": a.threads,
                "device": device.split()[0]}
    figures = {"epochs_run": res.epochs_run, "steps_s": steps, "total_s": total,
               "peak_rss_gb": peak_rss_gb(), "estimated_peak_gb": estimated_gb,
               "train_points_per_s": float(np.mean(curve.rates)),
               "inference_voxels_per_s": grid.n_voxels / res.timings["inference_s"],
               "time_to_final_quality_s": to_final_s, "quality": quality,
               "heldout_validation_s": res.timings["heldout_scoring_s"]}
    print(f"bids-mcsr pipeline benchmark: {a.model} model, profile {profile}, device {device}, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"stacks {t1.data.shape} + {t2.data.shape} -> grid {grid.shape} at {a.truth_mm} mm; "
          f"epochs run {res.epochs_run} (stopped at {res.stopped_epoch})")
    report(figures, previous, settings, to_final_epoch)
    print(f"held-out validation after the fit (within data consistency): "
          f"{figures['heldout_validation_s']:.1f} s, "
          f"{100 * figures['heldout_validation_s'] / total:.1f} % of the run")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "meta": {"torch": torch.__version__, "python": platform.python_version(),
                     "device": device},
            "settings": settings, **figures, "quality_curve": curve.to_dict(),
            "history": res.history}, indent=1))
    return 0


def report(now: dict, previous: dict, settings: dict, to_final_epoch: int) -> None:
    """Print this run's figures, each beside the previous release's (``-``: not measured)."""
    if previous:
        differ = {k: (v, previous.get("settings", {}).get(k)) for k, v in settings.items()
                  if previous.get("settings", {}).get(k) != v}
        print(f"'previous': {previous.get('meta', {}).get('release', '?')} "
              f"({previous.get('meta', {}).get('measured_at_commit', '?')})"
              + (f"; NOT COMPARABLE, other settings (now, previous): {differ}" if differ else ""))
    else:
        print("'previous': no file of the previous release's figures")
    old_steps = previous.get("steps_s", {})
    print(f"{'step':<22} {'wall s':>8} {'previous':>9}")
    for k, v in now["steps_s"].items():
        print(f"{k:<22} {v:8.1f} {beside(old_steps.get(k), '9.1f')}")
    print(f"{'total':<22} {now['total_s']:8.1f} {beside(previous.get('total_s'), '9.1f')}")
    print(f"peak resident memory   {now['peak_rss_gb']:.2f} GB (estimated up front: "
          f"{now['estimated_peak_gb']:.2f} GB); previous {beside(previous.get('peak_rss_gb'), '.2f')} "
          f"GB (estimated {beside(previous.get('estimated_peak_gb'), '.2f')} GB)")
    print(f"training throughput    {now['train_points_per_s']:.0f} points/s (network evaluations); "
          f"previous {beside(previous.get('train_points_per_s'), '.0f')}")
    print(f"inference throughput   {now['inference_voxels_per_s']:.0f} voxels/s; "
          f"previous {beside(previous.get('inference_voxels_per_s'), '.0f')}")
    print(f"time to final quality  {now['time_to_final_quality_s']:.1f} s of training (epoch "
          f"{to_final_epoch} of {now['epochs_run']}; network PSNR within {FINAL_QUALITY_DB} dB of "
          f"its last value); previous {beside(previous.get('time_to_final_quality_s'), '.1f')} s")
    print("SR and cubic-after-N4 scored after a least-squares linear intensity match to the truth "
          "(N4 rescales); 'cubic' interpolates the simulated stacks, 'cubic N4' the SR's own "
          "inputs; (previous) in brackets")
    print(f"{'contrast':<9} {'SR PSNR':>17} {'cubic':>7} {'cubic N4':>9} {'SR SSIM':>19} "
          f"{'cubic':>7} {'cubic N4':>9}")
    for c, q in now["quality"].items():
        old = previous.get("quality", {}).get(c, {})
        print(f"{c:<9} {q['psnr']:8.2f} ({beside(old.get('psnr'), '6.2f')}) {q['cubic_psnr']:7.2f} "
              f"{q['cubic_n4_psnr']:9.2f} {q['ssim']:8.4f} ({beside(old.get('ssim'), '8.4f')}) "
              f"{q['cubic_ssim']:7.4f} {q['cubic_n4_ssim']:9.4f}")


if __name__ == "__main__":
    sys.exit(main())
