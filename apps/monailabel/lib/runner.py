"""Run the BIDS-App on one subject/session, its log into the server's, its failure in a line."""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
# the BIDS-App logs a failed subject as "HH:MM:SS ERROR sub-XX: <step>: <message>"
_FAILURE = re.compile(r"\bERROR (sub-\S+: .+)$")


class BidsAppError(Exception):
    """The BIDS-App failed; the message is its own one-line account of why."""


def failure_line(output: list[str], unit: str) -> str:
    """The one line that says why a run failed.

    Parameters
    ----------
    output : list of str
        The run's log and error lines.
    unit : str
        ``sub-<label>[_ses-<label>]``.

    Returns
    -------
    str
        The subject's ``sub-XX: <step>: <message>`` line, else the last line (a usage
        error such as ``bids-mcsr: error: ...``).
    """
    for line in output:
        match = _FAILURE.search(line)
        if match and match.group(1).startswith(unit + ":"):
            return match.group(1)
    return next((line for line in reversed(output) if line.strip()), "bids-mcsr failed")


def run_participant(command: list[str], unit: str, cwd: Path) -> None:
    """Run a bids-mcsr participant-level command, logging each line of its output.

    It runs in ``cwd``, not in the server's folder: MONAI Label puts an empty entry (the
    current folder) on ``PYTHONPATH``, which would let a source tree there shadow the
    installed bids_mcsr.

    Parameters
    ----------
    command : list of str
        The command (see :meth:`lib.settings.Settings.participant_command`).
    unit : str
        ``sub-<label>[_ses-<label>]``, the subject/session it runs.
    cwd : Path
        The folder it runs in (the work directory).

    Raises
    ------
    BidsAppError
        When bids-mcsr exits with an error, with its one-line message.
    """
    log.info("running: %s", " ".join(command))
    output = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1, cwd=cwd) as process:
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            log.info("bids-mcsr: %s", output[-1])
    if process.returncode != 0:
        raise BidsAppError(failure_line(output, unit))
