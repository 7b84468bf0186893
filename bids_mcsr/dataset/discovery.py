"""BIDS discovery: which anatomical runs of which subject and session go into one fit.

pybids indexes the dataset (``validate=False``; the real validator runs separately) into a
database kept under the work directory, never inside the input or output datasets.

Files are grouped by contrast key (:func:`bids_mcsr.dataset.entities.contrast_key`); files
that differ in any other entity (``acq-``, ``run-``, ``task-``, ...) are several stacks of
one contrast, except that only one reconstruction (``rec-``) of an acquisition is used (see
:func:`discover`) and only magnitude images (no ``part-`` or ``part-mag``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_mcsr.dataset.entities import (
    NIFTI_EXTENSIONS,
    SUPPORTED_CONTRASTS,
    canonical_contrast,
    contrast_key,
    contrast_rank,
    split_contrast,
)
from bids_mcsr.dataset.filters import pybids_filters
from bids_mcsr.dataset.units import Run, SubjectSession
from bids_mcsr.errors import InputError

_PLANES = ("sagittal", "coronal", "axial")


@dataclass
class Discovery:
    """What discovery found: the usable units and why others were left out.

    Attributes
    ----------
    units : list of SubjectSession
        Units with at least one run, in subject/session order (a unit with one contrast
        gets single-contrast super-resolution).
    skipped : list of str
        One message per subject/session left out, naming it and the fix.
    notes : list of str
        One message per group of files left out by rule (another reconstruction of the
        same acquisition, a phase image), naming them and how to choose otherwise.
    """

    units: list[SubjectSession]
    skipped: list[str]
    notes: list[str] = field(default_factory=list)


def acquisition_plane(orientation: list[float] | None) -> str | None:
    """Name the plane of a 2D acquisition from ``ImageOrientationPatientDICOM``.

    Parameters
    ----------
    orientation : list of 6 float or None
        Row and column direction cosines (DICOM LPS).

    Returns
    -------
    str or None
        ``sagittal``, ``coronal`` or ``axial`` (the closest), None when unknown.
    """
    if orientation is None or len(orientation) != 6:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return _PLANES[int(np.argmax(np.abs(normal)))]


def _thickness(metadata: dict) -> float | None:
    value = metadata.get("SliceThickness")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _make_run(bids_file, root: Path) -> Run:
    metadata = bids_file.get_metadata()
    path = Path(bids_file.path)
    entities = dict(bids_file.get_entities())
    return Run(
        path=str(path),
        relpath=path.relative_to(root).as_posix(),
        contrast=contrast_key(entities),
        entities=entities,
        slice_thickness=_thickness(metadata),
        acquisition_plane=acquisition_plane(metadata.get("ImageOrientationPatientDICOM")),
    )


def _one_reconstruction(files: list, unit: str) -> tuple[list, list[str]]:
    """Keep one reconstruction of each acquisition (files equal but for ``rec-``).

    The file without ``rec-`` is kept, else the one whose ``rec-`` label sorts first.

    Returns
    -------
    tuple of (list, list of str)
        The kept files in their input order, and one note per acquisition with others.
    """
    groups: dict[frozenset, list] = {}
    for f in files:
        rest = {k: v for k, v in f.get_entities().items() if k != "reconstruction"}
        groups.setdefault(frozenset(rest.items()), []).append(f)
    kept, notes = set(), []
    for group in groups.values():
        best = min(group, key=lambda f: (f.get_entities().get("reconstruction") is not None,
                                         str(f.get_entities().get("reconstruction", ""))))
        kept.add(best.path)
        others = sorted(f.filename for f in group if f is not best)
        if others:
            key = contrast_key(best.get_entities())
            notes.append(f"{unit}: left out {', '.join(others)}: another reconstruction of "
                         f"{best.filename}, which is used; choose one with --bids-filter-file, "
                         f'e.g. {{"{key}": {{"reconstruction": "<label>"}}}}')
    return [f for f in files if f.path in kept], notes


def open_layout(bids_dir: Path, database_dir: Path):
    """Index ``bids_dir`` with pybids, caching the index in ``database_dir``.

    Parameters
    ----------
    bids_dir : Path
        Dataset root.
    database_dir : Path
        Directory for the SQLite index (under the work directory).

    Returns
    -------
    bids.BIDSLayout
        The layout (derivatives are not indexed).
    """
    from bids import BIDSLayout

    database_dir.mkdir(parents=True, exist_ok=True)
    return BIDSLayout(str(bids_dir), validate=False, database_path=str(database_dir))


def _subjects(layout, participants: list[str] | None) -> list[str]:
    """The subjects to run: ``participants`` when all exist, else every one in the dataset."""
    root = Path(layout.root)
    available = sorted(layout.get_subjects())
    if participants:
        missing = sorted(set(participants) - set(available))
        if missing:
            raise InputError(root, f"has no subject(s) {', '.join(missing)}",
                             f"choose --participant-label among: {', '.join(available) or 'none'}")
        available = list(participants)
    if not available:
        raise InputError(root, "has no sub-* folders", "point bids_dir at a BIDS dataset root")
    return available


def _contrast_files(layout, base: dict, key: str, filters: dict,
                    unit: str) -> tuple[list, list[str]]:
    """The files of one contrast of one unit, after the magnitude and reconstruction rules.

    Returns
    -------
    tuple of (list, list of str)
        pybids files sorted by path, and one note per group of files left out.
    """
    query = {**base, "suffix": split_contrast(key)[1], **pybids_filters(filters)}
    files = sorted((f for f in layout.get(**query) if contrast_key(f.get_entities()) == key),
                   key=lambda f: f.path)
    notes = []
    phase = [f.filename for f in files if f.get_entities().get("part", "mag") != "mag"]
    if phase:
        notes.append(f"{unit}: left out {', '.join(phase)}: only magnitude "
                     "images (no part- or part-mag) are used")
    files = [f for f in files if f.get_entities().get("part", "mag") == "mag"]
    if "reconstruction" not in filters:
        files, rec_notes = _one_reconstruction(files, unit)
        notes += rec_notes
    return files, notes


def _collect_unit(layout, unit: SubjectSession, wanted: list[str] | None,
                  suffixes: list[str], filters: dict) -> list[str]:
    """Add every selected run of ``unit`` to ``unit.runs``; return the notes."""
    base = {"subject": unit.subject, "datatype": "anat", "extension": NIFTI_EXTENSIONS}
    if unit.session is not None:
        base["session"] = unit.session
    found = {contrast_key(f.get_entities()) for f in layout.get(**base, suffix=suffixes)}
    notes = []
    for key in sorted(found.intersection(wanted or found), key=contrast_rank):
        files, file_notes = _contrast_files(layout, base, key, filters.get(key, {}), unit.name)
        notes += file_notes
        unit.runs.extend(_make_run(f, Path(layout.root)) for f in files)
    return notes


def discover(layout, participants: list[str] | None = None,
             sessions: list[str] | None = None, contrasts: list[str] | None = None,
             filters: dict[str, dict] | None = None) -> Discovery:
    """Collect, per subject and session, every anatomical run of the selected contrasts.

    Files are grouped by contrast key (:func:`contrast_key`). Images with a ``part-`` other
    than ``mag`` (phase, real, imaginary) are left out. When several reconstructions of
    one acquisition are found (files that differ only in ``rec-``), the one without
    ``rec-`` is used, else the one whose ``rec-`` label sorts first; a filter naming
    ``reconstruction`` for the contrast turns this rule off and uses every file it matches.
    Each file left out by these rules is named in ``Discovery.notes``.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Indexed input dataset.
    participants : list of str, optional
        Subject labels without ``sub-``; default all.
    sessions : list of str, optional
        Session labels without ``ses-``; default all.
    contrasts : list of str, optional
        Contrast keys to use (``T1w``, ``ce-gadolinium_T1w``); default every one found whose
        suffix is in ``SUPPORTED_CONTRASTS``.
    filters : dict, optional
        Contrast key -> extra pybids entity filters (see
        :func:`bids_mcsr.dataset.filters.load_filters`).

    Returns
    -------
    Discovery
        Units with at least one selected run, a message for each one without, and notes.

    Raises
    ------
    InputError
        When a requested participant is not in the dataset, or none is.
    ValueError
        When a requested contrast is not a valid contrast key.
    """
    wanted = [canonical_contrast(c) for c in contrasts] if contrasts else None
    suffixes = sorted({split_contrast(c)[1] for c in wanted} if wanted else SUPPORTED_CONTRASTS)
    found = Discovery([], [], [])
    for subject in _subjects(layout, participants):
        subject_sessions = sorted(layout.get_sessions(subject=subject)) or [None]
        if sessions:
            subject_sessions = [s for s in subject_sessions if s in sessions]
            if not subject_sessions:
                found.skipped.append(f"sub-{subject}: none of the sessions "
                                     f"{', '.join(sessions)}; check --session-label")
        for session in subject_sessions:
            unit = SubjectSession(subject, session, [])
            found.notes += _collect_unit(layout, unit, wanted, suffixes, filters or {})
            if unit.runs:
                found.units.append(unit)
            else:
                found.skipped.append(
                    f"{unit.name}: found no anatomical image among "
                    f"{', '.join(wanted or SUPPORTED_CONTRASTS)}; "
                    "check --contrasts and --bids-filter-file")
    return found
