"""Markdown table of one or more ``bench_robustness.py --json`` files (for docs/evaluation.md);
a row found in several files is taken from the last.

Usage::

    python benchmarks/robustness_table.py benchmarks/results/robustness_a.json \
        benchmarks/results/robustness_b.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METHODS = ("cubic", "cubic+bp", "previous", "net", "bp3", "default")


def cell(summary: dict, method: str, contrast: str) -> str:
    if method not in summary or contrast not in summary[method]:
        return "-"
    (p, dp), (s, _) = summary[method][contrast]["psnr"], summary[method][contrast]["ssim"]
    spread = f" ±{dp:.2f}" if dp else ""
    return f"{p:.2f}{spread} / {s:.3f}"


def main(paths: list[str]) -> int:
    by_name = {r["row"]: r for p in paths for r in json.loads(Path(p).read_text())["rows"]}
    rows = list(by_name.values())  # a row measured again in a later file replaces it
    print("| acquisition | contrast | " + " | ".join(METHODS)
          + " | default - cubic (dB) | held-out gain (dB) | fitted FWHM (mm) |")
    print("|" + "---|" * (len(METHODS) + 5))
    for r in rows:
        s = r["summary"]
        for c in s["cubic"]:
            gain = s["default"][c]["psnr"][0] - s["cubic"][c]["psnr"][0]
            held = [h[c] for h in r["heldout_gain"] if h.get(c) is not None]
            fw = [v["fitted"] for name, v in r["fwhm"][0].items() if name.split("_")[-1].startswith(c + ".")]
            print(f"| {r['row']} | {c} | " + " | ".join(cell(s, m, c) for m in METHODS)
                  + f" | {gain:+.2f} | " + (", ".join(f"{h:+.1f}" for h in held) or "-")
                  + " | " + (", ".join(f"{f:.1f}" for f in fw if f is not None) or "-") + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
