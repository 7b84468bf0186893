"""``bids-mcsr`` entry point: parse, validate, discover, run each subject, write derivatives.

Exit status: 0 success, 1 a processing failure (each named ``sub-XX: <step>: <message>``),
2 a usage error, 128 + the signal number (130 SIGINT, 143 SIGTERM) when interrupted.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from argparse import Namespace
from pathlib import Path

from bids_mcsr.dataset.discovery import Discovery, SubjectSession, discover, open_layout
from bids_mcsr.reports.citation import methods_text
from bids_mcsr.dataset.derivatives import (
    atomic_write,
    init_output_dataset,
    is_complete,
    publish,
    recover_publish,
    stage_unit,
    staging_dir,
    write_failure,
    write_json,
)
from bids_mcsr.errors import InputError
from bids_mcsr.image.geometry import check_overlap
from bids_mcsr.image.io import load_stack
from bids_mcsr.cli.parser import parse_args, stamp_work_dir
from bids_mcsr.dataset.validator import find_validator, subset_view, validate

log = logging.getLogger("bids_mcsr")
_EXCEPTION_LINE = re.compile(r"^\s*[\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)


class StepFailure(Exception):
    """A subject/session failed in a named step."""

    def __init__(self, step: str, message: str) -> None:
        self.step, self.message = step, message
        super().__init__(f"{step}: {message}")


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived; raised in the main thread so that every cleanup runs.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` (nipype's
    included) records it as a failed step.
    """

    def __init__(self, signum: int | None = None) -> None:
        self.signum = signum if signum is not None else (_RECEIVED[-1] if _RECEIVED else signal.SIGTERM)
        super().__init__(signal.Signals(self.signum).name)


# Signals received in this run: nipype turns any exception inside a node, ``Interrupted``
# included, into a node failure, so the workflow runner checks here.
_RECEIVED: list[int] = []


# Set once the main thread has caught ``Interrupted``; until then it is raised again.
_HANDLED = threading.Event()
RERAISE_EVERY_S = 1.0


def _on_signal(signum: int, _frame: object) -> None:
    """Raise ``Interrupted`` once; a second signal gets the default action (stop now).

    An exception raised while a ``__del__`` or weakref callback runs (sqlalchemy's, in
    pybids) is only printed by Python, so a watchdog thread raises it again in the main
    thread every second until :func:`_handled` is called.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    _RECEIVED.append(signum)
    _HANDLED.clear()
    threading.Thread(target=_reraise_until_handled, args=(threading.main_thread().ident,),
                     daemon=True).start()
    raise Interrupted(signum)


def _reraise_until_handled(main_ident: int) -> None:
    while not _HANDLED.wait(RERAISE_EVERY_S):
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main_ident),
                                                   ctypes.py_object(Interrupted))


def _handled() -> None:
    """The main thread caught ``Interrupted``: stop raising it again."""
    _HANDLED.set()


def _raise_if_signalled() -> None:
    """Raise ``Interrupted`` for a signal whose exception was swallowed (see ``_on_signal``)."""
    if _RECEIVED:
        _handled()
        raise Interrupted(_RECEIVED[-1])


def _install_signal_handlers() -> dict:
    """Route SIGTERM and SIGINT to ``_on_signal``; return the handlers replaced."""
    _RECEIVED.clear()
    return {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}


def _setup_logging(logs_dir: Path, run_id: str, verbose: int) -> Path:
    """Log to stderr and to ``logs/bids-mcsr_<run_id>.log``; quieten nipype."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = logging.DEBUG if verbose > 1 else logging.INFO
    logfile = logs_dir / f"bids-mcsr_{run_id}.log"
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    root = logging.getLogger("bids_mcsr")
    root.handlers.clear()
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(logfile)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    nipype_level = "INFO" if verbose else "WARNING"
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, nipype_level)
    nipype_logging.update_logging(nipype_config)
    return logfile


def _run_group(output_dir: Path) -> int:
    """Run the group level when ``bids_mcsr.reports.group`` exists."""
    if importlib.util.find_spec("bids_mcsr.reports.group") is None:
        print("bids-mcsr: the group level is not available in this version; "
              "run the participant level only", file=sys.stderr)
        return 1
    from bids_mcsr.reports.group import run_group

    return int(run_group(output_dir))


