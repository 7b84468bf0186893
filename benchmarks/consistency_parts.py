"""Which part of data consistency pays: guided upsampling, back-projection, noise gating.

One fit of one robustness row (``acquisitions.rows()``, the case of ``cases.CASES``) with
``consistency_iterations=0``, so that the result's volumes are the guided upsampling alone,
then every combination of its two steps on the same network, scored against the truth in the
head mask and in that mask eroded by ``--inner-mm`` (the head's outer rim, scalp and skull,
left out):

* ``net``: the network alone; ``guided``: guided upsampling alone;
* ``net+plain`` / ``guided+plain``: 3 rounds of classic back-projection (every residual);
* ``net+gated`` / ``guided+gated``: 3 rounds with the local Wiener gain at each stack's
  estimated noise (``guided+gated`` is the app's default when the held-out rule keeps 3 rounds).

The stacks are placed and profiled as the fit left them (``bench_robustness.fitted_stacks``).
A diagnostic for one seed, not a table of claims.

Usage::

    python benchmarks/consistency_parts.py --case real --crop 999,999,999 --row 0 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acquisitions import make_stacks, rows  # noqa: E402
from bench_robustness import ROUNDS, fitted_stacks, scores  # noqa: E402
from cases import CASE_HELP, CASES  # noqa: E402

from bids_mcsr.acquisition.backprojection import enforce_consistency  # noqa: E402
from bids_mcsr.image.geometry import Grid  # noqa: E402
from bids_mcsr.image.noise import estimate_noise  # noqa: E402
from bids_mcsr.inr.config import SRConfig  # noqa: E402
from bids_mcsr.inr.superres import super_resolve  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=tuple(CASES), default="template", help=CASE_HELP)
    p.add_argument("--crop", default="64,80,64", help="truth crop (voxels)")
    p.add_argument("--row", type=int, default=0, help="robustness row number")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--inner-mm", type=float, default=7.0, help="rim left out of the inner score")
    args = p.parse_args()
    truth, affine, mask = CASES[args.case](tuple(int(x) for x in args.crop.split(",")))
    grid = Grid(truth["T1w"].shape, affine)
    row = rows()[args.row]
    stacks, _ = make_stacks(row, truth, affine, mask, args.seed)
    thick = list(dict.fromkeys(s.contrast for s in stacks if not s.is_isotropic))
    res = super_resolve(stacks, SRConfig(seed=args.seed, threads=args.threads, keep_network_output=True,
                                         consistency_iterations=0), grid=grid)
    placed = fitted_stacks(stacks, res)
    own = {c: [s for s in placed if s.contrast == c] for c in thick}
    noise = {"plain": {c: None for c in thick},
             "gated": {c: [estimate_noise(s) for s in own[c]] for c in thick}}
    starts = {"net": res.network_volumes, "guided": res.volumes}
    variants = {}
    for start, volumes in starts.items():
        variants[start] = {c: volumes[c] for c in thick}
        for gate, sigmas in noise.items():
            variants[f"{start}+{gate}"] = {c: enforce_consistency(volumes[c], grid, own[c], "gaussian",
                                                                  ROUNDS, noise=sigmas[c])
                                           for c in thick}
    rim = max(1, round(args.inner_mm / float(grid.spacing.min())))
    inner = ndimage.binary_erosion(mask, iterations=rim)
    print(f"{row.name}, {args.case}, seed {args.seed}: PSNR (dB) in the head | inside it "
          f"({args.inner_mm} mm rim out)")
    for name, volumes in variants.items():
        got = scores(volumes, truth, (mask, inner), thick)  # its second region: the inner head
        cells = [f"{c} {got[c]['psnr']:.2f} | {got[c]['psnr_brain']:.2f}" for c in thick]
        print(f"  {name:13s} " + "  ".join(cells))


if __name__ == "__main__":
    main()
