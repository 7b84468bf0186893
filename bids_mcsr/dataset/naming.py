"""Where each derivative goes: folders and file names of the output dataset.

Layout (``<unit>`` is ``sub-<l>[_ses-<l>]``)::

    <output_dir>/sub-<l>/[ses-<l>/]anat/<unit>[_ce-<l>...]_res-<l>_desc-sr_<suffix>.nii.gz
    <output_dir>/sub-<l>/[ses-<l>/]qc/<unit>_desc-qc.json
    <output_dir>/sub-<l>/figures/<unit>[_ce-<l>...]_desc-<what>_<suffix>.png
    <output_dir>/<unit>.html
"""

from __future__ import annotations

from pathlib import Path

from bids_mcsr.dataset.entities import bids_name, split_contrast, unit_name
from bids_mcsr.dataset.units import SubjectSession

QC_SUFFIX = "_desc-qc.json"


def res_label(spacing: tuple[float, float, float]) -> str:
    """The ``res-`` label of an output grid: ``1mm``, ``0p8mm``, or ``ref`` if anisotropic.

    Parameters
    ----------
    spacing : tuple of float
        Voxel sizes in mm.

    Returns
    -------
    str
        An alphanumeric BIDS label.

    Examples
    --------
    >>> res_label((1.0, 1.0, 1.0)), res_label((0.8, 0.8, 0.8)), res_label((1.0, 1.0, 4.0))
    ('1mm', '0p8mm', 'ref')
    """
    if max(spacing) - min(spacing) > 1e-3:
        return "ref"
    return f"{round(float(spacing[0]), 3):g}".replace(".", "p") + "mm"


def sr_name(unit: SubjectSession, contrast: str, res: str, extension: str = ".nii.gz") -> str:
    """File name of a super-resolved volume: the unit's and the contrast's entities, ``res-``
    and ``desc-sr`` in BIDS order, e.g. ``sub-01_ce-gadolinium_res-1mm_desc-sr_T1w.nii.gz``.

    Parameters
    ----------
    unit : SubjectSession
        The subject/session.
    contrast : str
        Contrast key (``T1w``, ``ce-gadolinium_T1w``).
    res : str
        ``res-`` label (``*`` makes a glob pattern).
    extension : str
        ``.nii.gz`` or ``.json``.

    Returns
    -------
    str
        The file name.
    """
    entities, suffix = split_contrast(contrast)
    return bids_name({**unit.entities, **entities, "res": res, "desc": "sr"}, suffix, extension)


def figure_name(unit: str, desc: str, contrast: str | None = None) -> str:
    """``<unit>[_<contrast entities>]_desc-<desc>_<suffix>.png`` of a report figure; the
    suffix is ``curves`` for a figure of no one contrast."""
    entities, suffix = split_contrast(contrast) if contrast else ({}, "curves")
    return f"{unit}_{bids_name({**entities, 'desc': desc}, suffix, '.png')}"


def unit_dir(root: Path, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>[/ses-<l>]``."""
    base = Path(root) / f"sub-{subject}"
    return base / f"ses-{session}" if session else base


def anat_dir(root: Path, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>[/ses-<l>]/anat``."""
    return unit_dir(root, subject, session) / "anat"


def qc_dir(root: Path, subject: str, session: str | None) -> Path:
    """``<root>/sub-<l>[/ses-<l>]/qc``."""
    return unit_dir(root, subject, session) / "qc"


def qc_path(root: Path, subject: str, session: str | None) -> Path:
    """The unit's QC record, ``<root>/sub-<l>[/ses-<l>]/qc/<unit>_desc-qc.json``."""
    return qc_dir(root, subject, session) / f"{unit_name(subject, session)}{QC_SUFFIX}"


def bids_uri(relpath: str, dataset: str = "raw") -> str:
    """``bids:<dataset>:<relpath>``, the BIDS URI of a file of a linked dataset."""
    return f"bids:{dataset}:{relpath}"
