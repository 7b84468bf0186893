"""Acquisition-realism benchmark: does super-resolution hold up where the app's assumptions don't?

One row per acquisition (``acquisitions.rows()``: slice profile, gap, header, noise,
misregistration and stack layouts, one change at a time and together), one column group per
method, every number the mean over ``--seeds`` with the spread (max - min) beside it:

* ``cubic``: cubic B-spline interpolation of each contrast's stacks;
* ``cubic+bp``: classic iterative back-projection (3 rounds, Gaussian FWHM = header) from cubic;
* ``default``: the app's default fit;
* ``net``: the same fit before back-projection; ``bp3``: the same fit with 3 fixed rounds
  (no held-out rule);
* ``previous``: the previous release's default (header profile, registration as given,
  no held-out slices, 3 fixed rounds);
* ``fixed-profile``: a refit without slice-profile learning;
* ``fixed-pose``: a refit without pose refinement (rows with a misplaced stack);
* ``pose-fit`` / ``profile-fit``: a refit with pose refinement (rows with a misplaced stack) /
  with slice-profile learning (``--pose-fit`` / ``--profile-fit``); their fitted poses and
  widths are kept in the JSON (``refits``);
* ``epochs=N``: a refit with N epochs (its fit time in ``seconds``); ``finest=X``: a refit
  whose finest hash-grid cell is X mm;
* ``uncapped``: a refit whose slab may be wider than the slice spacing (the header's
  SliceThickness as it is, as before the cap of ``slice_profile.slab_fwhm``);
* ``slab=X``: a refit with the modelled FWHM X times the header's thickness.

Scored inside the truth's head mask and inside its brain (``cases.BRAINS``: the issue scores
there; the template is skull-stripped, the real subject's scalp and skull are not) on the truth's
range (``bids_mcsr.image.metrics``), for every contrast acquired thick-slice. The truth is a
central crop of the 1 mm ICBM 2009a template (``--crop``, 64 x 80 x 64 mm by default) so that
the whole table fits in well under an hour on 2 CPU cores (run two halves of the rows side by
side with ``--threads 1``). ``--case real`` takes a real subject's anatomy instead
(``cases.real_anatomy_truth``: the rorden T1w at 0.88 mm and contrasts from its own tissue
classes; ``--crop 72,90,72`` is the same 64 x 80 x 64 mm).

Usage::

    python benchmarks/bench_robustness.py --seeds 0,1 --json benchmarks/results/robustness.json
    python benchmarks/bench_robustness.py --case real --crop 72,90,72 --seeds 0,1 --methods "" \
        --json benchmarks/results/robustness_real.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisitions import THIN_MM, Acquisition, make_stacks, rows  # noqa: E402
from cases import BRAINS, CASE_HELP, CASES  # noqa: E402

from bids_mcsr.acquisition import slice_profile  # noqa: E402
from bids_mcsr.acquisition.backprojection import enforce_consistency  # noqa: E402
from bids_mcsr.image.geometry import Grid  # noqa: E402
from bids_mcsr.image.io import Stack  # noqa: E402
from bids_mcsr.image.metrics import cubic_baseline, psnr, ssim  # noqa: E402
from bids_mcsr.inr.acquisition_fit import FittedAcquisition, widest_learned_fwhm  # noqa: E402
from bids_mcsr.inr.config import SRConfig  # noqa: E402
from bids_mcsr.inr.superres import super_resolve  # noqa: E402

ROUNDS = 3


METRICS = ("psnr", "ssim", "psnr_brain", "ssim_brain")  # in the head; in the brain


def scores(volumes: dict, truth: dict, masks: tuple[np.ndarray, np.ndarray], contrasts: list[str]) -> dict:
    """PSNR and SSIM of each contrast in the head and in the brain (``masks``)."""
    head, brain = masks
    return {c: {"psnr": psnr(volumes[c], truth[c], head), "ssim": ssim(volumes[c], truth[c], head),
                "psnr_brain": psnr(volumes[c], truth[c], brain),
                "ssim_brain": ssim(volumes[c], truth[c], brain)}
            for c in contrasts}


def fitted_stacks(stacks: list[Stack], result) -> list[Stack]:
    """The stacks as the fit placed and profiled them, by the app's own rule
    (:meth:`~bids_mcsr.inr.acquisition_fit.FittedAcquisition.apply`)."""
    profile = result.settings["slice_profile"]
    return [FittedAcquisition(a["fitted_fwhm_mm"],
                              None if a["fitted_fwhm_mm"] is None else widest_learned_fwhm(s, profile),
                              np.asarray(a["pose_correction"]), a["pose_shift_mm"]).apply(s)
            for s, a in zip(stacks, result.acquisition)]


def pose_error(correction: np.ndarray, misplaced_by: np.ndarray, stack: Stack) -> tuple[float, float]:
    """Residual (mm at the stack centre, degrees) of the fitted correction after the
    injected misplacement."""
    residual = correction @ misplaced_by
    centre = stack.affine[:3, :3] @ ((np.asarray(stack.data.shape) - 1) / 2) + stack.affine[:3, 3]
    centre = np.linalg.inv(misplaced_by)[:3, :3] @ centre + np.linalg.inv(misplaced_by)[:3, 3]
    shift = float(np.linalg.norm(residual[:3, :3] @ centre + residual[:3, 3] - centre))
    angle = float(np.degrees(np.arccos(np.clip((np.trace(residual[:3, :3]) - 1) / 2, -1, 1))))
    return shift, angle


@contextmanager
def slab_model(cap: float | None = None, scale: float | None = None):
    """The forward model with another cap on the slab width (x the spacing) and another
    modelled FWHM (x the header's thickness, whatever the profile) than the app's."""
    saved = slice_profile.SLAB_MAX_OF_SPACING, slice_profile.SLAB_FWHM_OF_THICKNESS
    if cap is not None:
        slice_profile.SLAB_MAX_OF_SPACING = cap
    if scale is not None:
        slice_profile.SLAB_FWHM_OF_THICKNESS = {p: scale for p in saved[1]}
    try:
        yield
    finally:
        slice_profile.SLAB_MAX_OF_SPACING, slice_profile.SLAB_FWHM_OF_THICKNESS = saved


def true_fwhm(spec) -> float | None:
    if spec.axis is None:
        return None
    return THIN_MM if spec.profile == "thin" else spec.thickness


def fitted(result, stacks: list[Stack], row: Acquisition, moved: dict) -> dict:
    """A fit's slice-profile widths (beside the truth's and the header's) and the residual
    of its pose corrections after the injected misplacements."""
    return {"fwhm": {s.name: {"fitted": a["fitted_fwhm_mm"], "true": true_fwhm(spec),
                              "header": s.slice_thickness}
                     for s, a, spec in zip(stacks, result.acquisition, row.stacks)},
            "pose": {name: pose_error(np.asarray(a["pose_correction"]), moved[name], s)
                     for s, a in zip(stacks, result.acquisition) for name in [s.name] if name in moved}}


def run_row(row: Acquisition, seed: int, case, brain: np.ndarray, methods: list[str],
            threads: int) -> dict:
    """Every method on one acquisition row for one seed (refits only for ``methods``), scored
    in the case's head and in its ``brain``."""
    truth, affine, mask = case
    masks = (mask, brain)
    grid = Grid(truth["T1w"].shape, affine)
    stacks, moved = make_stacks(row, truth, affine, mask, seed)
    thick = list(dict.fromkeys(s.contrast for s in stacks if not s.is_isotropic))
    by_c = {c: [s for s in stacks if s.contrast == c] for c in dict.fromkeys(s.contrast for s in stacks)}
    out: dict = {"methods": {}, "seconds": {}}
    cubic = {c: cubic_baseline(own, grid) for c, own in by_c.items()}
    out["methods"]["cubic"] = scores(cubic, truth, masks, thick)
    cbp = {c: enforce_consistency(cubic[c], grid, by_c[c], "gaussian", ROUNDS) for c in thick}
    out["methods"]["cubic+bp"] = scores(cbp, truth, masks, thick)
    t0 = time.perf_counter()
    res = super_resolve(stacks, SRConfig(seed=seed, threads=threads, keep_network_output=True), grid=grid)
    out["seconds"]["default"] = time.perf_counter() - t0
    out["methods"]["default"] = scores(res.volumes, truth, masks, thick)
    out["methods"]["net"] = scores(res.network_volumes, truth, masks, thick)
    placed = fitted_stacks(stacks, res)
    bp3 = {c: enforce_consistency(res.network_volumes[c], grid,
                                  [p for p in placed if p.contrast == c], "gaussian", ROUNDS)
           for c in thick}
    out["methods"]["bp3"] = scores(bp3, truth, masks, thick)
    out["rounds"] = {c: res.validation[c].get("consistency_rounds") for c in thick}
    out["heldout_gain"] = {c: res.validation[c]["gain_db"] for c in thick}
    out.update(fitted(res, stacks, row, moved))
    out["refits"] = {}
    out["noise_percent"] = {s.name: a["noise_percent"] for s, a in zip(stacks, res.acquisition)}
    if "previous" in methods:
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads, learn_profile=False,
                                             refine_registration=False, holdout_fraction=0.0),
                            grid=grid)
        out["methods"]["previous"] = scores(alt.volumes, truth, masks, thick)
    if "fixed-profile" in methods:
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads, learn_profile=False), grid=grid)
        out["methods"]["fixed-profile"] = scores(alt.volumes, truth, masks, thick)
    if "uncapped" in methods:
        with slab_model(cap=np.inf):
            alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads), grid=grid)
        out["methods"]["uncapped"] = scores(alt.volumes, truth, masks, thick)
    for method in (m for m in methods if m.startswith("slab=")):
        with slab_model(scale=float(method.split("=")[1])):
            alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads), grid=grid)
        out["methods"][method] = scores(alt.volumes, truth, masks, thick)
    if "pose-fit" in methods and moved:
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads, refine_registration=True),
                            grid=grid)
        out["methods"]["pose-fit"] = scores(alt.volumes, truth, masks, thick)
        out["refits"]["pose-fit"] = fitted(alt, stacks, row, moved)
    if "profile-fit" in methods:
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads, learn_profile=True), grid=grid)
        out["methods"]["profile-fit"] = scores(alt.volumes, truth, masks, thick)
        out["refits"]["profile-fit"] = fitted(alt, stacks, row, moved)
    for method in (m for m in methods if m.startswith("finest=")):
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads,
                                             finest_mm=float(method.split("=")[1])), grid=grid)
        out["methods"][method] = scores(alt.volumes, truth, masks, thick)
    for method in (m for m in methods if m.startswith("epochs=")):
        t0 = time.perf_counter()
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads,
                                             epochs=int(method.split("=")[1])), grid=grid)
        out["seconds"][method] = time.perf_counter() - t0
        out["methods"][method] = scores(alt.volumes, truth, masks, thick)
    if "fixed-pose" in methods and moved:
        alt = super_resolve(stacks, SRConfig(seed=seed, threads=threads, refine_registration=False),
                            grid=grid)
        out["methods"]["fixed-pose"] = scores(alt.volumes, truth, masks, thick)
    return out


