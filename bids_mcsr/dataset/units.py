"""The units of work: one anatomical run, and one subject/session with the runs fitted
together."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bids_mcsr.dataset.entities import contrast_rank, unit_name


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
        Contrast key (``T1w``, ``ce-gadolinium_T1w``, ...).
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
        return unit_name(self.subject, self.session)

    @property
    def entities(self) -> dict[str, str | None]:
        """``{"sub": ..., "ses": ...}``, the leading entities of every derivative."""
        return {"sub": self.subject, "ses": self.session}

    @property
    def contrasts(self) -> list[str]:
        """Contrast keys present: by suffix as in ``SUPPORTED_CONTRASTS``, the plain one first."""
        return sorted({run.contrast for run in self.runs}, key=contrast_rank)

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