def _validate_input(opts: Namespace, subjects: list[str], run_id: str) -> bool:
    """Run the BIDS validator on the selected subjects; False when it reports errors."""
    if find_validator() is None:
        log.warning("bids-validator-deno is not installed; input validation skipped "
                    "(pip install bids-validator-deno)")
        return True
    view = subset_view(opts.bids_dir, subjects, opts.work_dir / f"validation_view_{run_id}")
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
                  "--skip-bids-validation", opts.bids_dir, len(report.errors))
        return False
    log.info("BIDS validation: no errors (%d warnings)", len(report.warnings))
    return True


def _sr_config(opts: Namespace) -> dict:
    return {"model": opts.model, "slice_profile": opts.slice_profile, "epochs": opts.epochs,
            "seed": opts.seed, "device": opts.device, "threads": opts.omp_nthreads,
            "mem_gb": opts.mem_gb, "output_spacing": opts.output_resolution,
            "consistency_iterations": opts.consistency_iterations,
            "learn_profile": opts.profile_fit, "refine_registration": opts.pose_fit,
            "holdout_fraction": opts.holdout_fraction}


def _run_options(opts: Namespace) -> dict:
    """Settings recorded in logs, sidecars and the methods text."""
    return {key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(opts).items()}


def _crash_reason(crash_dir: Path, fallback: Exception) -> StepFailure:
    """Turn the newest nipype crash file into ``StepFailure(step, last error line)``."""
    from bids_mcsr.workflows.participant import STEP_NAMES

    crashes = sorted(crash_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime)
    if not crashes:
        return StepFailure("workflow", str(fallback).splitlines()[0])
    text = crashes[-1].read_text()
    node = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                 if line.startswith("Node:")), "")
    step = STEP_NAMES.get(node.split(".")[-1], node or "workflow")
    # the innermost exception line, e.g. "bids_mcsr.errors.InputError: <file>: <problem>; <fix>"
    errors = [match.group(1) for match in _EXCEPTION_LINE.finditer(text)
              if "raised while executing Node" not in match.group(1)]
    message = errors[-1] if errors else text.strip().splitlines()[-1]
    return StepFailure(step, message)


def _run_workflow(unit: SubjectSession, opts: Namespace) -> dict:
    """Build and run one unit's workflow; return what the derivatives are made from."""
    from bids_mcsr.workflows.participant import init_participant_wf, workflow_name

    wf = init_participant_wf(unit, _sr_config(opts), bias_correction=opts.bias_correction,
                             registration=opts.registration, reference=opts.reference,
                             output_grid=opts.output_grid, omp_nthreads=opts.omp_nthreads,
                             mem_gb=opts.mem_gb)
    wf.base_dir = str(opts.work_dir / "nipype")
    crash_dir = opts.work_dir / "crash" / workflow_name(unit)
    shutil.rmtree(crash_dir, ignore_errors=True)
    wf.config["execution"] = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                              "stop_on_first_crash": True, "remove_unnecessary_outputs": False}
    runner = _plugin(opts)
    try:
        graph = wf.run(plugin=runner)
    except Interrupted:
        _handled()
        _stop_workers(runner)
        raise
    except Exception as err:  # nipype reports any node failure as RuntimeError
        if _RECEIVED:
            _handled()
            _stop_workers(runner)
            raise Interrupted(_RECEIVED[-1]) from err
        raise _crash_reason(crash_dir, err) from err
    _raise_if_signalled()
    # nipype drops IdentityInterface nodes from the executed graph: read the producers.
    nodes = {node.name: node.result.outputs for node in graph.nodes()}
    return {"volumes": nodes["superres"].volumes, "mask": nodes["superres"].mask,
            "result": nodes["superres"].result, "xfm_files": nodes["register"].xfm_file,
            "reference_index": nodes["select_reference"].index,
            "registered": nodes["register"].out_file, "step_times": _step_times(graph)}


