"""BIDS discovery: which anatomical runs of which subject and session go into one fit.

pybids indexes the dataset (``validate=False``; the real validator runs separately) into a
database kept under the work directory, never inside the input or output datasets.

A *contrast* is the suffix together with the entities that change image contrast
(``CONTRAST_ENTITIES``: ``ce-``, and ``inv-``/``mt-`` where a file carries them), named by
its BIDS key: ``T1w``, ``ce-gadolinium_T1w``. Each contrast is one network head and one
output. Files that differ in any other entity (``acq-``, ``run-``, ``task-``, ...) are
several stacks of one contrast, except that only one reconstruction (``rec-``) of an
acquisition is used (see :func:`discover`) and only magnitude images (no ``part-`` or
``part-mag``).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bids_mcsr.errors import InputError

SUPPORTED_CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
# BIDS key -> pybids entity name of the entities that make a contrast of their own
CONTRAST_ENTITIES = {"ce": "ceagent", "inv": "inv", "mt": "mt"}
CONTRAST_HELP = ("a suffix among " + ", ".join(SUPPORTED_CONTRASTS) + ", optionally after "
                 "ce-<label>, inv-<index> and mt-<on|off> (e.g. ce-gadolinium_T1w)")
_SUFFIXES = {c.lower(): c for c in SUPPORTED_CONTRASTS}
_LABEL = re.compile(r"[A-Za-z0-9]+")
_PLANES = ("sagittal", "coronal", "axial")


@functools.cache
def _entity_order() -> dict[str, int]:
    """BIDS key (``sub``, ``ce``, ``res``, ``desc``) -> its rank in the BIDS schema's order."""
    from bidsschematools.schema import load_schema  # installed with pybids

    schema = load_schema()
    return {schema.objects.entities[name]["name"]: rank
            for rank, name in enumerate(schema.rules.entities)}


def bids_name(entities: Mapping[str, object], suffix: str, extension: str = "") -> str:
    """A BIDS file name: ``<key>-<value>`` pairs in the schema's entity order, then the suffix.

    Parameters
    ----------
    entities : mapping
        BIDS key (``sub``, ``ses``, ``ce``, ``res``, ``desc``, ...) -> label; None is left out.
    suffix : str
        The suffix (``T1w``, ``mask``).
    extension : str
        Appended as given (``.nii.gz``); default none.

    Returns
    -------
    str
        E.g. ``sub-01_ce-gadolinium_res-1mm_desc-sr_T1w.nii.gz``.

    Raises
    ------
    ValueError
        For a key the BIDS schema does not define.
    """
    order = _entity_order()
    unknown = sorted(set(entities) - set(order))
    if unknown:
        raise ValueError(f"not BIDS entities: {unknown}")
    pairs = sorted((order[key], f"{key}-{value}") for key, value in entities.items()
                   if value is not None)
    return "_".join([pair for _, pair in pairs] + [suffix]) + extension


def contrast_key(entities: Mapping[str, object]) -> str:
    """The contrast of a file: its contrast entities and suffix as a BIDS key.

    Parameters
    ----------
    entities : mapping
        pybids entities of the file (``ceagent``, ``inv``, ``mt``, ``suffix``, ...).

    Returns
    -------
    str
        ``T1w``, ``ce-gadolinium_T1w``, ``inv-1_MP2RAGE``; inverse of :func:`split_contrast`.
    """
    return bids_name({key: entities.get(name) for key, name in CONTRAST_ENTITIES.items()},
                     str(entities["suffix"]))


def split_contrast(key: str) -> tuple[dict[str, str], str]:
    """The contrast entities and suffix of a contrast key (the suffix read in any case).

    Parameters
    ----------
    key : str
        ``T1w``, ``ce-gadolinium_T1w``, ``ce-gadolinium_t1w``, ...

    Returns
    -------
    tuple of (dict, str)
        BIDS key (``ce``, ``inv``, ``mt``) -> label, and the suffix as spelled in
        ``SUPPORTED_CONTRASTS``; ``bids_name(*split_contrast(key))`` is the canonical key.

    Raises
    ------
    ValueError
        When ``key`` is not a supported suffix after valid, distinct contrast entities.
    """
    *pairs, suffix = str(key).split("_")
    entities = {}
    for pair in pairs:
        name, _, label = pair.partition("-")
        if name not in CONTRAST_ENTITIES or name in entities or not _LABEL.fullmatch(label):
            break
        entities[name] = label
    else:
        if suffix.lower() in _SUFFIXES:
            return entities, _SUFFIXES[suffix.lower()]
    raise ValueError(f"unknown contrast {key!r}: give {CONTRAST_HELP}")


