"""The CUDA path: does a fit run on a GPU, agree with the CPU, and repeat itself?

One truth-known case, the benchmarks' template crop (``cases.template_case``, default 96 x 112
x 96 mm) acquired as two complementary stacks (T1w axial, T2w coronal; rectangular 4 mm slabs
every 4 mm, 2 % Rician noise, ``acquisitions.make_stacks``), fitted with the app's defaults by
:func:`bids_mcsr.inr.superres.super_resolve` in a fresh process per run:

* ``cpu``: on the CPU (``--threads``);
* ``cuda``: on the GPU, twice with the same seed (the fit runs torch's deterministic
  kernels there, ``bids_mcsr.inr.device.reproducible``; the operations torch warns have
  none are listed).

Per run: the fit's steps (s), peak GPU memory, PSNR inside the head per contrast against the
truth (and cubic's); per pair of same-seed runs the largest voxel difference (% of the
contrast's 99.5th percentile; 0 = bit-identical); per GPU run the largest difference to the
CPU run. Prints a table; ``--json`` keeps the figures.

Usage::

    python benchmarks/bench_device.py --json benchmarks/results/device_cuda.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisitions import AX, COR, Acquisition, StackSpec, make_stacks  # noqa: E402
from cases import template_case  # noqa: E402

RUNS = {"cpu": 1, "cuda": 2}  # same-seed runs per device


def build(crop: tuple[int, int, int], folder: Path) -> None:
    """Acquire the case's stacks and save them and the truth to ``folder``."""
    import nibabel as nib

    vols, affine, mask = template_case(crop)
    row = Acquisition("T1w ax + T2w cor, rect 4 mm, 2 % noise",
                      [StackSpec("T1w", AX, "rect"), StackSpec("T2w", COR, "rect")], noise_percent=2.0)
    stacks, _ = make_stacks(row, vols, affine, mask, seed=0)
    for s in stacks:
        nib.save(s.to_nifti(), str(folder / f"{s.contrast}.nii.gz"))
    np.savez(folder / "truth.npz", affine=affine, mask=mask, **{c: vols[c] for c in ("T1w", "T2w")})


def child(a: argparse.Namespace) -> None:
    """One fit in this process: the volumes to ``--out`` (npz) and the figures beside it (json)."""
    import warnings

    import torch

    from bids_mcsr.image.io import load_stack
    from bids_mcsr.inr.config import SRConfig
    from bids_mcsr.inr.superres import super_resolve

    stacks = [load_stack(a.folder / f"{c}.nii.gz", c, 4.0) for c in ("T1w", "T2w")]
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = super_resolve(stacks, SRConfig(device=a.device, seed=a.seed, threads=a.threads))
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    figures = {"wall_s": time.perf_counter() - t, "device": res.device, "epochs_run": res.epochs_run,
               "timings": {k: float(v) for k, v in res.timings.items()},
               "compiled": bool(res.settings.get("compiled")),
               "gpu_peak_gb": gpu_peak,
               "nondeterministic": sorted({str(w.message).split("\n")[0][:160] for w in caught
                                           if "deterministic" in str(w.message)})}
    np.savez(a.out, **res.volumes)
    a.out.with_suffix(".json").write_text(json.dumps(figures))


def run(device: str, seed: int, folder: Path, threads: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Run one fit in a fresh process and read back its figures and volumes."""
    out = folder / f"{device}_{seed}_{time.monotonic_ns()}.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--folder", str(folder),
           "--device", device, "--seed", str(seed), "--threads", str(threads), "--out", str(out)]
    subprocess.run(cmd, check=True)
    with np.load(out) as z:
        vols = {k: z[k] for k in z.files}
    return json.loads(out.with_suffix(".json").read_text()), vols


def max_diff_percent(a: dict[str, np.ndarray], b: dict[str, np.ndarray], scale: dict[str, float]) -> float:
    """Largest voxel difference between two runs' volumes, % of each contrast's scale."""
    return max(float(np.abs(a[c].astype(np.float64) - b[c]).max()) / scale[c] * 100 for c in scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", default="96,112,96", help="template crop (voxels of 1 mm)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--variants", default="cpu,cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    import torch

    from bids_mcsr.image.geometry import Grid
    from bids_mcsr.image.io import load_stack
    from bids_mcsr.image.metrics import cubic_baseline, psnr

    variants = [v for v in a.variants.split(",") if v]
    if "cuda" in variants and not torch.cuda.is_available():
        print("bench_device: no CUDA GPU visible; run it where torch.cuda.is_available() is True")
        return 2
    crop = tuple(int(x) for x in a.crop.split(","))
    meta = {"crop": crop, "threads": a.threads, "seed": a.seed, "torch": torch.__version__,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bids_mcsr_device_") as tmp:
        folder = Path(tmp)
        build(crop, folder)
        with np.load(folder / "truth.npz") as z:
            truth = {c: z[c] for c in ("T1w", "T2w")}
            mask, affine = z["mask"], z["affine"]
        grid = Grid(mask.shape, affine)
        scale = {c: float(np.percentile(truth[c][mask], 99.5)) for c in truth}
        cubic = {c: psnr(cubic_baseline([load_stack(folder / f"{c}.nii.gz", c, 4.0)], grid), truth[c], mask)
                 for c in truth}
        volumes: dict[str, list[dict[str, np.ndarray]]] = {}
        for v in variants:
            for _ in range(RUNS[v]):
                fig, vols = run(v, a.seed, folder, a.threads)
                fig.update(variant=v, psnr={c: psnr(vols[c], truth[c], mask) for c in truth})
                if "cpu" in volumes and v != "cpu":
                    fig["max_diff_to_cpu_pct"] = max_diff_percent(vols, volumes["cpu"][0], scale)
                if volumes.get(v):
                    fig["max_diff_to_first_pct"] = max_diff_percent(vols, volumes[v][0], scale)
                volumes.setdefault(v, []).append(vols)
                runs.append(fig)
                print(f"{v}: {fig['wall_s']:.1f} s, PSNR {fig['psnr']}", flush=True)
                if a.json:
                    a.json.write_text(json.dumps({"meta": meta, "cubic_psnr": cubic, "runs": runs}, indent=1))
    print(f"\n{meta['gpu']} | torch {meta['torch']} | {a.threads} CPU threads | crop {a.crop}")
    print(f"cubic PSNR: T1w {cubic['T1w']:.2f}, T2w {cubic['T2w']:.2f}")
    print("| run | device | epochs | compiled | training s | total s | GPU peak GB | PSNR T1w | PSNR T2w "
          "| max diff to 1st run % | max diff to cpu % | non-deterministic ops |")
    print("|" + "---|" * 12)
    for r in runs:
        def fmt(key, spec=".2g"):
            return "-" if r.get(key) is None else format(r[key], spec)
        print(f"| {r['variant']} | {r['device']} | {r['epochs_run']} | {r['compiled']} | "
              f"{r['timings'].get('training_s', float('nan')):.1f} | {r['wall_s']:.1f} | "
              f"{fmt('gpu_peak_gb', '.2f')} | "
              f"{r['psnr']['T1w']:.2f} | {r['psnr']['T2w']:.2f} | {fmt('max_diff_to_first_pct')} | "
              f"{fmt('max_diff_to_cpu_pct')} | {'; '.join(r['nondeterministic']) or '-'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
