"""Identity of this software: name, version, code URL, container, citation.

Kept in one place so that ``dataset_description.json``, the work-directory stamp, the
``--version`` flag and the methods boilerplate never disagree.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

NAME = "bids-mcsr"
CODE_URL = "https://github.com/bids-mcsr/bids-mcsr"

METHOD_CITATION = (
    "McGinnis J, Shit S, Li HB, Sideri-Lampretsa V, Graf R, Dannecker M, Pan J, "
    "Stolt-Ansó N, Mühlau M, Kirschke JS, Rueckert D, Wiestler B. Single-subject "
    "multi-contrast MRI super-resolution via implicit neural representations. "
    "Medical Image Computing and Computer Assisted Intervention (MICCAI) 2023."
)


def get_version() -> str:
    """Return the installed version of bids-mcsr.

    Returns
    -------
    str
        The package version, or ``"0+unknown"`` when the package is not installed.
    """
    try:
        return version(NAME)
    except PackageNotFoundError:
        return "0+unknown"


def container() -> dict[str, str] | None:
    """Describe the container this process runs in, when the image declares it.

    Container images set ``BIDS_MCSR_CONTAINER_TYPE`` (``docker`` or ``singularity``) and
    ``BIDS_MCSR_CONTAINER_TAG``; outside a container both are unset.

    Returns
    -------
    dict or None
        ``{"Type": ..., "Tag": ...}`` for ``GeneratedBy.Container``, or None.
    """
    kind = os.environ.get("BIDS_MCSR_CONTAINER_TYPE")
    if not kind:
        return None
    return {"Type": kind, "Tag": os.environ.get("BIDS_MCSR_CONTAINER_TAG", get_version())}
