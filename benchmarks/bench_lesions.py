"""Pathology and clinical-protocol benchmark: are lesions kept, and never painted into a
contrast where they are invisible?

The truth is the benchmarks' template case (``cases.template_case``:
a central 64 x 80 x 64 mm crop of the 1 mm ICBM 2009a template with its T1w and the T2w- and
FLAIR-like contrasts of ``bids_mcsr.evaluation.phantom``) with the lesions of
``bids_mcsr.evaluation.lesions`` inserted and a contrast-enhanced T1w derived from the T1w
(``--case real``: the same on a real subject's anatomy, ``cases.real_anatomy_truth``).
Every stack is acquired by ``acquisitions.make_stacks``: rectangular 4 mm slabs every 4 mm,
2 % Rician noise; a 3D stack is the noisy truth itself (1 mm isotropic).

Rows (``rows()``): the glioma protocol (T1w, ce-T1w, T2w, FLAIR in mixed planes, with
single-contrast fits), then the protocols of issue 13: two axial 2D stacks alone
(T2w, FLAIR), the same two plus a 3D T1w, and three contrasts in mixed planes; last, the
tumour cases of issue 12: a T1w axial and a T2w coronal stack, and the dataset issue 13 is
judged on: T1w, ce-T1w and T2w (both with single-contrast fits).

Methods, each scored per contrast on the truth's grid:

* ``cubic``: cubic B-spline interpolation of the contrast's stacks (for a 3D contrast: its
  resampling onto the grid);
* ``single``: one ``super_resolve`` per contrast on that contrast's stacks alone;
* ``multi``: the app's fit of all stacks together; ``multi-net``: the same fit before
  back-projection.

Scores: PSNR and SSIM inside the head (``bids_mcsr.image.metrics``); PSNR over the lesions
visible in the contrast and, separately, over those invisible in it (the head's truth range
as the peak, so the numbers compare with the head's); the lesion-to-tissue contrast kept
(estimate's over truth's, mean over the visible lesions; 1 is perfect); the false lesion
contrast where a lesion is invisible (estimate's minus truth's, % of the head range, mean of
the absolute values); and, per invisible lesion and for a control region changed in no
contrast (the error of lesion-free tissue of the same size), the region's PSNR and false
contrast. Every number is the mean over ``--seeds`` (noise and fit) with the
spread (max - min); the lesions are the same for every seed. Nothing here was tuned on these
cases: the fits use the app's defaults.

Usage::

    nice -n 10 python benchmarks/bench_lesions.py --seeds 0,1 --threads 1 \\
        --json benchmarks/results/lesions.json
    python benchmarks/bench_lesions.py --table benchmarks/results/lesions.json  # docs tables
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisitions import AX, COR, SAG, Acquisition, StackSpec, make_stacks  # noqa: E402
from cases import CASE_HELP, CASES  # noqa: E402

from bids_mcsr.evaluation.lesions import CE_T1W, LesionCase, build_lesion_case, lesion_scores, pooled_psnr  # noqa: E402  # noqa: E402
from bids_mcsr.image.geometry import Grid  # noqa: E402
from bids_mcsr.image.metrics import cubic_baseline, psnr, ssim  # noqa: E402
from bids_mcsr.inr.config import SRConfig  # noqa: E402
from bids_mcsr.inr.superres import super_resolve  # noqa: E402

NOISE_PERCENT = 2.0


def rows() -> list[Acquisition]:
    """The protocols; ``notes["single"]`` asks for the single-contrast fits too."""
    def thick(contrast: str, axis: int) -> StackSpec:
        return StackSpec(contrast, axis, "rect")
    return [
        Acquisition("glioma: T1w ax, ce-T1w sag, T2w cor, FLAIR ax",
                    [thick("T1w", AX), thick(CE_T1W, SAG), thick("T2w", COR), thick("FLAIR", AX)],
                    NOISE_PERCENT, {"single": True}),
        Acquisition("2 axial 2D: T2w, FLAIR", [thick("T2w", AX), thick("FLAIR", AX)], NOISE_PERCENT),
        Acquisition("3D T1w + axial 2D T2w, FLAIR",
                    [StackSpec("T1w", None), thick("T2w", AX), thick("FLAIR", AX)], NOISE_PERCENT),
        Acquisition("3 contrasts: T1w ax, T2w cor, FLAIR sag",
                    [thick("T1w", AX), thick("T2w", COR), thick("FLAIR", SAG)], NOISE_PERCENT),
        Acquisition("2 contrasts: T1w ax, T2w cor",
                    [thick("T1w", AX), thick("T2w", COR)], NOISE_PERCENT, {"single": True}),
        Acquisition("3 contrasts: T1w ax, ce-T1w sag, T2w cor",
                    [thick("T1w", AX), thick(CE_T1W, SAG), thick("T2w", COR)], NOISE_PERCENT,
                    {"single": True}),
    ]


def contrast_scores(volume: np.ndarray, case: LesionCase, contrast: str) -> dict:
    """Head PSNR/SSIM and the lesion numbers of one estimate of ``contrast``."""
    truth, head = case.truth[contrast], case.head
    peak = float(np.ptp(truth[head]))
    per_lesion = lesion_scores(volume, case, contrast)
    visible = [s for s in per_lesion if s["visible"]]
    invisible = [s for s in per_lesion if not s["visible"] and not s["control"]]
    return {"psnr": psnr(volume, truth, head), "ssim": ssim(volume, truth, head),
            "lesion_psnr": pooled_psnr(visible, peak),
            "kept": (float(np.mean([s["contrast_pct"] / s["truth_contrast_pct"] for s in visible]))
                     if visible else None),
            "invisible_psnr": pooled_psnr(invisible, peak),
            "false_pct": (float(np.mean([abs(s["contrast_pct"] - s["truth_contrast_pct"])
                                         for s in invisible])) if invisible else None),
            "lesions": {s["lesion"]: {"psnr": pooled_psnr([s], peak), "visible": s["visible"],
                                      "control": s["control"],
                                      "contrast_pct": s["contrast_pct"],
                                      "truth_contrast_pct": s["truth_contrast_pct"]}
                        for s in per_lesion}}


def run_row(row: Acquisition, seed: int, case: LesionCase, threads: int,
            epochs: int | None, single: bool = True) -> dict:
    """Every method on one protocol for one seed (the single-contrast fits only where the row
    asks for them and ``single``)."""
    grid = Grid(case.head.shape, case.affine)
    stacks, _ = make_stacks(row, case.truth, case.affine, case.head, seed)
    contrasts = list(dict.fromkeys(s.contrast for s in stacks))
    by_c = {c: [s for s in stacks if s.contrast == c] for c in contrasts}
    config = SRConfig(seed=seed, threads=threads, epochs=epochs, keep_network_output=True)
    out: dict = {"methods": {}, "seconds": {},
                 "3d": [c for c in contrasts if all(s.is_isotropic for s in by_c[c])]}
    volumes = {"cubic": {c: cubic_baseline(own, grid) for c, own in by_c.items()}}
    t0 = time.perf_counter()
    res = super_resolve(stacks, config, grid=grid)
    out["seconds"]["multi"] = time.perf_counter() - t0
    volumes["multi"], volumes["multi-net"] = res.volumes, res.network_volumes
    if single and row.notes.get("single"):
        volumes["single"] = {}
        for c, own in by_c.items():
            t0 = time.perf_counter()
            volumes["single"][c] = super_resolve(own, config, grid=grid).volumes[c]
            out["seconds"][f"single {c}"] = time.perf_counter() - t0
    for method, vols in volumes.items():
        out["methods"][method] = {c: contrast_scores(vols[c], case, c) for c in contrasts}
    return out


def mean_spread(values: list) -> list | None:
    """``[mean, max - min]`` of the values, None when any is missing."""
    if not values or any(v is None for v in values):
        return None
    return [float(np.mean(values)), float(np.max(values) - np.min(values))]


SCALARS = ("psnr", "ssim", "lesion_psnr", "kept", "invisible_psnr", "false_pct")


def summarise(results: list[dict]) -> dict:
    """Per method and contrast: mean and spread over the seeds of every score, and of every
    lesion's PSNR and contrast."""
    summary: dict = {}
    for method, per_c in results[0]["methods"].items():
        summary[method] = {}
        for c, first in per_c.items():
            runs = [r["methods"][method][c] for r in results]
            cell = {k: mean_spread([run[k] for run in runs]) for k in SCALARS}
            cell["lesions"] = {name: {"visible": v["visible"], "control": v["control"],
                                      "truth_contrast_pct": v["truth_contrast_pct"],
                                      **{k: mean_spread([run["lesions"][name][k] for run in runs])
                                         for k in ("psnr", "contrast_pct")}}
                               for name, v in first["lesions"].items()}
            summary[method][c] = cell
    return summary


