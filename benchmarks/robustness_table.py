"""Markdown table of ``bench_robustness.py --json`` files (for docs/evaluation.md); a row found
in several files is taken from the last.

``--before FILE ...``: files of an earlier release whose ``default`` column is shown beside
this one's as ``before`` (its mean over the seeds it ran). ``--refits NAME ...``: refit
methods of the files (e.g. ``pose-fit``) shown as their gain over cubic, ``-`` where not run.
``--region brain``: the scores inside the brain (files written since they were kept) instead
of the head.

Usage::

    python benchmarks/robustness_table.py benchmarks/results/robustness_rect_*.json \
        --before benchmarks/results/robustness_before_e.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("cubic", "cubic+bp", "net", "bp3", "default")


def cell(summary: dict, method: str, contrast: str, region: str) -> str:
    if method not in summary or contrast not in summary[method]:
        return "-"
    (p, dp), (s, _) = (summary[method][contrast]["psnr" + region],
                       summary[method][contrast]["ssim" + region])
    spread = f" ±{dp:.2f}" if dp else ""
    return f"{p:.2f}{spread} / {s:.3f}"


def rows_of(paths: list[Path]) -> dict[str, dict]:
    return {r["row"]: r for p in paths for r in json.loads(p.read_text())["rows"]}


def gain(summary: dict, method: str, contrast: str, region: str = "") -> str:
    if method not in summary:
        return "-"
    key = "psnr" + region
    return f"{summary[method][contrast][key][0] - summary['cubic'][contrast][key][0]:+.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--before", nargs="*", type=Path, default=[])
    p.add_argument("--refits", nargs="*", default=[])
    p.add_argument("--region", choices=("head", "brain"), default="head")
    a = p.parse_args(argv)
    region = "_brain" if a.region == "brain" else ""
    before = rows_of(a.before)
    print("| acquisition | contrast | " + " | ".join(METHODS) + " | default - cubic (dB) "
          "| before - cubic (dB) | " + "".join(f"{m} - cubic (dB) | " for m in a.refits)
          + "held-out gain (dB) | modelled FWHM (mm) |")
    print("|" + "---|" * (len(METHODS) + 6 + len(a.refits)))
    for r in rows_of(a.files).values():
        s = r["summary"]
        old = before.get(r["row"], {}).get("summary", {})
        for c in s["cubic"]:
            held = [h[c] for h in r["heldout_gain"] if h.get(c) is not None]
            fw = [v["fitted"] for name, v in r["fwhm"][0].items()
                  if name.split("_")[-1].startswith(c + ".")]
            print(f"| {r['row']} | {c} | " + " | ".join(cell(s, m, c, region) for m in METHODS)
                  + f" | {gain(s, 'default', c, region)} | {gain(old, 'default', c, region)} | "
                  + "".join(f"{gain(s, m, c, region)} | " for m in a.refits)
                  + (", ".join(f"{h:+.1f}" for h in held) or "-")
                  + " | " + (", ".join(f"{f:.1f}" for f in fw if f is not None) or "-") + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
