"""One unit of work in its own process: run its nipype workflow, stage its derivatives.

:func:`unit_main` is the entry point of the child process that
:class:`bids_mcsr.cli.units.UnitProcess` starts. It makes the child the leader of a new
process group (so that the parent can stop it and every nipype worker it started at once),
leaves SIGTERM and SIGINT at their default action (the child just ends: publishing is the
parent's job), runs the workflow, writes the unit's derivatives and report into the staging
directory, and sends its outcome to the parent: None, or the failed step and its message.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from bids_mcsr.cli.config import RunConfig
from bids_mcsr.cli.failures import StepFailure, crash_reason
from bids_mcsr.cli.inputs import single_contrast_note
from bids_mcsr.cli.logs import setup_logging
from bids_mcsr.cli.resources import Grant
from bids_mcsr.cli.signals import default_signal_actions
from bids_mcsr.dataset.derivatives import stage_unit
from bids_mcsr.dataset.units import SubjectSession

log = logging.getLogger("bids_mcsr")
PR_SET_PDEATHSIG = 1  # prctl(2) option


@dataclass(frozen=True)
class UnitJob:
    """Everything a unit's process needs (sent to it pickled).

    Attributes
    ----------
    unit : SubjectSession
        The subject/session.
    config : RunConfig
        The run.
    grant : Grant
        Its CPUs, threads and memory.
    staging : Path
        Where its derivatives are written before the parent publishes them.
    logfile : Path
        The run's log file.
    """

    unit: SubjectSession
    config: RunConfig
    grant: Grant
    staging: Path
    logfile: Path


def unit_main(job: UnitJob, outcome: Connection) -> None:
    """Entry point of a unit's child process.

    Parameters
    ----------
    job : UnitJob
        What to run.
    outcome : multiprocessing.connection.Connection
        Receives None on success, else ``(step, message)``.
    """
    os.setpgid(0, 0)
    _die_with_parent()
    default_signal_actions()
    setup_logging(job.logfile, job.config.verbose, unit=job.unit.name)
    try:
        stage_derivatives(job, run_workflow(job))
    except StepFailure as err:
        outcome.send((err.step, err.message))
    except Exception as err:  # a bug: the traceback goes to the log, the other units go on
        log.exception("unexpected error; please report it with this log")
        outcome.send(("unexpected error", f"{type(err).__name__}: {err}"))
    else:
        outcome.send(None)
    finally:
        outcome.close()


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this process if its parent dies first (Linux): a run killed
    outright leaves no unit running on."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_workflow(job: UnitJob) -> dict:
    """Build and run the unit's workflow; return what its derivatives are made from.

    Raises
    ------
    StepFailure
        Naming the failed node's step and its error, read from nipype's crash file.
    """
    from bids_mcsr.workflows.participant import init_participant_wf, workflow_name

    config, grant, unit = job.config, job.grant, job.unit
    wf = init_participant_wf(unit, config.sr_config(grant.threads, grant.mem_gb),
                             bias_correction=config.bias_correction,
                             registration=config.registration, reference=config.reference,
                             output_grid=config.output_grid, omp_nthreads=grant.threads,
                             mem_gb=grant.mem_gb)
    wf.base_dir = str(config.work_dir / "nipype")
    crash_dir = config.work_dir / "crash" / workflow_name(unit)
    shutil.rmtree(crash_dir, ignore_errors=True)
    wf.config["execution"] = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                              "stop_on_first_crash": True, "remove_unnecessary_outputs": False}
    try:
        graph = wf.run(plugin=_plugin(grant))
    except Exception as err:  # nipype reports any node failure as RuntimeError
        raise crash_reason(crash_dir, err) from err
    # nipype drops IdentityInterface nodes from the executed graph: read the producers.
    nodes = {node.name: node.result.outputs for node in graph.nodes()}
    return {"volumes": nodes["superres"].volumes, "mask": nodes["superres"].mask,
            "result": nodes["superres"].result, "xfm_files": nodes["register"].xfm_file,
            "reference_index": nodes["select_reference"].index,
            "registered": nodes["register"].out_file, "step_times": _step_times(graph)}


def _plugin(grant: Grant):
    """nipype's ``MultiProc`` plugin on the unit's CPUs, or ``Linear`` when it has one."""
    from nipype.pipeline.plugins import LinearPlugin, MultiProcPlugin

    if grant.cpus <= 1:
        return LinearPlugin(plugin_args={})
    # forked workers inherit the unit's logging set-up and imports (this spawned process
    # would otherwise spawn them too, each starting from scratch)
    args = {"n_procs": grant.cpus, "raise_insufficient": False, "mp_context": "fork"}
    if grant.mem_gb:
        args["memory_gb"] = grant.mem_gb
    return MultiProcPlugin(plugin_args=args)


def _step_times(graph) -> dict[str, float]:
    """Wall seconds of each executed step (a MapNode's items summed), by step name."""
    from bids_mcsr.workflows.participant import STEP_NAMES

    times = {}
    for node in graph.nodes():
        runtime = node.result.runtime
        runs = runtime if isinstance(runtime, list) else [runtime]
        seconds = sum(float(getattr(run, "duration", 0) or 0) for run in runs)
        times[STEP_NAMES.get(node.name, node.name)] = round(seconds, 2)
    return times


def stage_derivatives(job: UnitJob, outputs: dict) -> None:
    """Write the unit's derivatives and report into its staging directory.

    Raises
    ------
    StepFailure
        ``derivatives`` when a file cannot be written.
    """
    unit, options = job.unit, unit_options(job)
    try:
        result = json.loads(Path(outputs["result"]).read_text())
        labels = unit.labels()
        xfms = outputs["xfm_files"]
        stage_unit(job.staging, unit, {"volumes": outputs["volumes"], "mask": outputs["mask"]},
                   result, dict(zip(labels, xfms if isinstance(xfms, list) else [xfms])),
                   labels[outputs["reference_index"]], options)
    except Exception as err:
        raise StepFailure("derivatives", f"{type(err).__name__}: {err}") from err
    _report(job.staging, unit, outputs, options)


def unit_options(job: UnitJob) -> dict:
    """The run's options as recorded for this unit, with the threads it was given."""
    return {**job.config.record(), "omp_nthreads": job.grant.threads}


def _report(staging: Path, unit: SubjectSession, outputs: dict, options: dict) -> None:
    """Write the unit's HTML report, figures and metrics JSON into ``staging``.

    A failed report is logged and leaves the derivatives in place; the group level then
    lists the unit as incomplete.
    """
    from bids_mcsr.reports.subject import write_subject_report_from_files

    registered = outputs["registered"]
    extra = dict(options)
    if single_contrast_note(unit):
        extra["warning"] = single_contrast_note(unit)
    try:
        write_subject_report_from_files(
            str(staging), unit.subject, unit.session,
            registered if isinstance(registered, list) else [registered],
            [run.contrast for run in unit.runs], [run.slice_thickness for run in unit.runs],
            outputs["reference_index"],
            {key: outputs[key] for key in ("volumes", "mask", "result")},
            outputs["step_times"], extra,
            source_files=[run.path for run in unit.runs])
    except Exception as err:  # the report must not cost the subject its derivatives
        log.error("report: %s: %s", type(err).__name__, err)
