"""SIGTERM and SIGINT as a flag: the run polls it, nothing is raised into running code.

The units of work run in child processes (:mod:`bids_mcsr.cli.units`); the parent process
only waits for them, so it can notice a signal within a fraction of a second by polling,
then stop the children and clean up. No exception is injected anywhere.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first SIGTERM or SIGINT received while :func:`catch_signals` is active.

    Attributes
    ----------
    signum : int or None
        The signal number, None while none arrived.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        """``SIGTERM`` or ``SIGINT`` (empty while no signal arrived)."""
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal number, the shell's status of a process the signal ended."""
        return 128 + int(self.signum or 0)

    def record(self, signum: int, _frame: object = None) -> None:
        """Signal handler: remember the first signal (later ones add nothing)."""
        if self.signum is None:
            self.signum = signum


@contextmanager
def catch_signals() -> Iterator[StopRequest]:
    """Record SIGTERM and SIGINT in a :class:`StopRequest` for the duration of the block.

    Yields
    ------
    StopRequest
        False until a signal arrives; the handlers replaced are put back on exit.
    """
    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop.record) for sig in HANDLED}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def default_signal_actions() -> None:
    """Let SIGTERM and SIGINT end this process at once (the default action): a unit's
    child process has nothing to clean up that its parent does not."""
    for sig in HANDLED:
        signal.signal(sig, signal.SIG_DFL)
