"""SIGTERM and SIGINT set a flag; no exception is raised into the running code."""

import os
import signal
import time

from bids_mcsr.cli.signals import catch_signals


def test_a_signal_is_recorded_not_raised_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with catch_signals() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal changes nothing
        time.sleep(0.05)
        assert stop and stop.name == "SIGTERM" and stop.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) is before