def _plugin(opts: Namespace):
    """The nipype execution plugin: ``MultiProc`` with ``--nprocs`` workers, else ``Linear``."""
    from nipype.pipeline.plugins import LinearPlugin, MultiProcPlugin

    if opts.nprocs <= 1:
        return LinearPlugin(plugin_args={})
    args = {"n_procs": opts.nprocs, "raise_insufficient": False}
    if opts.mem_gb:
        args["memory_gb"] = opts.mem_gb
    return MultiProcPlugin(plugin_args=args)


def _stop_workers(runner) -> None:
    """Kill a ``MultiProc`` plugin's worker processes and drop its queued nodes.

    Without this an interrupted run waits for the running nodes (N4 takes a minute on a
    1 mm image) before it exits, past a scheduler's grace period. A killed node leaves no
    result file in the work directory, so a re-run redoes it.
    """
    pool = getattr(runner, "pool", None)
    if pool is None:
        return
    workers = list((getattr(pool, "_processes", None) or {}).values())
    # nipype's result callback raises on every killed node's future; the run is ending
    logging.getLogger("concurrent.futures").setLevel(logging.CRITICAL)
    pool.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)


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


def _single_contrast_note(unit: SubjectSession) -> str | None:
    """The warning of a unit with one contrast, or None."""
    if len(unit.contrasts) != 1:
        return None
    return (f"only one contrast ({unit.contrasts[0]}): single-contrast super-resolution, "
            "with no other contrast to borrow detail from")


def _report(staging: Path, unit: SubjectSession, outputs: dict, opts: Namespace) -> None:
    """Write the unit's HTML report, figures and metrics JSON into ``staging``.

    A failed report is logged and leaves the derivatives in place; the group level then
    lists the unit as incomplete.
    """
    from bids_mcsr.reports.subject import write_subject_report_from_files

    registered = outputs["registered"]
    extra = _run_options(opts)
    if _single_contrast_note(unit):
        extra["warning"] = _single_contrast_note(unit)
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
        log.error("%s: report: %s: %s", unit.name, type(err).__name__, err)


def _check_inputs(unit: SubjectSession, opts: Namespace) -> None:
    """Load every input, check that they overlap and that the outputs fit on disk and in
    ``--mem-gb``; raise ``StepFailure("input check", ...)`` naming the file and the fix."""
    from bids_mcsr.inr.model import model_spec  # torch: imported once a subject runs, not for --help
    from bids_mcsr.inr.memory import check_disk, check_memory, estimate
    from bids_mcsr.inr.sampling import profile_points_per_sample
    from bids_mcsr.inr.superres import SRConfig

    try:
        stacks = [load_stack(run.path, run.contrast, run.slice_thickness) for run in unit.runs]
        check_overlap(stacks)
        need = estimate(stacks, opts.output_resolution, opts.output_grid)
        check_disk(opts.output_dir, need)
        n_profile = profile_points_per_sample(stacks, opts.slice_profile, SRConfig.profile_samples)
        check_memory(opts.mem_gb, need, model_spec(opts.model), n_profile, unit.runs[0].path)
    except ValueError as err:  # InputError, or a grid that cannot be built
        raise StepFailure("input check", str(err)) from err


