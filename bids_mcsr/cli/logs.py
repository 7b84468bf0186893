"""Logging of a run: stderr and ``logs/bids-mcsr_<run id>.log``, shared by its processes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

LOGGER = "bids_mcsr"
TIME_FORMAT = "%H:%M:%S"


def setup_logging(logfile: Path, verbose: int, unit: str | None = None) -> None:
    """Log ``bids_mcsr`` records to stderr and (appending) to ``logfile``; quieten nipype.

    Parameters
    ----------
    logfile : Path
        The run's log file; a unit's child process appends to its parent's.
    verbose : int
        0: INFO from bids-mcsr, WARNING from nipype; 1: nipype at INFO; 2+: DEBUG.
    unit : str, optional
        Name of the subject/session a child process runs; it prefixes every line, so that
        the lines of units running side by side can be told apart.
    """
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    prefix = f"{unit}: " if unit else ""
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", TIME_FORMAT)
    root = logging.getLogger(LOGGER)
    root.handlers.clear()
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(logfile)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    root.propagate = False
    nipype_level = "INFO" if verbose else "WARNING"
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, nipype_level)
    nipype_logging.update_logging(nipype_config)
