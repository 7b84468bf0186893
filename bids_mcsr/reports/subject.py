"""The subject report: figures, the metrics JSON and ``sub-<label>[_ses-<label>].html``.

Layout (``<unit>`` is ``sub-<l>[_ses-<l>]``)::

    <output_dir>/<unit>.html
    <output_dir>/sub-<l>/figures/<unit>[_ce-<l>...]_desc-<what>_<suffix>.png
    <output_dir>/sub-<l>/[ses-<l>/]qc/<unit>_desc-metrics.json   (next to <unit>_desc-qc.json)

Every file is written to a temporary name and moved into place; the HTML comes last, so
it never points at a figure that is not there yet.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from bids_mcsr.about import get_version
from bids_mcsr.dataset.discovery import bids_name, split_contrast
from bids_mcsr.dataset.derivatives import atomic_path, atomic_write, unit_dir, write_json
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.io import Stack, load_stack
from bids_mcsr.qc.records import (ALIGNMENT_MARGIN, ALIGNMENT_STEP_MM, GAIN_MARGIN_DB, NOISE_PERCENT_MAX,
                 POSE_ROTATION_MAX_DEG, POSE_SHIFT_MAX_MM, mi_rule_epoch, misaligned,
                 noise_problem, pose_problem, profile_problem, verdict_text)
from bids_mcsr.reports.figures import focus_point, plot_lr_vs_sr, plot_registration, plot_training
from bids_mcsr.reports.html import fmt, figure, page, paragraph, section, table
from bids_mcsr.qc.measures import grid_axis_along, subject_metrics
from bids_mcsr.acquisition.slice_profile import slice_normal
from bids_mcsr.inr.superres import SRResult

METRICS_SUFFIX = "_desc-metrics.json"


def unit_name(subject: str, session: str | None) -> str:
    """``sub-<l>[_ses-<l>]``."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


def metrics_path(output_dir: Path, subject: str, session: str | None) -> Path:
    """Where the machine-readable metrics of one subject/session go."""
    return (unit_dir(Path(output_dir), subject, session) / "qc"
            / f"{unit_name(subject, session)}{METRICS_SUFFIX}")


def peak_memory_gb() -> float:
    """Peak resident memory (GB) of this process and its finished children (Linux: KiB)."""
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20


