"""SR quality benchmark on truth-known cases: PSNR, SSIM, MI, time and peak memory per method.

Usage::

    python benchmarks/bench_quality.py --case mni --rows cubic,cubic-bp,single-fast,multi-fast,multi-paper \
        --profiles none,gaussian --json benchmarks/results/quality_mni.json

INR rows end with ``--consistency`` rounds of back-projection (the product's default; 0 for
the network alone); ``cubic-bp`` is the classic iterative back-projection baseline started from
cubic interpolation with the same rounds.

Each INR row runs in a fresh process so its peak memory is its own. PSNR/SSIM are scored
inside the truth's head mask on the truth's range there (see bids_mcsr.image.metrics).
Per-epoch PSNR on a fixed subsample of the mask shows whether the MI-selected epoch is
also the best epoch by PSNR.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import load_case  # noqa: E402

from bids_mcsr.acquisition.backprojection import DEFAULT_CONSISTENCY_ITERATIONS, enforce_consistency  # noqa: E402
from bids_mcsr.image.geometry import CoordinateFrame, voxel_centres  # noqa: E402
from bids_mcsr.image.metrics import cubic_baseline, mutual_information, psnr, ssim  # noqa: E402
from bids_mcsr.inr.config import SRConfig  # noqa: E402
from bids_mcsr.inr.inference import predict_points  # noqa: E402
from bids_mcsr.inr.stopping import mi_plateaued  # noqa: E402
from bids_mcsr.inr.superres import super_resolve  # noqa: E402


def score(case, volumes: dict[str, np.ndarray]) -> dict:
    out = {}
    for c, truth in case.truth.items():
        if c not in volumes:
            continue
        out[c] = {"psnr": psnr(volumes[c], truth, case.mask), "ssim": ssim(volumes[c], truth, case.mask)}
    names = list(volumes)
    if len(names) > 1:
        out["mi"] = mutual_information(volumes[names[0]][case.mask], volumes[names[1]][case.mask])
    return out


def run_cubic(case, rounds: int = 0) -> dict:
    """Cubic B-spline interpolation per contrast, then ``rounds`` of back-projection
    (classic iterative back-projection super-resolution when ``rounds > 0``)."""
    t0 = time.perf_counter()
    vols = {}
    for c in dict.fromkeys(s.contrast for s in case.stacks):
        own = [s for s in case.stacks if s.contrast == c]
        vols[c] = enforce_consistency(cubic_baseline(own, case.grid), case.grid, own, "gaussian", rounds)
    return {"scores": score(case, vols), "seconds": time.perf_counter() - t0}


def run_inr(args: dict) -> dict:
    logging.basicConfig(level=logging.INFO, format="  %(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args["threads"])
    case = load_case(args["case"], args["resolution"])
    stacks = case.stacks if args["only"] is None else [s for s in case.stacks if s.contrast == args["only"]]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(np.flatnonzero(case.mask.ravel()), 100000, replace=False))
    frame = CoordinateFrame.from_stacks(stacks)
    pts = frame.normalise(voxel_centres(case.grid.shape, case.grid.affine)[idx])
    epoch_psnr: list[float] = []
    tracked = stacks[0].contrast
    truth_t1 = case.truth[tracked].ravel()[idx] if tracked in case.truth else None
    from bids_mcsr.inr.sampling import stack_masks_and_scalers
    _, scalers = stack_masks_and_scalers(stacks[:1])
    lo, hi = scalers[0].low, scalers[0].high  # intensity scale of the tracked contrast

    def track(epoch, model):  # PSNR of the first contrast per epoch on 100k mask voxels
        if truth_t1 is None:
            return
        pred = predict_points(model, pts, torch.device("cpu"))[:, 0]
        err = np.mean((pred * (hi - lo) + lo - truth_t1) ** 2)
        rng_t = truth_t1.max() - truth_t1.min()
        epoch_psnr.append(float(10 * np.log10(rng_t ** 2 / err)))

    cfg = SRConfig(model=args["model"], slice_profile=args["profile"], epochs=args["epochs"],
                   mi_stopping=False, seed=0, max_train_seconds=args["seconds"],
                   finest_mm=args["finest_mm"], consistency_iterations=args["consistency"])
    t0 = time.perf_counter()
    res = super_resolve(stacks, cfg, grid=case.grid, on_epoch_end=track)
    seconds = time.perf_counter() - t0
    mi = [m for m in res.history["mi"] if m is not None]
    mi_epoch = next((e + 1 for e in range(len(mi)) if e + 1 >= 6 and mi_plateaued(mi[:e + 1])), None)
    return {"scores": score(case, res.volumes), "seconds": seconds, "epochs": res.epochs_run,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "epoch_psnr_t1w": epoch_psnr, "mi_curve": mi, "mi_stop_epoch": mi_epoch,
            "best_psnr_epoch": int(np.argmax(epoch_psnr)) + 1 if epoch_psnr else None}


def run_row(ctx, job: dict, contrasts: list[str]) -> dict:
    """One INR row in fresh processes: one fit, or one single-contrast fit per contrast."""
    jobs = [dict(job, only=None)] if job["multi"] else [dict(job, only=c) for c in contrasts]
    outs = []
    for j in jobs:
        with ctx.Pool(1) as pool:
            outs.append(pool.apply(run_inr, (j,)))
    merged = dict(outs[0])
    if len(outs) > 1:
        merged["scores"] = {k: v for o in outs for k, v in o["scores"].items() if k != "mi"}
        merged["seconds"] = sum(o["seconds"] for o in outs)
        merged["peak_rss_mb"] = max(o["peak_rss_mb"] for o in outs)
    return merged


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=["mni", "rorden"], default="mni")
    p.add_argument("--resolution", type=int, default=1, choices=[1, 2], help="mni truth resolution (mm)")
    p.add_argument("--rows", default="cubic,single-fast,multi-fast,multi-paper")
    p.add_argument("--profiles", default="none,gaussian")
    p.add_argument("--epochs", type=int, default=None, help="epochs of the fast model (default: its own)")
    p.add_argument("--paper-epochs", type=int, default=2, help="epochs of the paper model (CPU budget)")
    p.add_argument("--paper-seconds", type=float, default=None,
                   help="train the paper model for this many seconds instead of --paper-epochs "
                        "(equal-time comparisons)")
    p.add_argument("--finest-mm", type=float, default=None, help="finest hash-grid cell (fast model)")
    p.add_argument("--consistency", type=int, default=DEFAULT_CONSISTENCY_ITERATIONS,
                   help="back-projection rounds after INR inference, and of the cubic-bp row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    case = load_case(a.case, a.resolution)
    rows = []
    ctx = mp.get_context("spawn")
    for row in a.rows.split(","):
        if row == "cubic":
            rows.append({"method": "cubic B-spline", "profile": "-", **run_cubic(case)})
            continue
        if row == "cubic-bp":
            rows.append({"method": f"cubic B-spline + {a.consistency} rounds back-projection",
                         "profile": "gaussian", **run_cubic(case, a.consistency)})
            continue
        kind, model = row.split("-")
        for profile in a.profiles.split(","):
            paper = model == "paper"
            epochs = (None if a.paper_seconds else a.paper_epochs) if paper else a.epochs
            job = {"case": a.case, "resolution": a.resolution, "multi": kind == "multi", "model": model,
                   "profile": profile, "epochs": epochs, "threads": a.threads,
                   "seconds": a.paper_seconds if paper else None,
                   "finest_mm": None if paper else a.finest_mm, "consistency": a.consistency}
            out = run_row(ctx, job, list(case.truth))
            rows.append({"method": f"{kind}-contrast {model}", "profile": profile, **out})
            print_table(a.case, rows[-1:], header=False, flush=True)
    print()
    print_table(a.case, rows, header=True)
    print_targets(rows)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"case": a.case, "resolution": a.resolution, "threads": a.threads,
                "paper_seconds": a.paper_seconds, "finest_mm": a.finest_mm,
                "consistency_iterations": a.consistency,
                "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "device": "cpu"}
        a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


def print_targets(rows: list[dict]) -> None:
    """The issue's targets for the default (multi-contrast fast, Gaussian profile): beat cubic
    B-spline on every scored contrast (minimum), by +1.5 dB PSNR (aim)."""
    cubic = next((r for r in rows if r["method"] == "cubic B-spline"), None)
    default = next((r for r in rows if r["method"] == "multi-contrast fast"
                    and r["profile"] == "gaussian"), None)
    if cubic is None or default is None:
        return
    for c in (k for k in cubic["scores"] if k != "mi"):
        gain = default["scores"][c]["psnr"] - cubic["scores"][c]["psnr"]
        dssim = default["scores"][c]["ssim"] - cubic["scores"][c]["ssim"]
        beats = gain > 0 and dssim > 0
        verdict = ("aim met" if gain >= 1.5 else "minimum met") if beats else "NOT met"
        print(f"target {c}: default vs cubic {gain:+.2f} dB PSNR, {dssim:+.4f} SSIM "
              f"(minimum: beat cubic; aim: +1.5 dB): {verdict}")


def print_table(case_name: str, rows: list[dict], header: bool, flush: bool = False) -> None:
    contrasts = [c for c in rows[0]["scores"] if c != "mi"]
    if header:
        cols = ["method", "profile"] + [f"{c} {m}" for c in contrasts for m in ("PSNR", "SSIM")]
        cols += ["MI", "time s", "peak MB", "epochs", "MI-stop ep", "best ep"]
        print(f"case {case_name}: " + " | ".join(cols))
    for r in rows:
        cells = [r["method"], r["profile"]]
        cells += [f"{r['scores'][c]['psnr']:.2f} | {r['scores'][c]['ssim']:.4f}" if c in r["scores"]
                  else "- | -" for c in contrasts]
        cells += [f"{r['scores'].get('mi', float('nan')):.3f}", f"{r['seconds']:.0f}",
                  f"{r.get('peak_rss_mb', float('nan')):.0f}", str(r.get("epochs", "-")),
                  str(r.get("mi_stop_epoch", "-")), str(r.get("best_psnr_epoch", "-"))]
        print("  " + " | ".join(cells), flush=flush)


if __name__ == "__main__":
    raise SystemExit(main())
