"""Publishing a unit: its files are staged in a hidden directory of the output dataset and
moved into place only once all of them exist, so a failed subject leaves no derivative
behind and a re-run replaces the previous outputs whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bids_mcsr.dataset.naming import anat_dir, qc_path, sr_name, unit_dir
from bids_mcsr.dataset.units import SubjectSession

STAGING_PREFIX = ".staging-"


def staging_dir(output_dir: Path, name: str) -> Path:
    """A fresh hidden directory ``<output_dir>/.staging-<name>`` for the files of the unit
    named ``name`` (``sub-01_ses-02``), on the same file system as the outputs; whatever an
    earlier attempt left there is removed first."""
    path = Path(output_dir) / f"{STAGING_PREFIX}{name}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path

@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until the block ends; they are raised again right after.

    The handlers are swapped rather than the signal mask, because a signal sent to the
    process may land on any thread (torch's, nipype's) that does not block it. Python runs
    handlers in the main thread only, so elsewhere the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)


def _set_aside_name(output_dir: Path, unit: SubjectSession) -> Path:
    return Path(output_dir) / f"{STAGING_PREFIX}old-{unit.name}-{os.getpid()}"


def recover_publish(output_dir: Path, unit: SubjectSession) -> str | None:
    """Repair what a process killed in the middle of :func:`publish` left behind.

    A unit's previous outputs set aside (``.staging-old-<unit>-<pid>``) are moved back when
    no published directory replaced them, and deleted when one did; a left-over staging
    directory of the unit is deleted.

    Returns
    -------
    str or None
        What was done, for the log; None when there was nothing to repair.
    """
    pattern = re.compile(rf"{re.escape(STAGING_PREFIX)}old-{re.escape(unit.name)}-\d+")
    set_aside = sorted((p for p in Path(output_dir).glob(f"{STAGING_PREFIX}old-*")
                        if pattern.fullmatch(p.name)), key=lambda p: p.stat().st_mtime)
    shutil.rmtree(Path(output_dir) / f"{STAGING_PREFIX}{unit.name}", ignore_errors=True)
    if not set_aside:
        return None
    dest_unit = unit_dir(output_dir, unit.subject, unit.session)
    action = "removed the previous outputs left set aside"
    if not dest_unit.exists():
        os.replace(set_aside.pop(), dest_unit)
        action = "restored the previous outputs set aside by an interrupted re-run"
    for path in set_aside:
        shutil.rmtree(path, ignore_errors=True)
    return action


def publish(staging: Path, output_dir: Path, unit: SubjectSession) -> list[Path]:
    """Move a unit's staged files into ``output_dir``, replacing its previous outputs whole.

    The staged ``sub-<l>[/ses-<l>]`` directory takes the place of the published one in two
    renames (the old one is moved aside first, then deleted), so the unit never shows a mix
    of old and new files; other staged files (the HTML report) are moved one by one.
    SIGTERM/SIGINT are held until all of it is done; a harder kill between the renames is
    repaired by :func:`recover_publish` on the next run.

    Parameters
    ----------
    staging : Path
        Directory from ``staging_dir``.
    output_dir : Path
        Output dataset root.
    unit : SubjectSession
        The unit staged.

    Returns
    -------
    list of Path
        The published files.
    """
    staged_unit = unit_dir(staging, unit.subject, unit.session)
    dest_unit = unit_dir(output_dir, unit.subject, unit.session)
    published = [dest_unit / p.relative_to(staged_unit)
                 for p in sorted(staged_unit.rglob("*")) if p.is_file()]
    dest_unit.parent.mkdir(parents=True, exist_ok=True)
    old = _set_aside_name(output_dir, unit)
    with signals_held():
        if dest_unit.exists():
            os.replace(dest_unit, old)
        os.replace(staged_unit, dest_unit)
        for src in sorted(p for p in Path(staging).rglob("*") if p.is_file()):
            dest = Path(output_dir) / src.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            published.append(dest)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(staging)
    return published


def is_complete(output_dir: Path, unit: SubjectSession) -> bool:
    """Whether the outputs of ``unit`` under ``output_dir`` are published: its QC record
    says ``ok`` and a super-resolved volume exists for each contrast (a re-run then has
    nothing to add unless forced)."""
    try:
        qc = json.loads(qc_path(output_dir, unit.subject, unit.session).read_text())
    except (OSError, ValueError):
        return False
    anat = anat_dir(output_dir, unit.subject, unit.session)
    return qc.get("status") == "ok" and all(
        any(anat.glob(sr_name(unit, contrast, "*"))) for contrast in unit.contrasts)
