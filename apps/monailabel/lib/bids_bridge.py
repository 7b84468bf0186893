"""The app's only door into bids_mcsr: the BIDS-App's discovery and its command.

Every other module of the app reaches bids_mcsr through this one, so a move inside the
package changes one import line here.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bids_mcsr.dataset.discovery import discover, open_layout

ENTRY_POINT = "bids-mcsr"


@dataclass(frozen=True)
class Image:
    """One anatomical image the BIDS-App would fit, as the datastore lists it.

    Attributes
    ----------
    id : str
        Its BIDS file name without the extension (``sub-01_acq-sag_T2w``).
    path : str
        Absolute path of the NIfTI file.
    subject : str
        Subject label without ``sub-``.
    session : str or None
        Session label without ``ses-``; None for datasets without sessions.
    contrast : str
        Contrast key (``T2w``, ``ce-gadolinium_T1w``), which names its output.
    """

    id: str
    path: str
    subject: str
    session: str | None
    contrast: str

    @property
    def unit(self) -> str:
        """``sub-<label>[_ses-<label>]``: the subject/session fitted together."""
        return f"sub-{self.subject}" + (f"_ses-{self.session}" if self.session else "")

    def sr_pattern(self) -> str:
        """Glob pattern of this contrast's super-resolved volume among the derivatives.

        The BIDS-App names it by the subject/session, the contrast's entities (its key is
        already in BIDS order), ``res-`` and ``desc-sr`` (docs/outputs.md).

        Returns
        -------
        str
            E.g. ``sub-01_ce-gadolinium_res-*_desc-sr_T1w.nii.gz`` (any ``res-`` label).
        """
        *entities, suffix = self.contrast.split("_")
        return "_".join([self.unit, *entities, "res-*", "desc-sr", suffix]) + ".nii.gz"


def list_images(bids_dir: Path) -> list[Image]:
    """Every anatomical image of a BIDS dataset that the BIDS-App's discovery selects.

    Parameters
    ----------
    bids_dir : Path
        Dataset root.

    Returns
    -------
    list of Image
        In subject/session order; images the BIDS-App leaves out by rule (another
        reconstruction, a phase image) are not listed.
    """
    with tempfile.TemporaryDirectory(prefix="bids-mcsr-monailabel-") as database:
        units = discover(open_layout(Path(bids_dir), Path(database))).units
    return [Image(id=Path(run.path).name.split(".")[0], path=run.path, subject=unit.subject,
                  session=unit.session, contrast=run.contrast)
            for unit in units for run in unit.runs]


def command() -> list[str]:
    """The BIDS-App's console script, from the environment this server runs in.

    Returns
    -------
    list of str
        The command that starts ``bids-mcsr``.

    Raises
    ------
    FileNotFoundError
        When bids-mcsr is not installed next to this Python.
    """
    found = shutil.which(ENTRY_POINT, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"{ENTRY_POINT} is not installed in {sys.prefix}: "
                                "run bash scripts/setup_monailabel.sh")
    return [found]
