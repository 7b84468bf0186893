"""``--bids-filter-file``: per-contrast pybids entity filters, read and translated."""

from __future__ import annotations

import json
from pathlib import Path

from bids_mcsr.dataset.entities import CONTRAST_HELP, canonical_contrast
from bids_mcsr.errors import InputError


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
            filters[canonical_contrast(key)] = value
        except ValueError:
            raise InputError(path, f"has the unknown filter key {key!r}",
                             f"name a contrast: {CONTRAST_HELP}") from None
    return filters


def pybids_filters(filters: dict) -> dict:
    """One contrast's filters as pybids query arguments: ``null`` -> ``Query.NONE``
    (the entity must be absent), ``"*"`` -> ``Query.ANY`` (present, any value)."""
    from bids.layout import Query

    special = {None: Query.NONE, "*": Query.ANY}
    return {k: special.get(v, v) if not isinstance(v, list) else v
            for k, v in filters.items()}
