"""Reproduce the evaluation protocol on any BIDS dataset of isotropic scans.

``bids-mcsr-eval simulate``: write a BIDS dataset of thick-slice stacks, one orientation per
contrast (e.g. T1w axial, T2w coronal), each with a correct affine and ``SliceThickness``.

``bids-mcsr-eval score``: score the super-resolved derivatives against the isotropic
originals (PSNR, SSIM inside the original's foreground; MI between SR contrasts), next to
the cubic B-spline baseline of the simulated stacks; prints a table and writes a TSV.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from bids.layout import parse_file_entities

from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import PROFILES
from bids_mcsr.dataset.entities import contrast_key
from bids_mcsr.dataset.files import atomic_write
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import foreground_mask
from bids_mcsr.image.io import Stack, load_stack
from bids_mcsr.image.metrics import cubic_baseline, mutual_information, psnr, resample_to_grid, ssim

PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # world axis normal to the plane
PLANE_LABEL = {"sagittal": "sag", "coronal": "cor", "axial": "ax"}
_ANAT = re.compile(r"^(?P<stem>sub-[^_]+(?:_ses-[^_]+)?(?:_[a-z]+-[a-zA-Z0-9]+)*)_(?P<suffix>[A-Za-z0-9]+)"
                   r"\.nii(?:\.gz)?$")


def anat_images(root: Path) -> list[Path]:
    """Every ``sub-*/[ses-*/]anat/*.nii[.gz]`` of a dataset, sorted."""
    return sorted(list(root.glob("sub-*/anat/*.nii*")) + list(root.glob("sub-*/ses-*/anat/*.nii*")))


def plane_voxel_axis(affine: np.ndarray, plane: str) -> int:
    """The voxel axis closest to the world normal of an anatomical plane."""
    return int(np.argmax(np.abs(affine[PLANE_AXIS[plane], :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def with_acq(name: str, label: str) -> str:
    """A BIDS file name with its ``acq-`` entity set to ``label`` (inserted after ses-)."""
    m = _ANAT.match(name)
    if not m:
        raise ValueError(f"{name}: not a BIDS anatomical file name")
    parts = [p for p in m["stem"].split("_") if not p.startswith("acq-")]
    insert = 2 if len(parts) > 1 and parts[1].startswith("ses-") else 1
    parts.insert(insert, f"acq-{label}")
    ext = ".nii.gz" if name.endswith(".gz") else ".nii"
    return "_".join(parts) + f"_{m['suffix']}{ext}"


def simulate_dataset(src: Path, dst: Path, planes: dict[str, str], thickness: float,
                     spacing: float | None, profile: str) -> list[Path]:
    """Simulate a thick-slice stack of every image whose suffix is in ``planes``."""
    written = []
    dst.mkdir(parents=True, exist_ok=True)
    for path in anat_images(src):
        m = _ANAT.match(path.name)
        if not m or m["suffix"] not in planes:
            continue
        stack = load_stack(path, m["suffix"])
        plane = planes[m["suffix"]]
        axis = plane_voxel_axis(stack.affine, plane)
        data, affine = simulate_stack(stack.data, stack.affine, axis, thickness, spacing, profile)
        label = f"{PLANE_LABEL[plane]}{thickness:g}mm".replace(".", "p")
        out = dst / path.parent.relative_to(src) / with_acq(path.name, label)
        out.parent.mkdir(parents=True, exist_ok=True)
        img = Stack(data, affine, m["suffix"]).to_nifti()
        tmp = out.with_name(".tmp-" + out.name)
        nib.save(img, str(tmp))
        tmp.replace(out)
        sidecar = {"SliceThickness": thickness,
                   "SimulatedFrom": f"bids::{path.relative_to(src).as_posix()}",
                   "SimulationSliceProfile": profile, "SimulationPlane": plane}
        atomic_write(Path(str(out).replace(".nii.gz", ".json").replace(".nii", ".json")),
                     json.dumps(sidecar, indent=2))
        written.append(out)
    description = {"Name": f"Thick-slice simulation of {src.name}", "BIDSVersion": "1.10.0",
                   "DatasetType": "raw",
                   "GeneratedBy": [{"Name": "bids-mcsr-eval simulate",
                                    "Description": f"{thickness:g} mm slices, {profile} profile, "
                                                   f"planes {planes}"}]}
    atomic_write(dst / "dataset_description.json", json.dumps(description, indent=2))
    return written


def _contrast(path: Path) -> str:
    """The contrast key of an image file (``T1w``, ``ce-gadolinium_T1w``)."""
    return contrast_key(parse_file_entities(path.name))


def score_dataset(truth_root: Path, sim_root: Path, derivatives: Path) -> pd.DataFrame:
    """One row per SR output: PSNR/SSIM of SR and of cubic interpolation vs the truth (the
    original and the simulated stacks of the same unit and contrast key)."""
    rows = []
    for sr_path in sorted(derivatives.glob("sub-*/**/anat/*_desc-sr_*.nii*")):
        contrast = _contrast(sr_path)
        unit = "_".join(p for p in sr_path.name.split("_") if p.startswith(("sub-", "ses-")))
        rel = sr_path.parent.relative_to(derivatives)
        truths, lrs = ([p for p in sorted((root / rel).glob(f"{unit}_*.nii*"))
                        if _ANAT.match(p.name) and _contrast(p) == contrast]
                       for root in (truth_root, sim_root))
        if not truths or not lrs:
            continue
        truth = load_stack(truths[0], contrast)
        lrs = [load_stack(p, contrast) for p in lrs]
        grid = Grid(truth.data.shape, truth.affine)
        sr = load_stack(sr_path, contrast)
        sr_on_truth = resample_to_grid(sr, grid, order=1)
        cubic = cubic_baseline(lrs, grid)
        mask = foreground_mask(truth.data)
        rows.append({"unit": unit, "contrast": contrast, "sr_file": sr_path.name,
                     "psnr_sr": psnr(sr_on_truth, truth.data, mask),
                     "psnr_cubic": psnr(cubic, truth.data, mask),
                     "ssim_sr": ssim(sr_on_truth, truth.data, mask),
                     "ssim_cubic": ssim(cubic, truth.data, mask),
                     "_sr": sr_on_truth, "_mask": mask})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    mi = {}
    for unit, group in table.groupby("unit"):
        pairs = combinations(zip(group["_sr"], group["_mask"]), 2)
        vals = [mutual_information(a[ma & mb], b[ma & mb]) for (a, ma), (b, mb) in pairs
                if a.shape == b.shape]
        mi[unit] = float(np.mean(vals)) if vals else float("nan")
    table["mi_sr"] = table["unit"].map(mi)
    return table.drop(columns=["_sr", "_mask"])


def _plane_spec(text: str) -> tuple[str, str]:
    contrast, _, plane = text.partition("=")
    if plane not in PLANE_AXIS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected CONTRAST=axial|coronal|sagittal")
    return contrast, plane


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bids-mcsr-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("simulate", help="write thick-slice stacks from isotropic scans")
    s.add_argument("bids_dir", type=Path, help="BIDS dataset of isotropic anatomical scans")
    s.add_argument("out_dir", type=Path, help="new BIDS dataset of simulated stacks")
    s.add_argument("--plane", type=_plane_spec, action="append", required=True,
                   metavar="CONTRAST=PLANE", help="e.g. T1w=axial T2w=coronal (repeat)")
    s.add_argument("--thickness", type=float, default=4.0, help="slice thickness, mm (default 4)")
    s.add_argument("--spacing", type=float, default=None,
                   help="distance between slice centres, mm (default: the thickness; larger = gap)")
    s.add_argument("--profile", choices=PROFILES, default="gaussian")
    c = sub.add_parser("score", help="score SR derivatives against the isotropic originals")
    c.add_argument("truth_dir", type=Path, help="the isotropic BIDS dataset")
    c.add_argument("sim_dir", type=Path, help="the simulated dataset the SR ran on")
    c.add_argument("derivatives_dir", type=Path, help="bids-mcsr output directory")
    c.add_argument("--tsv", type=Path, default=None, help="also write the table here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        written = simulate_dataset(args.bids_dir, args.out_dir, dict(args.plane), args.thickness,
                                   args.spacing, args.profile)
        print(f"wrote {len(written)} simulated stacks to {args.out_dir}")
        return 0 if written else 1
    table = score_dataset(args.truth_dir, args.sim_dir, args.derivatives_dir)
    if table.empty:
        print(f"no SR outputs with a matching truth found under {args.derivatives_dir}", file=sys.stderr)
        return 1
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.tsv:
        atomic_write(args.tsv, table.to_csv(sep="\t", index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
