"""Input validation with the BIDS validator (``bids-validator-deno``, from PyPI)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

EXECUTABLE = "bids-validator-deno"


@dataclass
class Report:
    """Issues found by the validator.

    Attributes
    ----------
    errors, warnings : list of str
        One ``CODE location`` line per issue.
    """

    errors: list[str]
    warnings: list[str]


def find_validator() -> str | None:
    """Path of ``bids-validator-deno`` on PATH or next to this Python, or None."""
    beside = Path(__import__("sys").executable).with_name(EXECUTABLE)
    return shutil.which(EXECUTABLE) or (str(beside) if beside.is_file() else None)


def subset_view(bids_dir: Path, subjects: list[str], view: Path) -> Path:
    """A directory of symlinks exposing only the top-level files and the given subjects.

    Parameters
    ----------
    bids_dir : Path
        Dataset root.
    subjects : list of str
        Labels without ``sub-``.
    view : Path
        Directory to (re)create, e.g. under the work directory.

    Returns
    -------
    Path
        ``view``.
    """
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    keep = {f"sub-{s}" for s in subjects}
    for entry in Path(bids_dir).iterdir():
        if entry.name == "derivatives" or (entry.name.startswith("sub-")
                                           and entry.name not in keep):
            continue
        (view / entry.name).symlink_to(entry.resolve())
    return view


def parse_report(output: str) -> Report:
    """Read the validator's ``--format json`` output.

    Parameters
    ----------
    output : str
        Its standard output.

    Returns
    -------
    Report
        Errors and warnings.
    """
    issues = json.loads(output)["issues"]["issues"]
    lines = {"error": [], "warning": []}
    for issue in issues:
        text = f"{issue['code']} {issue.get('location', '')}".strip()
        lines.setdefault(issue.get("severity", "warning"), []).append(text)
    return Report(errors=lines["error"], warnings=lines["warning"])


def validate(dataset: Path, config: Path | None = None, timeout: float = 600) -> Report:
    """Run ``bids-validator-deno --format json`` on a dataset.

    Parameters
    ----------
    dataset : Path
        Dataset root (or a ``subset_view``).
    config : Path, optional
        Validator configuration JSON (e.g. issues to ignore).
    timeout : float
        Seconds before giving up.

    Returns
    -------
    Report
        Errors and warnings.

    Raises
    ------
    FileNotFoundError
        When the validator is not installed.
    """
    exe = find_validator()
    if exe is None:
        raise FileNotFoundError(f"{EXECUTABLE} not found; pip install bids-validator-deno")
    cmd = [exe, "--format", "json", str(dataset)]
    if config is not None:
        cmd[1:1] = ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    try:
        return parse_report(proc.stdout)
    except (json.JSONDecodeError, KeyError) as err:
        raise RuntimeError(f"{EXECUTABLE} gave no JSON report (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[:500]}") from err
