"""BIDS discovery: which anatomical runs of which subject and session go into one fit.

pybids indexes the dataset (``validate=False``; the real validator runs separately) into a
database kept under the work directory, never inside the input or output datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_mcsr.errors import InputError

SUPPORTED_CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
_FILTER_KEYS = {c.lower(): c for c in SUPPORTED_CONTRASTS}
_PLANES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class Run:
    """One anatomical image file and what its sidecar says about it.

    Attributes
    ----------
    path : str
        Absolute path of the NIfTI file.
    relpath : str
        Path relative to the dataset root (for ``bids:raw:`` URIs).
    contrast : str
        BIDS suffix (``T1w``, ``T2w``, ...).
    entities : dict
        pybids entities of the file.
    slice_thickness : float or None
        ``SliceThickness`` from the sidecar, in mm.
    acquisition_plane : str or None
        ``axial``, ``coronal`` or ``sagittal`` from ``ImageOrientationPatientDICOM``.
    """

    path: str
    relpath: str
    contrast: str
    entities: dict = field(hash=False, compare=False)
    slice_thickness: float | None = None
    acquisition_plane: str | None = None


@dataclass
class SubjectSession:
    """The runs of one subject (and session) that are fitted together.

    Attributes
    ----------
    subject : str
        Label without ``sub-``.
    session : str or None
        Label without ``ses-``; None for datasets without sessions.
    runs : list of Run
        Every selected anatomical run.
    """

    subject: str
    session: str | None
    runs: list[Run]

    @property
    def name(self) -> str:
        """``sub-<label>[_ses-<label>]``, the prefix of every derivative."""
        ses = f"_ses-{self.session}" if self.session else ""
        return f"sub-{self.subject}{ses}"

    @property
    def contrasts(self) -> list[str]:
        """Contrasts present, in the order of ``SUPPORTED_CONTRASTS``."""
        found = {run.contrast for run in self.runs}
        return [c for c in SUPPORTED_CONTRASTS if c in found]

    def labels(self) -> list[str]:
        """One short unique alphanumeric label per run (``T2w``, or ``T1w1``, ``T1w2``).

        Returns
        -------
        list of str
            Labels in the order of ``runs``, usable as ``from-``/``to-`` entity values.
        """
        counts = {c: sum(r.contrast == c for r in self.runs) for c in self.contrasts}
        seen: dict[str, int] = {}
        labels = []
        for run in self.runs:
            seen[run.contrast] = seen.get(run.contrast, 0) + 1
            index = str(seen[run.contrast]) if counts[run.contrast] > 1 else ""
            labels.append(run.contrast + index)
        return labels


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
    """

    units: list[SubjectSession]
    skipped: list[str]


def load_filters(path: Path) -> dict[str, dict]:
    """Read a ``--bids-filter-file``: ``{"t2w": {"acquisition": "tse", "run": null}}``.

    Parameters
    ----------
    path : Path
        JSON file whose keys are lower-case contrasts.

    Returns
    -------
    dict
        Contrast suffix (``T2w``) -> entity filters, as written in the file.

    Raises
    ------
    InputError
        When the file is missing, is not JSON, or has unknown keys.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "filter file not found", "check the --bids-filter-file path")
    except json.JSONDecodeError as err:
        raise InputError(path, f"is not valid JSON ({err})", "fix the --bids-filter-file")
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise InputError(path, "is not a JSON object of objects",
                         'write it like {"t1w": {"session": "01"}}')
    unknown = sorted(set(k.lower() for k in raw) - set(_FILTER_KEYS))
    if unknown:
        raise InputError(path, f"has unknown filter keys {unknown}",
                         f"use only {sorted(_FILTER_KEYS)}")
    return {_FILTER_KEYS[k.lower()]: v for k, v in raw.items()}


def _pybids_filters(filters: dict) -> dict:
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    return {k: special.get(v, v) if not isinstance(v, list) else v
            for k, v in filters.items()}


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
    return Run(
        path=str(path),
        relpath=path.relative_to(root).as_posix(),
        contrast=bids_file.entities["suffix"],
        entities=dict(bids_file.get_entities()),
        slice_thickness=_thickness(metadata),
        acquisition_plane=acquisition_plane(metadata.get("ImageOrientationPatientDICOM")),
    )


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


def discover(layout, participants: list[str] | None = None,
             sessions: list[str] | None = None, contrasts: list[str] | None = None,
             filters: dict[str, dict] | None = None) -> Discovery:
    """Collect, per subject and session, every anatomical run of the selected contrasts.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Indexed input dataset.
    participants : list of str, optional
        Subject labels without ``sub-``; default all.
    sessions : list of str, optional
        Session labels without ``ses-``; default all.
    contrasts : list of str, optional
        Suffixes to use; default all of ``SUPPORTED_CONTRASTS``.
    filters : dict, optional
        Contrast -> extra pybids entity filters (see ``load_filters``).

    Returns
    -------
    Discovery
        Units with at least one selected run, and a message for each one without.

    Raises
    ------
    InputError
        When a requested participant is not in the dataset, or none is.
    """
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
    wanted = list(contrasts or SUPPORTED_CONTRASTS)
    filters = filters or {}
    units, skipped = [], []
    for subject in available:
        subject_sessions = sorted(layout.get_sessions(subject=subject)) or [None]
        if sessions:
            subject_sessions = [s for s in subject_sessions if s in sessions]
            if not subject_sessions:
                skipped.append(f"sub-{subject}: none of the sessions {', '.join(sessions)}; "
                               "check --session-label")
        for session in subject_sessions:
            unit = SubjectSession(subject, session, [])
            for contrast in wanted:
                query = {"subject": subject, "datatype": "anat", "suffix": contrast,
                         "extension": NIFTI_EXTENSIONS}
                if session is not None:
                    query["session"] = session
                query.update(_pybids_filters(filters.get(contrast, {})))
                files = layout.get(**query)
                unit.runs.extend(_make_run(f, root) for f in sorted(files, key=lambda f: f.path))
            if unit.runs:
                units.append(unit)
            else:
                skipped.append(
                    f"{unit.name}: found no anatomical image among {', '.join(wanted)}; "
                    "check --contrasts and --bids-filter-file")
    return Discovery(units, skipped)