def _process(unit: SubjectSession, opts: Namespace) -> None:
    """Check, run one unit and publish its derivatives, or raise ``StepFailure``."""
    _check_inputs(unit, opts)
    outputs = _run_workflow(unit, opts)
    staging = staging_dir(opts.output_dir, unit.name)
    try:
        result = json.loads(Path(outputs["result"]).read_text())
        labels = unit.labels()
        xfms = outputs["xfm_files"]
        stage_unit(staging, unit, {"volumes": outputs["volumes"], "mask": outputs["mask"]},
                   result, dict(zip(labels, xfms if isinstance(xfms, list) else [xfms])),
                   labels[outputs["reference_index"]], _run_options(opts))
        _report(staging, unit, outputs, opts)
        _raise_if_signalled()
        publish(staging, opts.output_dir, unit)
    except Exception as err:
        raise StepFailure("derivatives", f"{type(err).__name__}: {err}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _discover(opts: Namespace) -> Discovery:
    """Discover the units; pybids' database goes to a private temporary directory so that
    parallel jobs sharing a work directory never open each other's."""
    with tempfile.TemporaryDirectory(prefix="bids_db-", dir=opts.work_dir) as database:
        layout = open_layout(opts.bids_dir, Path(database))
        return discover(layout, opts.participant_label, opts.session_label, opts.contrasts,
                        opts.filters)


def _record_failure(unit: SubjectSession, opts: Namespace, err: StepFailure) -> None:
    """Log a failed unit and write its QC record, unless complete earlier outputs exist:
    those are kept as they are (a forced re-run that fails does not mix old and new)."""
    log.error("%s: %s: %s", unit.name, err.step, err.message)
    if is_complete(opts.output_dir, unit):
        log.warning("%s: the outputs of an earlier run are kept unchanged", unit.name)
    else:
        write_failure(opts.output_dir, unit, str(err))


def _run_units(units: list[SubjectSession], opts: Namespace) -> int:
    """Process every unit (skipping complete ones unless ``--force``); the number failed."""
    failed = 0
    for done, unit in enumerate(units, start=1):
        _raise_if_signalled()
        repaired = recover_publish(opts.output_dir, unit)
        if repaired:
            log.warning("%s: %s", unit.name, repaired)
        if not opts.force and is_complete(opts.output_dir, unit):
            log.info("%s: outputs already complete; skipped (use --force to redo)", unit.name)
            continue
        log.info("%s: starting (%d runs: %s)", unit.name, len(unit.runs),
                 ", ".join(unit.labels()))
        if _single_contrast_note(unit):
            log.warning("%s: %s", unit.name, _single_contrast_note(unit))
        try:
            _process(unit, opts)
        except StepFailure as err:
            failed += 1
            _record_failure(unit, opts, err)
            if opts.stop_on_first_crash:
                break
            continue
        except Interrupted as stop:
            _handled()
            if is_complete(opts.output_dir, unit):  # published already, or kept from before
                log.error("%s: interrupted by %s; its published derivatives are complete",
                          unit.name, stop)
            else:
                log.error("%s: interrupted by %s; no derivative written; re-run with the same "
                          "-w/--work-dir to resume", unit.name, stop)
            raise
        log.info("%s: done (%d/%d subjects/sessions)", unit.name, done, len(units))
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run bids-mcsr.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 success, 1 a processing failure (or a subject skipped), 2 a usage error,
        128 + signal number when interrupted by SIGINT (130) or SIGTERM (143).
    """
    try:
        opts = parse_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    if opts.analysis_level == "group":
        return _run_group(opts.output_dir)
    previous = _install_signal_handlers()
    try:
        return _participant(opts)
    except Interrupted as stop:
        print(f"bids-mcsr: interrupted by {stop}; no derivative of the unfinished subject was "
              "written; re-run with the same -w/--work-dir to resume", file=sys.stderr)
        return 128 + stop.signum
    finally:
        _handled()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _participant(opts: Namespace) -> int:
    """The participant level: discover, validate, process every unit; the exit status."""
    run_id = time.strftime("%Y%m%d-%H%M%S") + "_" + uuid.uuid4().hex[:6]
    stamp_work_dir(opts.work_dir)
    init_output_dataset(opts.output_dir, opts.bids_dir)
    logs = opts.output_dir / "logs"
    _setup_logging(logs, run_id, opts.verbose)
    write_json(logs / f"config_{run_id}.json", _run_options(opts))
    atomic_write(logs / "CITATION.md", methods_text(_run_options(opts)))

    try:
        found = _discover(opts)
    except InputError as err:
        log.error("%s", err)
        return 2
    for message in found.notes:
        log.info("%s", message)
    for message in found.skipped:
        log.warning("skipped %s", message)
    if not found.units:
        log.error("no subject/session has a usable anatomical image; nothing to do")
        return 1
    subjects = sorted({unit.subject for unit in found.units})
    if not opts.skip_bids_validation and not _validate_input(opts, subjects, run_id):
        return 1
    failed = _run_units(found.units, opts)
    if failed:
        log.error("%d of %d subjects/sessions failed; see %s", failed, len(found.units), logs)
    return 1 if failed or found.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