def fmt(cell: list | None, digits: int = 2) -> str:
    return "n/a" if cell is None else f"{cell[0]:.{digits}f}±{cell[1]:.{digits}f}"


def print_row(name: str, summary: dict, three_d: list[str]) -> None:
    """One line per method and contrast."""
    print(f"\n{name}")
    print(f"  {'method':<10} {'contrast':<18} {'PSNR head':>12} {'(gain)':>8} {'SSIM':>14} "
          f"{'PSNR lesions':>13} {'kept':>11} {'PSNR invisible':>15} {'false %':>11}")
    for method, per_c in summary.items():
        for c, v in per_c.items():
            gain = v["psnr"][0] - summary["cubic"][c]["psnr"][0]
            label = f"{c} (3D)" if c in three_d else c
            print(f"  {method:<10} {label:<18} {fmt(v['psnr']):>12} {gain:>+8.2f} "
                  f"{fmt(v['ssim'], 4):>14} {fmt(v['lesion_psnr']):>13} {fmt(v['kept']):>11} "
                  f"{fmt(v['invisible_psnr']):>15} {fmt(v['false_pct']):>11}", flush=True)


def painting(summary: dict) -> list[dict]:
    """Every (lesion, contrast) pair where the lesion is invisible (the control region
    included, last): its region's PSNR and false contrast per method, and whether the
    multi-contrast fit's PSNR is at least the single-contrast fit's (the issue's test)."""
    pairs = []
    for c, v in summary["cubic"].items():
        for name, lesion in v["lesions"].items():
            if lesion["visible"]:
                continue
            pair = {"lesion": name, "contrast": c, "truth_contrast_pct": lesion["truth_contrast_pct"]}
            for method in summary:
                got = summary[method][c]["lesions"][name]
                pair[method] = {"psnr": got["psnr"],
                                "false_pct": [got["contrast_pct"][0] - lesion["truth_contrast_pct"],
                                              got["contrast_pct"][1]]}
            if "single" in summary:
                pair["multi_not_worse"] = pair["multi"]["psnr"][0] >= pair["single"]["psnr"][0]
            pairs.append(pair)
    return sorted(pairs, key=lambda p: summary["cubic"][p["contrast"]]["lesions"][p["lesion"]]
                  ["control"])