def _contrast_rank(key: str) -> tuple:
    """Sort key of contrasts: by suffix as in ``SUPPORTED_CONTRASTS``, the plain one first."""
    entities, suffix = split_contrast(key)
    return SUPPORTED_CONTRASTS.index(suffix), bool(entities), key


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
        Contrast key (``T1w``, ``ce-gadolinium_T1w``, ...; see :func:`contrast_key`).
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
    def entities(self) -> dict[str, str | None]:
        """``{"sub": ..., "ses": ...}``, the leading entities of every derivative."""
        return {"sub": self.subject, "ses": self.session}

    @property
    def contrasts(self) -> list[str]:
        """Contrast keys present: by suffix as in ``SUPPORTED_CONTRASTS``, the plain one first."""
        return sorted({run.contrast for run in self.runs}, key=_contrast_rank)

    def labels(self) -> list[str]:
        """One short unique alphanumeric label per run (``T2w``, ``cegadoliniumT1w``, or
        ``T1w1``, ``T1w2`` for several stacks of a contrast).

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
            labels.append(re.sub("[^A-Za-z0-9]", "", run.contrast) + index)
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
    notes : list of str
        One message per group of files left out by rule (another reconstruction of the
        same acquisition, a phase image), naming them and how to choose otherwise.
    """

    units: list[SubjectSession]
    skipped: list[str]
    notes: list[str] = field(default_factory=list)


def load_filters(path: Path) -> dict[str, dict]:
    """Read a ``--bids-filter-file``: ``{"t2w": {"acquisition": "tse", "run": null}}``.

    Parameters
    ----------
    path : Path
        JSON file whose keys are contrasts, the suffix in any case (``t1w``,
        ``ce-gadolinium_t1w``); each filters that contrast only.

    Returns
    -------
    dict
        Contrast key (``T2w``, ``ce-gadolinium_T1w``) -> entity filters, as written in the file.

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
    filters = {}
    for key, value in raw.items():
        try:
            filters[bids_name(*split_contrast(key))] = value
        except ValueError:
            raise InputError(path, f"has the unknown filter key {key!r}",
                             f"name a contrast: {CONTRAST_HELP}") from None
    return filters


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
        Contrast key -> extra pybids entity filters (see ``load_filters``).

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
    wanted = [bids_name(*split_contrast(c)) for c in contrasts] if contrasts else None
    suffixes = sorted({split_contrast(c)[1] for c in wanted} if wanted else SUPPORTED_CONTRASTS)
    filters = filters or {}
    units, skipped, notes = [], [], []
    for subject in available:
        subject_sessions = sorted(layout.get_sessions(subject=subject)) or [None]
        if sessions:
            subject_sessions = [s for s in subject_sessions if s in sessions]
            if not subject_sessions:
                skipped.append(f"sub-{subject}: none of the sessions {', '.join(sessions)}; "
                               "check --session-label")
        for session in subject_sessions:
            unit = SubjectSession(subject, session, [])
            base = {"subject": subject, "datatype": "anat", "extension": NIFTI_EXTENSIONS}
            if session is not None:
                base["session"] = session
            found = {contrast_key(f.get_entities())
                     for f in layout.get(**base, suffix=suffixes)}
            for key in sorted(found.intersection(wanted or found), key=_contrast_rank):
                query = {**base, "suffix": split_contrast(key)[1],
                         **_pybids_filters(filters.get(key, {}))}
                files = sorted((f for f in layout.get(**query)
                                if contrast_key(f.get_entities()) == key),
                               key=lambda f: f.path)
                phase = [f.filename for f in files if f.get_entities().get("part", "mag") != "mag"]
                if phase:
                    notes.append(f"{unit.name}: left out {', '.join(phase)}: only magnitude "
                                 "images (no part- or part-mag) are used")
                files = [f for f in files if f.get_entities().get("part", "mag") == "mag"]
                if "reconstruction" not in filters.get(key, {}):
                    files, rec_notes = _one_reconstruction(files, unit.name)
                    notes += rec_notes
                unit.runs.extend(_make_run(f, root) for f in files)
            if unit.runs:
                units.append(unit)
            else:
                skipped.append(
                    f"{unit.name}: found no anatomical image among "
                    f"{', '.join(wanted or SUPPORTED_CONTRASTS)}; "
                    "check --contrasts and --bids-filter-file")
    return Discovery(units, skipped, notes)
