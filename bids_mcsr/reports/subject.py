"""The subject report: figures, the unit's QC record with the report's measures, and
``sub-<label>[_ses-<label>].html``.

Layout (``<unit>`` is ``sub-<l>[_ses-<l>]``)::

    <output_dir>/<unit>.html
    <output_dir>/sub-<l>/figures/<unit>[_ce-<l>...]_desc-<what>_<suffix>.png
    <output_dir>/sub-<l>/[ses-<l>/]qc/<unit>_desc-qc.json

Every file is written to a temporary name and moved into place; the HTML comes last, so
it never points at a figure that is not there yet.
"""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib

from bids_mcsr.about import NAME, get_version
from bids_mcsr.acquisition.slice_profile import slice_normal
from bids_mcsr.dataset.entities import unit_name
from bids_mcsr.dataset.files import atomic_path, atomic_write, write_json
from bids_mcsr.dataset.naming import figure_name, qc_path
from bids_mcsr.image.io import Stack, load_stack
from bids_mcsr.inr.result import SRResult, load_result
from bids_mcsr.qc.measures import grid_axis_along, result_dict, subject_metrics
from bids_mcsr.qc.records import mi_rule_epoch, qc_record
from bids_mcsr.reports.figures import focus_point, plot_lr_vs_sr, plot_registration, plot_training
from bids_mcsr.reports.subject_page import render_subject

TRAINING_CAPTION = ("training loss per contrast, error on the held-out slices per contrast "
                    "(the green line marks its lowest epoch) and MI between the predicted "
                    "contrasts (the dotted line marks where the MI plateau rule stops); the "
                    "dashed line marks where training stopped")


def peak_memory_gb() -> float:
    """Peak resident memory (GB) of this process and its finished children (Linux: KiB)."""
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return kib * (1 if sys.platform != "darwin" else 1 / 1024) / 2**20


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
        path = _atomic_figure(plot_lr_vs_sr, fig_dir / figure_name(unit, "srcompare", contrast),
                              own, result.volumes[contrast], result.grid, result.mask, point,
                              axis)
        out["sr"].append((path, f"{contrast}: acquired stack(s), nearest-neighbour on the SR "
                                f"grid, against the SR output; all planes through voxel {point}"))
    for i, stack in enumerate(stacks):
        if i == reference_index:
            continue
        path = _atomic_figure(plot_registration,
                              fig_dir / figure_name(unit, f"coreg{i:02d}", stack.contrast),
                              reference, stack, result.grid, point)
        out["registration"].append((path, f"{stack.name} after registration, with the edges "
                                          f"of the reference {reference.name} in red"))
    path = _atomic_figure(plot_training, fig_dir / figure_name(unit, "training"),
                          result.history, result.stopped_epoch,
                          mi_rule_epoch(result.history, result.settings))
    out["training"].append((path, TRAINING_CAPTION))
    return out


def build_record(subject: str, session: str | None, stacks: Sequence[Stack],
                 reference_index: int, result: SRResult, step_times: dict[str, float],
                 extra: dict) -> dict:
    """The unit's QC record with every measure of the report (see
    :func:`bids_mcsr.qc.records.qc_record`); ``provenance`` holds the software, settings,
    step times, peak memory and the run options in ``extra``."""
    peak = extra.get("peak_memory_gb")
    measures = {
        **subject_metrics(stacks, reference_index, result, int(extra.get("omp_nthreads") or 1)),
        "reference": stacks[reference_index].name,
        "output_grid": {"shape": [int(n) for n in result.grid.shape],
                        "spacing_mm": [float(s) for s in result.grid.spacing],
                        "orientation": "".join(nib.aff2axcodes(result.grid.affine))},
        "provenance": {"software": NAME, "version": get_version(),
                       "python": platform.python_version(), "settings": result.settings,
                       "step_times_s": {k: float(v) for k, v in step_times.items()},
                       "peak_memory_gb": float(peak) if peak is not None else peak_memory_gb(),
                       "options": {k: v for k, v in extra.items() if k != "peak_memory_gb"}}}
    return qc_record(subject, session, list(result.contrasts), result_dict(result),
                     stack_names=[s.name for s in stacks], measures=measures)


def write_subject_report(output_dir: Path, subject: str, session: str | None,
                         stacks: Sequence[Stack], reference_index: int, result: SRResult,
                         step_times: dict[str, float], extra: dict | None = None) -> Path:
    """Write one subject/session's figures, QC record and HTML report.

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
        The fit (see :func:`bids_mcsr.inr.result.load_result` to rebuild it from files).
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
    write_json(qc_path(output_dir, subject, session), record)
    return atomic_write(output_dir / f"{unit}.html",
                        render_subject(unit, record, figures, output_dir))


def write_subject_report_from_files(output_dir: str, subject: str, session: str | None,
                                    stack_files: list[str], contrasts: list[str],
                                    thicknesses: list[float | None], reference_index: int,
                                    sr_outputs: dict, step_times: dict[str, float],
                                    extra: dict | None = None,
                                    source_files: list[str] | None = None) -> str:
    """:func:`write_subject_report` on files, for a workflow node.

    The stacks are loaded from ``stack_files`` (the registered copies given to
    ``steps.superresolve``, with their ``contrasts`` and ``thicknesses`` in the same order)
    and named after ``source_files``, the original BIDS files, when given; the fit is read
    back from ``sr_outputs`` (what ``steps.superresolve`` returned) with
    :func:`bids_mcsr.inr.result.load_result`. ``output_dir``, ``subject``, ``session``,
    ``reference_index``, ``step_times`` and ``extra`` are passed on unchanged.

    Returns
    -------
    str
        Path of the HTML report.
    """
    stacks = [load_stack(f, c, t) for f, c, t in zip(stack_files, contrasts, thicknesses)]
    for stack, source in zip(stacks, source_files or []):
        stack.path = str(source)
    return str(write_subject_report(Path(output_dir), subject, session, stacks,
                                    reference_index, load_result(sr_outputs), step_times,
                                    extra))
