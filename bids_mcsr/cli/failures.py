"""A unit's failure as one line, ``sub-XX: <step>: <message>``, from whatever produced it."""

from __future__ import annotations

import logging
import re
import signal
from pathlib import Path

from bids_mcsr.dataset.derivatives import write_failure
from bids_mcsr.dataset.publish import is_complete
from bids_mcsr.dataset.units import SubjectSession

log = logging.getLogger("bids_mcsr")
_EXCEPTION_LINE = re.compile(r"^\s*[\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)


class StepFailure(Exception):
    """A subject/session failed in a named step.

    Parameters
    ----------
    step : str
        The step, e.g. ``input check``, ``registration``, ``derivatives``.
    message : str
        What went wrong, ideally naming the file and the fix.
    """

    def __init__(self, step: str, message: str) -> None:
        self.step, self.message = step, message
        super().__init__(f"{step}: {message}")


def crash_reason(crash_dir: Path, fallback: Exception) -> StepFailure:
    """Turn the newest nipype crash file into ``StepFailure(step, last error line)``.

    Parameters
    ----------
    crash_dir : Path
        The workflow's ``crashdump_dir``.
    fallback : Exception
        What ``Workflow.run`` raised, used when no crash file was written.

    Returns
    -------
    StepFailure
        The failed node's step name and its innermost error message.
    """
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


def process_death(exit_code: int | None) -> StepFailure:
    """The failure of a unit's process that ended without reporting an outcome.

    Parameters
    ----------
    exit_code : int or None
        ``multiprocessing.Process.exitcode``: negative for the signal that killed it.

    Returns
    -------
    StepFailure
        ``workflow: the unit's process was killed by SIGKILL ...`` or ``... exited with N``.
    """
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name
        hint = "; out of memory? give a larger --mem-gb or fewer --nprocs" if name == "SIGKILL" else ""
        return StepFailure("workflow", f"the unit's process was killed by {name}{hint}")
    return StepFailure("workflow", f"the unit's process exited with status {exit_code} "
                       "without a result; see the lines above in the log")


def record_failure(output_dir: Path, unit: SubjectSession, err: StepFailure) -> None:
    """Log a failed unit and write its QC record, unless complete earlier outputs exist:
    those are kept as they are (a forced re-run that fails does not mix old and new).

    Parameters
    ----------
    output_dir : Path
        Output dataset root.
    unit : SubjectSession
        The failed unit.
    err : StepFailure
        Its failure.
    """
    log.error("%s: %s: %s", unit.name, err.step, err.message)
    if is_complete(output_dir, unit):
        log.warning("%s: the outputs of an earlier run are kept unchanged", unit.name)
    else:
        write_failure(output_dir, unit, str(err))
