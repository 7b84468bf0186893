"""``bids-mcsr`` entry point: parse the command line, then run the participant or group level.

Exit status: 0 success, 1 a processing failure (each named ``sub-XX: <step>: <message>``),
2 a usage error, 128 + the signal number (130 SIGINT, 143 SIGTERM) when interrupted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bids_mcsr.cli.config import RunConfig
from bids_mcsr.cli.parser import parse_args
from bids_mcsr.cli.signals import catch_signals


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
        config = RunConfig.from_namespace(parse_args(argv))
    except SystemExit as stop:
        return int(stop.code or 0)
    if config.analysis_level == "group":
        return _run_group(config.output_dir)
    from bids_mcsr.cli.participant import run_participant

    with catch_signals() as stop:
        status = run_participant(config, stop)
    if stop and status == stop.exit_status:
        print(f"bids-mcsr: interrupted by {stop.name}; no derivative of an unfinished "
              "subject was written; re-run with the same -w/--work-dir to resume",
              file=sys.stderr)
    return status


def _run_group(output_dir: Path) -> int:
    """Run the group level when ``bids_mcsr.reports.group`` exists."""
    if importlib.util.find_spec("bids_mcsr.reports.group") is None:
        print("bids-mcsr: the group level is not available in this version; "
              "run the participant level only", file=sys.stderr)
        return 1
    from bids_mcsr.reports.group import run_group

    return int(run_group(output_dir))


if __name__ == "__main__":
    sys.exit(main())
