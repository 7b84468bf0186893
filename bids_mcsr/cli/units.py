"""A unit's child process, seen from the parent: start it, wait for it, stop it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from multiprocessing.connection import wait

from bids_mcsr.cli.execution import UnitJob, unit_main
from bids_mcsr.cli.failures import StepFailure, process_death

STOP_GRACE_S = 3.0  # after SIGTERM, how long a unit's processes get before SIGKILL


class UnitProcess:
    """One unit's workflow running in a fresh (spawned) Python process.

    Parameters
    ----------
    job : UnitJob
        What the process runs.
    """

    def __init__(self, job: UnitJob) -> None:
        context = multiprocessing.get_context("spawn")  # no state inherited from the parent
        self.job = job
        self.started = time.monotonic()
        self._outcome, child_end = context.Pipe(duplex=False)
        self.process = context.Process(target=unit_main, args=(job, child_end),
                                       name=job.unit.name, daemon=False)
        self.process.start()
        child_end.close()

    @property
    def sentinel(self) -> int:
        """A handle that becomes ready when the process ends."""
        return self.process.sentinel

    def failure(self) -> StepFailure | None:
        """Once the process has ended: None on success, else why it failed."""
        self.process.join()
        try:
            outcome = self._outcome.recv()
        except EOFError:  # it ended without sending one
            outcome = "none"
        self._outcome.close()
        if outcome is None and self.process.exitcode == 0:
            return None
        if isinstance(outcome, tuple):
            return StepFailure(*outcome)
        return process_death(self.process.exitcode)

    def stop(self) -> None:
        """End the process and every process it started: SIGTERM to its process group,
        SIGKILL to what is left after :data:`STOP_GRACE_S` seconds."""
        self._signal(signal.SIGTERM)
        self.process.join(STOP_GRACE_S)
        self._signal(signal.SIGKILL)
        self.process.join()
        self._outcome.close()

    def _signal(self, signum: int) -> None:
        """Send ``signum`` to the process group the child leads; to the child alone while
        it has not made its group yet (it has started nothing then)."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            if self.process.exitcode is None:  # not reaped: the pid is still the child's
                os.kill(self.process.pid, signum)


def wait_any(running: list[UnitProcess], timeout: float) -> list[UnitProcess]:
    """The processes of ``running`` that have ended, after waiting at most ``timeout`` s."""
    ready = set(wait([proc.sentinel for proc in running], timeout))
    return [proc for proc in running if proc.sentinel in ready]