def summarise(results: list[dict]) -> dict:
    """Mean and spread (max - min) over the seeds that ran each method."""
    summary: dict = {}
    for method in results[0]["methods"]:
        ran = [r for r in results if method in r["methods"]]
        summary[method] = {}
        for c in results[0]["methods"][method]:
            summary[method][c] = {}
            for m in METRICS:
                vals = [r["methods"][method][c][m] for r in ran]
                summary[method][c][m] = (float(np.mean(vals)), float(np.max(vals) - np.min(vals)))
    return summary


def print_row(name: str, summary: dict) -> None:
    cubic = summary["cubic"]
    for method, per_c in summary.items():
        cells = []
        for c, v in per_c.items():
            gain = v["psnr"][0] - cubic[c]["psnr"][0]
            brain = v["psnr_brain"][0] - cubic[c]["psnr_brain"][0]
            cells.append(f"{c} {v['psnr'][0]:.2f}±{v['psnr'][1]:.2f} ({gain:+.2f}) "
                         f"{v['ssim'][0]:.4f}±{v['ssim'][1]:.4f} brain "
                         f"{v['psnr_brain'][0]:.2f}±{v['psnr_brain'][1]:.2f} ({brain:+.2f}) "
                         f"{v['ssim_brain'][0]:.4f}")
        print(f"  {name:<48} {method:<14} " + " | ".join(cells), flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    p.add_argument("--methods", default="previous,fixed-pose",
                   help="refits beside the default (previous, fixed-profile, fixed-pose, uncapped, slab=X, "
                        "pose-fit, profile-fit, epochs=N, finest=X)")
    p.add_argument("--method-seeds", default="0",
                   help="seeds of the refits beside the default (CPU budget)")
    p.add_argument("--crop", default="64,80,64", help="truth crop (voxels)")
    p.add_argument("--case", choices=tuple(CASES), default="template", help=CASE_HELP)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    crop = tuple(int(v) for v in a.crop.split(","))
    case, brain = CASES[a.case](crop), BRAINS[a.case](crop)
    all_rows = rows()
    picked = [all_rows[int(i)] for i in a.rows.split(",")] if a.rows else all_rows
    seeds = [int(s) for s in a.seeds.split(",")]
    methods = a.methods.split(",") if a.methods else []
    report = []
    print("row | method | per contrast: PSNR mean±spread (gain over cubic) SSIM mean±spread, "
          "the same in the brain")
    for row in picked:
        method_seeds = {int(v) for v in a.method_seeds.split(",")}
        results = [run_row(row, seed, case, brain, methods if seed in method_seeds else [], a.threads)
                   for seed in seeds]
        summary = summarise(results)
        print_row(row.name, summary)
        extra = {"fwhm": [r["fwhm"] for r in results], "pose": [r["pose"] for r in results],
                 "rounds": [r["rounds"] for r in results],
                 "heldout_gain": [r["heldout_gain"] for r in results],
                 "noise_percent": [r["noise_percent"] for r in results],
                 "seconds": [r["seconds"] for r in results],
                 "refits": [r["refits"] for r in results]}
        fw = "; ".join(f"{n.split('_')[-1].split('.')[0]} {v['fitted'] or 0:.2f}"
                       f" (true {v['true'] or 0:.1f}, header {v['header'] or 0:.1f})"
                       for r in results[:1] for n, v in r["fwhm"].items())
        print(f"    fitted FWHM mm (seed {seeds[0]}): {fw}; rounds kept {extra['rounds']}; "
              f"pose residual (mm, deg) {extra['pose']}; held-out gain dB {extra['heldout_gain']}; "
              f"fit s {[round(s['default']) for s in extra['seconds']]}", flush=True)
        report.append({"row": row.name, "summary": summary, **extra})
        if a.json:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            meta = {"seeds": seeds, "crop": a.crop, "case": a.case, "threads": a.threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "machine": platform.machine()}
            a.json.write_text(json.dumps({"meta": meta, "rows": report}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
