"""One unit's derivatives: the super-resolved volumes and their sidecars, the mask, the
transforms, the training curves and the QC record, staged for :mod:`bids_mcsr.dataset.publish`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bids_mcsr.dataset.files import atomic_write, write_json
from bids_mcsr.dataset.naming import anat_dir, bids_uri, qc_dir, qc_path, res_label, sr_name
from bids_mcsr.dataset.units import SubjectSession
from bids_mcsr.qc.records import curves_tsv, qc_record


def resolution_text(spacing: tuple[float, float, float], grid_source: str | None) -> str:
    """The sidecar ``Resolution`` value that explains the ``res-`` label."""
    sizes = "x".join(f"{s:g}" for s in spacing)
    where = f"on the grid of {grid_source}" if grid_source else "in the subject's scanner space"
    return f"{sizes} mm voxels {where}"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.split(".")[0] + ".json")


def _fit_metadata(result: dict, options: dict, reference_source: str) -> dict:
    """The sidecar entries that describe the fit of a super-resolved volume."""
    return {
        "SkullStripped": False,
        "Model": options["model"],
        "ModelSettings": result["settings"],
        "Seed": options["seed"],
        "EpochsRun": result["epochs_run"],
        "StoppedEpoch": result["stopped_epoch"],
        "FinalMI": result["final_mi"],
        "RuntimeSeconds": round(result["runtime_s"], 2),
        "Device": result["device"],
        "BiasCorrection": options["bias_correction"],
        "Registration": options["registration"],
        "ReferenceImage": reference_source,
    }


def acquired_as(result: dict, contrast: str) -> str | None:
    """How ``contrast``'s stacks were acquired, from the fit's per-stack ``acquisition``
    records: ``"3D"``, ``"thick 2D"`` or ``"3D and thick 2D"``; None when unrecorded."""
    kinds = {a.get("isotropic") for a in result.get("acquisition") or []
             if a.get("contrast") == contrast}
    if not kinds or None in kinds:
        return None
    return {frozenset({True}): "3D", frozenset({False}): "thick 2D"}.get(frozenset(kinds),
                                                                         "3D and thick 2D")


def sr_description(contrast: str, acquired: str | None) -> str:
    """The sidecar ``Description`` of a contrast's output, saying whether it comes from a 3D
    acquisition (then the fit is resampled onto the grid, not super-resolved)."""
    if acquired == "3D":
        return (f"{contrast} acquired 3D (isotropic): fitted jointly with all listed stacks by a "
                "multi-contrast implicit neural representation (its voxels as point samples) "
                "and resampled onto the output grid, not super-resolved from thick slices")
    return (f"{contrast} super-resolved jointly from all listed stacks with a multi-contrast "
            "implicit neural representation")


def _stage_images(out: Path, unit: SubjectSession, sr: dict, result: dict,
                  reference: str, options: dict) -> None:
    """Copy the volumes and the mask into ``out`` and write their sidecars."""
    spacing = tuple(result["spacing"])
    res = res_label(spacing)
    sources = [bids_uri(run.relpath) for run in unit.runs]
    common = {"Sources": sources,
              "Resolution": resolution_text(spacing, options.get("output_grid"))}
    fit = _fit_metadata(result, options, sources[unit.labels().index(reference)])
    for contrast, volume in sr["volumes"].items():
        dest = out / sr_name(unit, contrast, res)
        shutil.copyfile(volume, dest)
        acquired = acquired_as(result, contrast)
        write_json(_sidecar(dest), {"Description": sr_description(contrast, acquired),
                                    **({"Acquired": acquired} if acquired else {}),
                                    **common, **fit})
    mask = out / f"{unit.name}_res-{res}_desc-foreground_mask.nii.gz"
    shutil.copyfile(sr["mask"], mask)
    write_json(_sidecar(mask), {"Description": "Foreground of the input stacks on the "
                                               "output grid", **common})


def stage_unit(staging: Path, unit: SubjectSession, sr: dict, result: dict,
               transforms: dict[str, str], reference: str, options: dict) -> None:
    """Write one subject/session's derivatives into ``staging`` (mirroring the output tree).

    Parameters
    ----------
    staging : Path
        Directory from :func:`bids_mcsr.dataset.publish.staging_dir`.
    unit : SubjectSession
        The subject/session and its runs.
    sr : dict
        ``volumes`` (contrast key -> NIfTI path) and ``mask`` from the super-resolution step.
    result : dict
        Content of the step's ``result.json``.
    transforms : dict
        Run label -> ITK transform file, for every run (the reference's is the identity).
    reference : str
        Label of the reference run.
    options : dict
        Run settings recorded in sidecars: ``model``, ``bias_correction``, ``registration``,
        ``seed``, ``output_grid`` (path or None).
    """
    out = anat_dir(staging, unit.subject, unit.session)
    out.mkdir(parents=True, exist_ok=True)
    _stage_images(out, unit, sr, result, reference, options)
    for label, path in transforms.items():
        if label != reference:
            shutil.copyfile(path, out / f"{unit.name}_from-{label}_to-{reference}"
                                        "_mode-image_xfm.txt")
    atomic_write(qc_dir(staging, unit.subject, unit.session)
                 / f"{unit.name}_desc-training_curves.tsv", curves_tsv(result["history"]))
    write_json(qc_path(staging, unit.subject, unit.session),
               qc_record(unit.subject, unit.session, unit.contrasts, result,
                         stack_names=[Path(run.path).name for run in unit.runs]))


def write_failure(output_dir: Path, unit: SubjectSession, error: str) -> Path:
    """Write the QC record of a failed ``unit`` (the only file it gets) under the output
    dataset root ``output_dir``, with ``error`` (``<step>: <message>``) as the reason;
    return its path."""
    return write_json(qc_path(output_dir, unit.subject, unit.session),
                      qc_record(unit.subject, unit.session, unit.contrasts, error=error))