def print_painting(pairs: list[dict]) -> None:
    print("\n  invisible lesion         contrast            region PSNR (dB) / false contrast (% of range) "
          "per method")
    for p in pairs:
        cells = " | ".join(f"{m} {fmt(p[m]['psnr'])} / {fmt(p[m]['false_pct'])}"
                           for m in ("cubic", "single", "multi", "multi-net") if m in p)
        verdict = "" if "multi_not_worse" not in p else ("  ok" if p["multi_not_worse"] else "  WORSE")
        print(f"  {p['lesion']:<24} {p['contrast']:<18} {cells}{verdict}", flush=True)


def markdown(report: list[dict]) -> str:
    """The docs tables of a ``--json`` report: per row, method and contrast the head and
    lesion scores; then the invisible lesions of the rows with single-contrast fits."""
    def cell(v: list | None, digits: int = 2) -> str:
        return "-" if v is None else f"{v[0]:.{digits}f} ±{v[1]:.{digits}f}"
    lines = ["| protocol | contrast | method | PSNR head (dB) | SSIM head | PSNR visible lesions (dB) "
             "| contrast kept | PSNR invisible lesions (dB) | false contrast (%) |",
             "|" + "---|" * 9]
    for r in report:
        for method, per_c in r["summary"].items():
            for c, v in per_c.items():
                label = f"{c} (3D)" if c in r["3d"] else c
                lines.append(f"| {r['row']} | {label} | {method} | {cell(v['psnr'])} | "
                             f"{cell(v['ssim'], 3)} | {cell(v['lesion_psnr'])} | {cell(v['kept'])} "
                             f"| {cell(v['invisible_psnr'])} | {cell(v['false_pct'])} |")
    lines += ["", "| lesion | invisible in | truth contrast (%) | " + " | ".join(
        f"{m} PSNR / false contrast" for m in ("cubic", "single", "multi")) + " | multi >= single |",
        "|" + "---|" * 7]
    for r in report:
        for p in r.get("painting", []):
            cells = " | ".join(f"{cell(p[m]['psnr'])} / {cell(p[m]['false_pct'])}"
                               for m in ("cubic", "single", "multi"))
            lines.append(f"| {p['lesion']} | {p['contrast']} | {p['truth_contrast_pct']:.1f} | "
                         f"{cells} | {'yes' if p['multi_not_worse'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    p.add_argument("--crop", default="64,80,64", help="truth crop (voxels)")
    p.add_argument("--case", choices=tuple(CASES), default="template", help=CASE_HELP)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the app's)")
    p.add_argument("--no-single", action="store_true",
                   help="skip the single-contrast fits (the multi-contrast fit and cubic only)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--table", type=Path, default=None,
                   help="print the markdown tables of a --json report and stop")
    a = p.parse_args(argv)
    if a.table:
        print(markdown(json.loads(a.table.read_text())["rows"]))
        return 0
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    crop = tuple(int(v) for v in a.crop.split(","))
    case = build_lesion_case(*CASES[a.case](crop))
    all_rows = rows()
    picked = [all_rows[int(i)] for i in a.rows.split(",")] if a.rows else all_rows
    seeds = [int(s) for s in a.seeds.split(",")]
    print("per method and contrast: mean±spread over seeds", seeds)
    meta = {"seeds": seeds, "crop": a.crop, "case": a.case, "threads": a.threads, "epochs": a.epochs,
            "noise_percent": NOISE_PERCENT, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine()}
    report: list[dict] = []
    for row in picked:
        results = []
        for seed in seeds:  # the JSON is rewritten after every seed: a cut run keeps its rows
            results.append(run_row(row, seed, case, a.threads, a.epochs, not a.no_single))
            summary = summarise(results)
            entry = {"row": row.name, "seeds": seeds[:len(results)], "3d": results[0]["3d"],
                     "summary": summary, "seconds": [r["seconds"] for r in results]}
            if "single" in summary:
                entry["painting"] = painting(summary)
            if a.json:
                a.json.parent.mkdir(parents=True, exist_ok=True)
                a.json.write_text(json.dumps({"meta": meta, "rows": report + [entry]}, indent=1))
        print_row(row.name, entry["summary"], entry["3d"])
        if "painting" in entry:
            print_painting(entry["painting"])
        print(f"  fit seconds: {entry['seconds']}", flush=True)
        report.append(entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