def flatten(settings: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested settings as ``(dotted.key, value)`` rows; lists and leaves kept as text."""
    rows: list[tuple[str, object]] = []
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, name + ".")
        else:
            rows.append((name, value if isinstance(value, (int, float, str)) or value is None
                         else json.dumps(value)))
    return rows


def _png(fig_dir: Path, unit: str, desc: str, contrast: str | None = None) -> Path:
    """``<unit>[_<contrast entities>]_desc-<desc>_<suffix>.png``; suffix ``curves`` without
    a contrast."""
    entities, suffix = split_contrast(contrast) if contrast else ({}, "curves")
    return fig_dir / f"{unit}_{bids_name({**entities, 'desc': desc}, suffix, '.png')}"


def _atomic_figure(draw, path: Path, *args) -> Path:
    with atomic_path(path) as tmp:
        draw(*args, tmp)
    return path


def write_figures(output_dir: Path, unit: str, subject: str, stacks: Sequence[Stack],
                  reference_index: int, result: SRResult) -> dict[str, list[tuple[Path, str]]]:
    """Draw every figure of one subject; returns ``{section: [(png, caption), ...]}``."""
    fig_dir = Path(output_dir) / f"sub-{subject}" / "figures"
    point = focus_point(result.mask)
    reference = stacks[reference_index]
    out: dict[str, list[tuple[Path, str]]] = {"sr": [], "registration": [], "training": []}
    for contrast in result.contrasts:
        own = [s for s in stacks if s.contrast == contrast]
        axis = grid_axis_along(result.grid, slice_normal(own[0]))
        path = _atomic_figure(plot_lr_vs_sr, _png(fig_dir, unit, "srcompare", contrast), own,
                              result.volumes[contrast], result.grid, result.mask, point, axis)
        out["sr"].append((path, f"{contrast}: acquired stack(s), nearest-neighbour on the SR "
                                f"grid, against the SR output; all planes through voxel {point}"))
    for i, stack in enumerate(stacks):
        if i == reference_index:
            continue
        path = _atomic_figure(plot_registration, _png(fig_dir, unit, f"coreg{i:02d}",
                                                      stack.contrast),
                              reference, stack, result.grid, point)
        out["registration"].append((path, f"{stack.name} after registration, with the edges "
                                          f"of the reference {reference.name} in red"))
    path = _atomic_figure(plot_training, _png(fig_dir, unit, "training"),
                          result.history, result.stopped_epoch,
                          mi_rule_epoch(result.history, result.settings))
    out["training"].append((path, "training loss per contrast, error on the held-out slices "
                                  "per contrast (the green line marks its lowest epoch) and MI "
                                  "between the predicted contrasts (the dotted line marks "
                                  "where the MI plateau rule stops); the dashed line marks "
                                  "where training stopped"))
    return out


def build_record(subject: str, session: str | None, stacks: Sequence[Stack],
                 reference_index: int, result: SRResult, step_times: dict[str, float],
                 extra: dict) -> dict:
    """The machine-readable metrics of one fit (the content of ``*_desc-metrics.json``)."""
    metrics = subject_metrics(stacks, reference_index, result)
    peak = extra.get("peak_memory_gb")
    return {"subject": subject, "session": session, "status": "ok",
            "contrasts": list(result.contrasts), "reference": stacks[reference_index].name,
            **metrics,
            "final_mi": result.final_mi, "epochs_run": result.epochs_run,
            "stopped_epoch": result.stopped_epoch, "runtime_s": result.runtime_s,
            "device": result.device, "settings": result.settings,
            "output_grid": {"shape": [int(n) for n in result.grid.shape],
                            "spacing_mm": [float(s) for s in result.grid.spacing],
                            "orientation": "".join(nib.aff2axcodes(result.grid.affine))},
            "step_times_s": {k: float(v) for k, v in step_times.items()},
            "peak_memory_gb": float(peak) if peak is not None else peak_memory_gb(),
            "version": get_version(), "python": platform.python_version(),
            "extra": {k: v for k, v in extra.items() if k != "peak_memory_gb"}}


def verdict_section(record: dict) -> str:
    """The report's lead: per contrast the held-out verdict, then the registration check,
    the noise level and the slice profile of every stack (red only for a real problem)."""
    parts = []
    for contrast, per in record["per_contrast"].items():
        judged = per.get("verdict")
        css = {"better": "ok", None: None}.get(judged, "flag")
        rounds = per.get("consistency_rounds")
        extra = ("" if rounds is None else
                 f"; {rounds} back-projection round(s), noise-weighted")
        parts.append(paragraph(f"{contrast}: {verdict_text(per)}{extra}", css))
    stacks = record.get("stacks", [])
    moved = [s for s in stacks if pose_problem(s["pose_shift_mm"], s["pose_rotation_deg"])]
    off = [s for s in stacks if misaligned(s.get("alignment"))]
    for s in moved:
        parts.append(paragraph(
            f"registration looks wrong for {s['name']}: the fit moved it by "
            f"{fmt(s['pose_shift_mm'], 3)} mm / {fmt(s['pose_rotation_deg'], 3)}° on top of "
            f"registration (limit {POSE_SHIFT_MAX_MM:g} mm / {POSE_ROTATION_MAX_DEG:g}°)",
            "flag"))
    for s in off:
        parts.append(paragraph(f"registration looks wrong for {s['name']}: "
                               + alignment_text(s["alignment"]), "flag"))
    if not stacks:
        parts.append(paragraph("registration check: no acquisition fit recorded"))
    elif not moved and not off:
        largest = max(stacks, key=lambda s: s["pose_shift_mm"] or 0.0)
        checked = any(s.get("alignment") for s in stacks)
        parts.append(paragraph(
            "registration check: "
            + (f"every stack matches the reference best where it is (not moved by "
               f"±{ALIGNMENT_STEP_MM:g} mm), and " if checked else "")
            + f"the fit's pose corrections on top of registration are within "
            f"{POSE_SHIFT_MAX_MM:g} mm and {POSE_ROTATION_MAX_DEG:g}° (largest "
            f"{fmt(largest['pose_shift_mm'], 2)} mm, {largest['name']})", "ok"))
    if stacks:
        noisy = any(noise_problem(s["noise_percent"]) for s in stacks)
        parts.append(paragraph(
            "estimated noise (% of each stack's intensity range): "
            + ", ".join(f"{s['name']} {fmt(s['noise_percent'], 2)} %" for s in stacks)
            + (f"; above {NOISE_PERCENT_MAX:g} % is flagged" if noisy else ""),
            "flag" if noisy else None))
    for s in stacks:
        if profile_problem(s["fwhm_ratio"]):
            parts.append(paragraph(
                f"slice profile of {s['name']}: fitted FWHM {fmt(s['fitted_fwhm_mm'], 3)} mm "
                f"vs header SliceThickness {fmt(s['header_thickness_mm'], 3)} mm: check the "
                "header",
                "flag"))
    return "".join(parts)


def alignment_text(check: dict | None) -> str:
    """One stack's alignment check in words (see ``report_metrics.alignment_check``)."""
    if not check:
        return "reference"
    if check.get("mi_in_place") is None:
        return "too little overlap to check"
    axis = int(np.argmax(np.abs(check["offset_mm"])))
    sign = "+" if check["offset_mm"][axis] > 0 else "-"
    where = (f"moved by {sign}{ALIGNMENT_STEP_MM:g} mm along world {'xyz'[axis]}")
    if misaligned(check):
        return (f"the reference matches it better {where} (MI {check['mi_in_place']:.3f} -> "
                f"{check['mi_moved']:.3f} nats)")
    return f"best in place (MI {check['mi_in_place']:.3f} nats; {check['mi_moved']:.3f} {where})"


def acquisition_table(record: dict) -> str:
    """One row per stack: header thickness, spacing, fitted profile and pose, noise and the
    held-out scores."""
    rows = [(s["name"], s["contrast"], s["header_thickness_mm"], s["spacing_mm"],
             s["fitted_fwhm_mm"], s["pose_shift_mm"], s["pose_rotation_deg"],
             s["noise_percent"], ", ".join(str(k) for k in s["heldout_slices"]) or "none",
             s["heldout_sr_psnr"], s["heldout_cubic_psnr"], s["heldout_gain_db"],
             alignment_text(s.get("alignment")))
            for s in record.get("stacks", [])]
    return (table(["stack", "contrast", "header SliceThickness (mm)", "slice spacing (mm)",
                   "fitted FWHM (mm)", "pose shift (mm)", "pose rotation (°)", "noise (%)",
                   "held-out slices", "held-out SR PSNR (dB)", "held-out cubic PSNR (dB)",
                   "gain (dB)", "alignment check"], rows)
            + paragraph("Held-out slices were withheld from training and back-projection; "
                        "the SR output re-simulates them through the stack's fitted "
                        "acquisition model, and cubic B-spline interpolation predicts them "
                        "from the stack's other slices. Fitted FWHM: the slice-profile width "
                        "the fit learned (n/a for isotropic stacks). Pose: the rigid "
                        "correction the fit applied on top of registration (the reference "
                        "stays fixed). Noise: the stack's noise standard deviation as a "
                        "percentage of its 0.5-99.5 percentile intensity range. Alignment "
                        "check: mutual information between the stack's foreground voxels and "
                        "the reference sampled at their place, and at their place moved by "
                        f"±{ALIGNMENT_STEP_MM:g} mm along each world axis; a moved copy "
                        f"better by more than {100 * ALIGNMENT_MARGIN:g} % flags the "
                        "registration."))


def _training_text(record: dict) -> str:
    rule, best = record.get("mi_rule_epoch"), record.get("best_epoch")
    kept = (f"the held-out error was lowest at epoch {best}" if best
            else "no held-out slices")
    if record["mi_converged"] is None:
        return f"{record['epochs_run']} epoch(s) run; {kept}; single contrast: no MI"
    stop = (f"the MI plateau rule stops at epoch {rule}" if rule else
            f"the MI plateau rule would not have stopped within the {record['epochs_run']} "
            "epoch(s) run")
    return (f"{record['epochs_run']} epoch(s) run; {kept}. MI (information): "
            f"{fmt(record['final_mi_training'])} nats at the last epoch, changed by "
            f"{fmt(record['mi_change_last_epochs'])} over the last "
            f"{record['mi_change_epochs']} epochs; {stop}.")


def render_subject(unit: str, record: dict, figures: dict[str, list[tuple[Path, str]]],
                   output_dir: Path) -> str:
    """The subject's HTML page from its record and figures (image paths made relative)."""
    def figs(key: str) -> str:
        return "".join(figure(p.relative_to(output_dir).as_posix(), c) for p, c in figures[key])

    summary = [("version", record["version"]), ("device", record["device"]),
               ("output grid", f"{fmt(record['output_grid']['shape'])} voxels of "
                               f"{fmt(record['output_grid']['spacing_mm'])} mm, "
                               f"{record['output_grid']['orientation']}"),
               ("epochs run / stopped at / lowest held-out error",
                f"{record['epochs_run']} / {record['stopped_epoch']} / "
                f"{fmt(record.get('best_epoch') or None)}"),
               ("SR runtime (s)", record["runtime_s"]),
               ("peak memory (GB)", record["peak_memory_gb"])]
    summary += [(f"step time: {k} (s)", v) for k, v in record["step_times_s"].items()]
    inputs = [(("* " if i["file"] == record["reference"] else "") + i["file"], i["contrast"],
               i["shape"], i["voxel_size_mm"], i["orientation"], i["slice_thickness_mm"])
              for i in record["inputs"]]
    quality = [(c, m.get("heldout_sr_psnr"), m.get("heldout_cubic_psnr"),
                m.get("heldout_gain_db"), m.get("verdict") or "n/a",
                m.get("consistency_rounds"), m["sharpness_ratio"], m["hf_per_axis"])
               for c, m in record["per_contrast"].items()]
    mi_rows = [(pair, value) for pair, value in record["mi_between_sr"].items()]
    dc = [(i["file"], i["contrast"], i["data_consistency"]["psnr_db"],
           i["data_consistency"]["ssim"]) for i in record["inputs"]]
    body = "".join([
        section("Verdict", verdict_section(record)),
        section("Summary", table(["item", "value"], summary)),
        section("Acquisition and held-out slices", acquisition_table(record)),
        section("Inputs", table(["file (* = reference)", "contrast", "shape", "voxel size (mm)",
                                 "orientation", "slice thickness used (mm)"], inputs)),
        section("Quality without ground truth",
                table(["contrast", "held-out SR PSNR (dB)", "held-out cubic PSNR (dB)",
                       "gain (dB)", "verdict", "back-projection rounds",
                       "sharpness ratio", "high-frequency energy per grid axis (1/mm²)"],
                      quality)
                + paragraph(f"Verdict: better when SR beats cubic interpolation of the "
                            f"held-out slices by more than {GAIN_MARGIN_DB:g} dB, worse when "
                            f"it loses more than {GAIN_MARGIN_DB:g} dB, no better in between. "
                            "Back-projection rounds: how many rounds the held-out slices "
                            "said pay. Sharpness ratio: high-frequency energy (mean absolute "
                            "second difference) along the reference's slice axis over the "
                            "in-plane mean, inside the mask; about 1 for an isotropic result, "
                            "well below 1 when thick-slice blur remains.")
                + table(["SR contrasts", "MI on the SR volumes (nats)"], mi_rows)
                + paragraph(_training_text(record))),
        section("Acquired vs super-resolved", figs("sr")),
        section("Registration", figs("registration") or
                paragraph("one stack only: nothing was registered")),
        section("Training", figs("training")),
        section("Data consistency after back-projection (not a quality measure)",
                table(["file", "contrast", "DC PSNR (dB)", "DC SSIM"], dc)
                + paragraph("Each acquired stack re-simulated from the SR volume with its own "
                            "geometry and slice profile, against its acquired voxels. "
                            "Back-projection makes the output reproduce the stacks, so this "
                            "is near-perfect by construction and says nothing about the "
                            "detail between the slices: use the held-out scores above.")),
        section("Settings", table(["setting", "value"],
                                  flatten(record["settings"]) + flatten(record["extra"]))),
    ])
    return page(f"bids-mcsr report: {unit}", body)


def write_subject_report(output_dir: Path, subject: str, session: str | None,
                         stacks: Sequence[Stack], reference_index: int, result: SRResult,
                         step_times: dict[str, float], extra: dict | None = None) -> Path:
    """Write one subject/session's figures, metrics JSON and HTML report.

    Parameters
    ----------
    output_dir : Path
        Output dataset root.
    subject, session : str
        Labels without prefixes (session may be None).
    stacks : sequence of Stack
        The registered stacks the fit used.
    reference_index : int
        Index of the reference stack in ``stacks``.
    result : SRResult
        The fit (see :func:`load_sr_result` to rebuild it from the step's files).
    step_times : dict
        Step name -> wall seconds, shown in the summary.
    extra : dict, optional
        Run settings worth recording (e.g. CLI options); a ``peak_memory_gb`` key replaces
        the peak measured in this process.

    Returns
    -------
    Path
        The HTML report, ``<output_dir>/<unit>.html``.
    """
    output_dir = Path(output_dir)
    unit = unit_name(subject, session)
    figures = write_figures(output_dir, unit, subject, stacks, reference_index, result)
    record = build_record(subject, session, stacks, reference_index, result, step_times,
                          dict(extra or {}))
    record["report"] = f"{unit}.html"
    write_json(metrics_path(output_dir, subject, session), record)
    return atomic_write(output_dir / f"{unit}.html",
                        render_subject(unit, record, figures, output_dir))


def load_sr_result(sr_outputs: dict) -> SRResult:
    """Rebuild an SRResult from the files of ``bids_mcsr.steps.superresolve``.

    Parameters
    ----------
    sr_outputs : dict
        ``volumes`` (contrast -> NIfTI path), ``mask`` and ``result`` (``result.json``).

    Returns
    -------
    SRResult
        Volumes, mask and grid read back from disk, the rest from ``result.json``.
    """
    meta = json.loads(Path(sr_outputs["result"]).read_text())
    mask_img = nib.load(sr_outputs["mask"])
    grid = Grid(tuple(int(n) for n in mask_img.shape[:3]), np.asarray(mask_img.affine, float))
    volumes = {c: np.asarray(nib.load(sr_outputs["volumes"][c]).dataobj, np.float32)
               for c in meta["contrasts"]}
    return SRResult(contrasts=meta["contrasts"], volumes=volumes, grid=grid,
                    mask=np.asarray(mask_img.dataobj, np.uint8), history=meta["history"],
                    stopped_epoch=meta["stopped_epoch"], epochs_run=meta["epochs_run"],
                    final_mi=meta["final_mi"], runtime_s=meta["runtime_s"],
                    device=meta["device"], settings=meta["settings"],
                    acquisition=meta.get("acquisition", []), validation=meta.get("validation", {}))


def write_subject_report_from_files(output_dir: str, subject: str, session: str | None,
                                    stack_files: list[str], contrasts: list[str],
                                    thicknesses: list[float | None], reference_index: int,
                                    sr_outputs: dict, step_times: dict[str, float],
                                    extra: dict | None = None,
                                    source_files: list[str] | None = None) -> str:
    """:func:`write_subject_report` on files, for a workflow node.

    Parameters
    ----------
    output_dir : str
        Output dataset root.
    subject, session : str
        Labels without prefixes (session may be None).
    stack_files, contrasts, thicknesses : list
        The registered stacks given to ``steps.superresolve`` (same order).
    reference_index : int
        Index of the reference in ``stack_files``.
    sr_outputs : dict
        The return value of ``steps.superresolve``.
    step_times : dict
        Step name -> wall seconds.
    extra : dict, optional
        See :func:`write_subject_report`.
    source_files : list of str, optional
        The original BIDS files of the stacks, named in the report instead of the
        registered copies.

    Returns
    -------
    str
        Path of the HTML report.
    """
    stacks = [load_stack(f, c, t) for f, c, t in zip(stack_files, contrasts, thicknesses)]
    for stack, source in zip(stacks, source_files or []):
        stack.path = str(source)
    return str(write_subject_report(Path(output_dir), subject, session, stacks,
                                    reference_index, load_sr_result(sr_outputs), step_times,
                                    extra))
