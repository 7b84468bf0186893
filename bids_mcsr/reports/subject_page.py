"""The subject report's HTML: the verdict lead, the tables and the figure sections, from the
unit's QC record (see :mod:`bids_mcsr.qc.records`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bids_mcsr.image.alignment import ALIGNMENT_MARGIN, misaligned
from bids_mcsr.qc.flags import (
    ALIGNMENT_STEP_MM,
    GAIN_MARGIN_DB,
    NOISE_PERCENT_MAX,
    POSE_ROTATION_MAX_DEG,
    POSE_SHIFT_MAX_MM,
    noise_problem,
    pose_problem,
    profile_problem,
    verdict_text,
)
from bids_mcsr.reports.html import figure, fmt, page, paragraph, section, table


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
    """One stack's alignment check in words (see
    :func:`bids_mcsr.qc.measures.alignment_check`)."""
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


def acquisition_kind(isotropic: bool | None) -> str:
    """How a stack was acquired, as the acquisition table says it."""
    return {True: "3D", False: "thick 2D"}.get(isotropic, "n/a")


def acquisition_table(record: dict) -> str:
    """One row per stack: 3D or thick 2D, header thickness, spacing, fitted profile and pose,
    noise and the held-out scores."""
    rows = [(s["name"], s["contrast"], acquisition_kind(s.get("isotropic")),
             s["header_thickness_mm"], s["spacing_mm"],
             s["fitted_fwhm_mm"], s["pose_shift_mm"], s["pose_rotation_deg"],
             s["noise_percent"], ", ".join(str(k) for k in s["heldout_slices"]) or "none",
             s["heldout_sr_psnr"], s["heldout_cubic_psnr"], s["heldout_gain_db"],
             alignment_text(s.get("alignment")))
            for s in record.get("stacks", [])]
    return (table(["stack", "contrast", "acquired", "header SliceThickness (mm)",
                   "slice spacing (mm)", "fitted FWHM (mm)", "pose shift (mm)",
                   "pose rotation (°)", "noise (%)", "held-out slices", "held-out SR PSNR (dB)",
                   "held-out cubic PSNR (dB)", "gain (dB)", "alignment check"], rows)
            + paragraph("Acquired: thick 2D stacks are modelled as slabs of the fitted "
                        "width; a 3D (isotropic) stack as point samples, the anatomical guide "
                        "of the thick ones. "
                        "Held-out slices were withheld from the first half of the training "
                        "(then trained on) and from back-projection; the SR output of the "
                        "network as it was then re-simulates them through the stack's fitted "
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



def _summary_rows(record: dict) -> list[tuple[str, object]]:
    """The summary table: version, device, grid, epochs, runtime, memory and step times."""
    provenance, grid = record["provenance"], record["output_grid"]
    rows = [("version", provenance["version"]), ("device", record["device"]),
            ("output grid", f"{fmt(grid['shape'])} voxels of {fmt(grid['spacing_mm'])} mm, "
                            f"{grid['orientation']}"),
            ("epochs run / stopped at / lowest held-out error",
             f"{record['epochs_run']} / {record['stopped_epoch']} / "
             f"{fmt(record.get('best_epoch') or None)}"),
            ("SR runtime (s)", record["runtime_s"]),
            ("peak memory (GB)", provenance["peak_memory_gb"])]
    return rows + [(f"step time: {k} (s)", v) for k, v in provenance["step_times_s"].items()]


def _inputs_table(record: dict) -> str:
    """One row per input stack: file (the reference starred), contrast and geometry."""
    rows = [(("* " if i["file"] == record["reference"] else "") + i["file"], i["contrast"],
             i["shape"], i["voxel_size_mm"], i["orientation"], i["slice_thickness_mm"])
            for i in record["inputs"]]
    return table(["file (* = reference)", "contrast", "shape", "voxel size (mm)",
                  "orientation", "slice thickness used (mm)"], rows)


def _quality_section(record: dict) -> str:
    """Per contrast the held-out scores, verdict and sharpness; the MI between SR contrasts
    and the training in words."""
    rows = [(c, m.get("heldout_sr_psnr"), m.get("heldout_cubic_psnr"),
             m.get("heldout_gain_db"), m.get("verdict") or "n/a",
             m.get("consistency_rounds"), m["sharpness_ratio"], m["hf_per_axis"])
            for c, m in record["per_contrast"].items()]
    return (table(["contrast", "held-out SR PSNR (dB)", "held-out cubic PSNR (dB)",
                   "gain (dB)", "verdict", "back-projection rounds",
                   "sharpness ratio", "high-frequency energy per grid axis (1/mm²)"], rows)
            + paragraph(f"Verdict: better when SR beats cubic interpolation of the "
                        f"held-out slices by more than {GAIN_MARGIN_DB:g} dB, worse when "
                        f"it loses more than {GAIN_MARGIN_DB:g} dB, no better in between. "
                        "Back-projection rounds: how many rounds the held-out slices "
                        "said pay. Sharpness ratio: high-frequency energy (mean absolute "
                        "second difference) along the reference's slice axis over the "
                        "in-plane mean, inside the mask; about 1 for an isotropic result, "
                        "well below 1 when thick-slice blur remains.")
            + table(["SR contrasts", "MI on the SR volumes (nats)"],
                    list(record["mi_between_sr"].items()))
            + paragraph(_training_text(record)))


def _consistency_section(record: dict) -> str:
    """Data consistency per input stack, labelled as no quality measure."""
    rows = [(i["file"], i["contrast"], i["data_consistency"]["psnr_db"],
             i["data_consistency"]["ssim"]) for i in record["inputs"]]
    return (table(["file", "contrast", "DC PSNR (dB)", "DC SSIM"], rows)
            + paragraph("Each acquired stack re-simulated from the SR volume with its own "
                        "geometry and slice profile, against its acquired voxels. "
                        "Back-projection makes the output reproduce the stacks, so this "
                        "is near-perfect by construction and says nothing about the "
                        "detail between the slices: use the held-out scores above."))


def render_subject(unit: str, record: dict, figures: dict[str, list[tuple[Path, str]]],
                   output_dir: Path) -> str:
    """The subject's HTML page from its QC record and figures (image paths made relative).

    Parameters
    ----------
    unit : str
        ``sub-<l>[_ses-<l>]``, the page title.
    record : dict
        The unit's QC record with the report's measures.
    figures : dict
        Section (``sr``, ``registration``, ``training``) -> ``(png, caption)`` pairs.
    output_dir : Path
        Where the page goes; image paths are made relative to it.

    Returns
    -------
    str
        The complete HTML document.
    """
    def figs(key: str) -> str:
        return "".join(figure(p.relative_to(output_dir).as_posix(), c) for p, c in figures[key])

    provenance = record["provenance"]
    body = "".join([
        section("Verdict", verdict_section(record)),
        section("Summary", table(["item", "value"], _summary_rows(record))),
        section("Acquisition and held-out slices", acquisition_table(record)),
        section("Inputs", _inputs_table(record)),
        section("Quality without ground truth", _quality_section(record)),
        section("Acquired vs super-resolved", figs("sr")),
        section("Registration", figs("registration") or
                paragraph("one stack only: nothing was registered")),
        section("Training", figs("training")),
        section("Data consistency after back-projection (not a quality measure)",
                _consistency_section(record)),
        section("Settings", table(["setting", "value"], flatten(provenance["settings"])
                                  + flatten(provenance["options"]))),
    ])
    return page(f"bids-mcsr report: {unit}", body)
