"""The input side of the participant level: discover the units, validate the dataset, and
check each unit's files and needs before it is started."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from bids_mcsr.cli.config import RunConfig
from bids_mcsr.cli.failures import StepFailure
from bids_mcsr.cli.resources import fits_on_gpu
from bids_mcsr.dataset.discovery import Discovery, discover, open_layout
from bids_mcsr.dataset.units import SubjectSession
from bids_mcsr.dataset.validator import find_validator, subset_view, validate
from bids_mcsr.image.geometry import check_overlap
from bids_mcsr.image.io import load_stack

log = logging.getLogger("bids_mcsr")


def discover_units(config: RunConfig) -> Discovery:
    """Discover the units; pybids' database goes to a private temporary directory so that
    parallel jobs sharing a work directory never open each other's.

    Raises
    ------
    InputError
        When a requested subject or session does not exist.
    """
    with tempfile.TemporaryDirectory(prefix="bids_db-", dir=config.work_dir) as database:
        layout = open_layout(config.bids_dir, Path(database))
        return discover(layout, _listed(config.participant_label),
                        _listed(config.session_label), _listed(config.contrasts),
                        config.filters)


def _listed(labels: tuple[str, ...] | None) -> list[str] | None:
    return list(labels) if labels else None


def validate_input(config: RunConfig, subjects: list[str], run_id: str) -> bool:
    """Run the BIDS validator on the selected subjects; False when it reports errors.

    Parameters
    ----------
    config : RunConfig
        The run (``bids_dir``, ``work_dir``).
    subjects : list of str
        Subject labels to validate.
    run_id : str
        Names the temporary view of the dataset in the work directory.

    Returns
    -------
    bool
        True when valid, or when the validator is not installed (a warning is logged).
    """
    if find_validator() is None:
        log.warning("bids-validator-deno is not installed; input validation skipped "
                    "(pip install bids-validator-deno)")
        return True
    view = subset_view(config.bids_dir, subjects, config.work_dir / f"validation_view_{run_id}")
    try:
        report = validate(view)
    finally:
        shutil.rmtree(view, ignore_errors=True)
    for line in report.warnings[:20]:
        log.debug("validator warning: %s", line)
    if report.errors:
        for line in report.errors[:20]:
            log.error("validator: %s", line)
        log.error("bids_dir %s is not valid BIDS (%d errors); fix them or rerun with "
                  "--skip-bids-validation", config.bids_dir, len(report.errors))
        return False
    log.info("BIDS validation: no errors (%d warnings)", len(report.warnings))
    return True


def check_unit(unit: SubjectSession, config: RunConfig) -> int:
    """Load every input of ``unit``, check that they overlap and that the outputs fit on
    disk and in ``--mem-gb``.

    Parameters
    ----------
    unit : SubjectSession
        The unit about to start.
    config : RunConfig
        The run.

    Returns
    -------
    int
        Peak bytes of the unit's default memory plan (the model's own batch size; as many
        threads as a step may get, ``--omp-nthreads`` or else ``--nprocs``; on the GPU when
        ``--device`` puts the network there), what it needs beside other units.

    Raises
    ------
    StepFailure
        ``input check`` with the file and the fix.
    """
    from bids_mcsr.inr.config import SRConfig
    from bids_mcsr.inr.memory import check_disk, check_memory, estimate, plan_memory
    from bids_mcsr.inr.presets import model_spec
    from bids_mcsr.inr.sampling import profile_points_per_sample  # imports torch

    try:
        stacks = [load_stack(run.path, run.contrast, run.slice_thickness) for run in unit.runs]
        check_overlap(stacks)
        need = estimate(stacks, config.output_resolution, config.output_grid)
        check_disk(config.output_dir, need)
        spec = model_spec(config.model)
        n_profile = profile_points_per_sample(stacks, config.slice_profile,
                                              SRConfig.profile_samples)
        workers, cuda = config.omp_nthreads or config.nprocs, fits_on_gpu(config.device)
        check_memory(config.mem_gb, need, spec, n_profile, unit.runs[0].path, workers, cuda)
    except ValueError as err:  # InputError, or a grid that cannot be built
        raise StepFailure("input check", str(err)) from err
    return plan_memory(need, spec, n_profile, workers=workers, cuda=cuda).peak_bytes


def single_contrast_note(unit: SubjectSession) -> str | None:
    """The warning of a unit with one contrast, or None."""
    if len(unit.contrasts) != 1:
        return None
    return (f"only one contrast ({unit.contrasts[0]}): single-contrast super-resolution, "
            "with no other contrast to borrow detail from")
