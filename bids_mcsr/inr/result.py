"""The outcome of one subject's fit, and its files: volumes, mask and ``result.json``
(torch-free: reports and the group level read it back)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_mcsr.image.geometry import Grid

RESULT_KEYS = ("contrasts", "history", "stopped_epoch", "epochs_run", "final_mi", "runtime_s",
               "device", "settings", "acquisition", "validation", "timings")


@dataclass
class SRResult:
    contrasts: list[str]
    volumes: dict[str, np.ndarray]
    grid: Grid
    mask: np.ndarray
    history: dict
    stopped_epoch: int
    epochs_run: int
    final_mi: float | None
    runtime_s: float
    device: str
    settings: dict
    timings: dict = field(default_factory=dict)
    acquisition: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    network_volumes: dict[str, np.ndarray] = field(default_factory=dict)

    def to_nifti(self, contrast: str) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.volumes[contrast].astype(np.float32), self.grid.affine)
        img.set_qform(self.grid.affine, code=1)
        img.set_sform(self.grid.affine, code=1)
        return img

    def mask_nifti(self) -> nib.Nifti1Image:
        img = nib.Nifti1Image(self.mask.astype(np.uint8), self.grid.affine)
        img.set_qform(self.grid.affine, code=1)
        img.set_sform(self.grid.affine, code=1)
        return img


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def save_result(result: SRResult, out_dir: Path) -> dict:
    """Write ``<contrast>.nii.gz`` per contrast, ``mask.nii.gz`` and ``result.json``.

    Parameters
    ----------
    result : SRResult
        The fit: its volumes and mask on the grid, and the record of the run (history,
        settings, acquisition, held-out scores, timings).
    out_dir : Path
        An existing folder.

    Returns
    -------
    dict
        ``volumes`` (contrast -> path), ``mask`` and ``result`` (paths, as str).
    """
    volumes = {}
    for contrast in result.contrasts:
        volumes[contrast] = str(out_dir / f"{contrast}.nii.gz")
        nib.save(result.to_nifti(contrast), volumes[contrast])
    nib.save(result.mask_nifti(), str(out_dir / "mask.nii.gz"))
    meta = {key: getattr(result, key) for key in RESULT_KEYS}
    meta.update(spacing=[float(s) for s in result.grid.spacing], shape=list(result.grid.shape))
    (out_dir / "result.json").write_text(json.dumps(meta, indent=2, default=_jsonable))
    return {"volumes": volumes, "mask": str(out_dir / "mask.nii.gz"),
            "result": str(out_dir / "result.json")}


def load_result(files: dict) -> SRResult:
    """Rebuild an SRResult from the files :func:`save_result` wrote.

    Parameters
    ----------
    files : dict
        ``volumes`` (contrast -> NIfTI path), ``mask`` and ``result`` (``result.json``).

    Returns
    -------
    SRResult
        Volumes, mask and grid read back from disk, the rest from ``result.json``.
    """
    meta = json.loads(Path(files["result"]).read_text())
    mask_img = nib.load(files["mask"])
    grid = Grid(tuple(int(n) for n in mask_img.shape[:3]), np.asarray(mask_img.affine, float))
    volumes = {c: np.asarray(nib.load(files["volumes"][c]).dataobj, np.float32)
               for c in meta["contrasts"]}
    return SRResult(volumes=volumes, grid=grid, mask=np.asarray(mask_img.dataobj, np.uint8),
                    **{key: meta[key] for key in RESULT_KEYS if key in meta})
