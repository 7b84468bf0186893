"""The participant level: units run side by side in child processes, each published whole.

The parent process discovers and checks the units, starts each in its own process as soon
as the run's CPUs and memory allow (:mod:`bids_mcsr.cli.resources`), publishes the staged
derivatives of every unit that succeeded, and records the failures. A SIGTERM or SIGINT
only sets a flag (:mod:`bids_mcsr.cli.signals`): the parent then stops the running units'
process groups, removes what they staged and returns 128 + the signal number.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections import deque
from pathlib import Path

from bids_mcsr.cli.config import RunConfig
from bids_mcsr.cli.execution import UnitJob
from bids_mcsr.cli.failures import StepFailure, record_failure
from bids_mcsr.cli.inputs import check_unit, discover_units, single_contrast_note, validate_input
from bids_mcsr.cli.logs import setup_logging
from bids_mcsr.cli.parser import stamp_work_dir
from bids_mcsr.cli.resources import GB, Resources, run_resources
from bids_mcsr.cli.signals import StopRequest
from bids_mcsr.cli.units import UnitProcess, wait_any
from bids_mcsr.dataset.description import init_output_dataset
from bids_mcsr.dataset.files import atomic_write
from bids_mcsr.dataset.publish import is_complete, publish, recover_publish, staging_dir
from bids_mcsr.dataset.units import SubjectSession
from bids_mcsr.errors import InputError
from bids_mcsr.reports.citation import methods_text

log = logging.getLogger("bids_mcsr")
POLL_S = 0.2  # how often the parent looks at the stop flag while units run


class UnitScheduler:
    """Run every unit (skipping complete ones unless ``--force``) as resources allow.

    Parameters
    ----------
    units : list of SubjectSession
        The discovered units, in order.
    config : RunConfig
        The run.
    resources : Resources
        The CPUs and memory to share.
    logfile : Path
        The run's log file, shared with the units' processes.
    stop : StopRequest
        Set by SIGTERM/SIGINT.
    """

    def __init__(self, units: list[SubjectSession], config: RunConfig, resources: Resources,
                 logfile: Path, stop: StopRequest) -> None:
        self.config, self.resources, self.logfile, self.stop = config, resources, logfile, stop
        self.waiting = deque(units)
        self.total = len(units)
        self.running: list[UnitProcess] = []
        self.finished = self.failed = 0
        self.checked: tuple[SubjectSession, int] | None = None  # the next unit and its peak

    def run(self) -> int:
        """Process the units; return how many failed (stop when ``stop`` is set)."""
        while (self.running or self._may_start() and (self.waiting or self.checked)) \
                and not self.stop:
            self._start_what_fits()
            for proc in wait_any(self.running, POLL_S) if self.running else []:
                self._finish(proc)
        if self.stop:
            self._interrupt()
        return self.failed

    def _start_what_fits(self) -> None:
        """Start waiting units while CPUs and memory allow (none after a failure with
        ``--stop-on-first-crash``)."""
        while self._may_start() and not self.stop:
            self.checked = self.checked or self._next_checked()
            if self.checked is None:
                return
            unit, peak = self.checked
            grant = self.resources.grant(peak, len(self.waiting) + 1)
            if grant is None:
                return
            self.checked = None
            staging = staging_dir(self.config.output_dir, unit.name)
            self.running.append(UnitProcess(UnitJob(unit, self.config, grant, staging,
                                                    self.logfile)))
            log.info("%s: started (%d runs: %s) with %d CPU(s), %d thread(s) per step, "
                     "%.1f GB; %d running, %d waiting", unit.name, len(unit.runs),
                     ", ".join(unit.labels()), grant.cpus, grant.threads,
                     grant.reserved_bytes / GB, len(self.running), len(self.waiting))

    def _may_start(self) -> bool:
        """False once a unit failed under ``--stop-on-first-crash``."""
        return not (self.failed and self.config.stop_on_first_crash)

    def _next_checked(self) -> tuple[SubjectSession, int] | None:
        """The next unit to run and its memory peak; complete units are skipped and units
        that fail their input check recorded on the way."""
        while self.waiting and not self.stop:
            unit = self.waiting.popleft()
            repaired = recover_publish(self.config.output_dir, unit)
            if repaired:
                log.warning("%s: %s", unit.name, repaired)
            if not self.config.force and is_complete(self.config.output_dir, unit):
                log.info("%s: outputs already complete; skipped (use --force to redo)",
                         unit.name)
                self.finished += 1
                continue
            if single_contrast_note(unit):
                log.warning("%s: %s", unit.name, single_contrast_note(unit))
            try:
                return unit, check_unit(unit, self.config)
            except StepFailure as err:
                self._failed(unit, err)
                if not self._may_start():
                    return None
        return None

    def _finish(self, proc: UnitProcess) -> None:
        """Publish a unit that succeeded, record one that failed; give its share back."""
        self.running.remove(proc)
        self.resources.release(proc.job.grant)
        unit, staging = proc.job.unit, proc.job.staging
        try:
            failure = proc.failure()
            if failure is None and not self.stop:
                publish(staging, self.config.output_dir, unit)
        except OSError as err:
            failure = StepFailure("derivatives", f"{type(err).__name__}: {err}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self.stop:  # ended while the run stops (a unit started in the run's process group
            # gets the group's signal too): reported as interrupted with the others
            self.running.append(proc)
            return
        if failure is not None:
            self._failed(unit, failure)
            return
        self.finished += 1
        log.info("%s: done in %.0f s (%d/%d subjects/sessions; %d running, %d waiting)",
                 unit.name, time.monotonic() - proc.started, self.finished, self.total,
                 len(self.running), len(self.waiting))

    def _failed(self, unit: SubjectSession, err: StepFailure) -> None:
        self.failed += 1
        self.finished += 1
        record_failure(self.config.output_dir, unit, err)

    def _interrupt(self) -> None:
        """Stop every running unit and remove what it staged."""
        for proc in self.running:
            proc.stop()
            shutil.rmtree(proc.job.staging, ignore_errors=True)
            log.error("%s: interrupted by %s; no derivative written; re-run with the same "
                      "-w/--work-dir to resume", proc.job.unit.name, self.stop.name)


def run_participant(config: RunConfig, stop: StopRequest) -> int:
    """The participant level: set up the outputs, discover, validate, run every unit.

    Parameters
    ----------
    config : RunConfig
        The run.
    stop : StopRequest
        Set by SIGTERM/SIGINT; checked between the phases and while units run.

    Returns
    -------
    int
        0 success, 1 a unit failed or was skipped, 2 the selection matches nothing,
        128 + the signal number when interrupted.
    """
    run_id = time.strftime("%Y%m%d-%H%M%S") + "_" + uuid.uuid4().hex[:6]
    stamp_work_dir(config.work_dir)
    init_output_dataset(config.output_dir, config.bids_dir)
    logs = config.output_dir / "logs"
    logfile = logs / f"bids-mcsr_{run_id}.log"
    setup_logging(logfile, config.verbose)
    config.dump(logs / f"config_{run_id}.json")
    atomic_write(logs / "CITATION.md", methods_text(config.record()))
    try:
        found = discover_units(config)
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
    if not config.skip_bids_validation and not validate_input(config, subjects, run_id):
        return 1
    if stop:
        return stop.exit_status
    resources = run_resources(config.nprocs, config.omp_nthreads, config.mem_gb, config.device)
    failed = UnitScheduler(found.units, config, resources, logfile, stop).run()
    if stop:
        return stop.exit_status
    if failed:
        log.error("%d of %d subjects/sessions failed; see %s", failed, len(found.units), logs)
    return 1 if failed or found.skipped else 0
