"""BIDS names and contrast keys: the one place that spells entities, suffixes and units.

A *contrast* is the suffix together with the entities that change image contrast
(``CONTRAST_ENTITIES``: ``ce-``, and ``inv-``/``mt-`` where a file carries them), named by
its BIDS key: ``T1w``, ``ce-gadolinium_T1w``. Each contrast is one network head and one
output. Entities are ordered as the BIDS schema (``bidsschematools``, installed with pybids)
orders them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

SUPPORTED_CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw", "T2starw")
NIFTI_EXTENSIONS = [".nii", ".nii.gz"]
# BIDS key -> pybids entity name of the entities that make a contrast of their own
CONTRAST_ENTITIES = {"ce": "ceagent", "inv": "inv", "mt": "mt"}
CONTRAST_HELP = ("a suffix among " + ", ".join(SUPPORTED_CONTRASTS) + ", optionally after "
                 "ce-<label>, inv-<index> and mt-<on|off> (e.g. ce-gadolinium_T1w)")
_SUFFIXES = {c.lower(): c for c in SUPPORTED_CONTRASTS}
_LABEL = re.compile(r"[A-Za-z0-9]+")


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


def unit_name(subject: str, session: str | None) -> str:
    """``sub-<l>[_ses-<l>]``, the prefix of every derivative of one subject/session."""
    return f"sub-{subject}" + (f"_ses-{session}" if session else "")


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

    Examples
    --------
    >>> contrast_key({"suffix": "T1w", "ceagent": "gadolinium", "run": 2})
    'ce-gadolinium_T1w'
    >>> contrast_key({"suffix": "FLAIR", "acquisition": "sag"})
    'FLAIR'
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


def canonical_contrast(key: str) -> str:
    """The canonical spelling of a contrast key (``ce-gadolinium_t1w`` -> ``..._T1w``).

    Raises
    ------
    ValueError
        As :func:`split_contrast`.
    """
    return bids_name(*split_contrast(key))


def contrast_rank(key: str) -> tuple:
    """Sort key of contrasts: by suffix as in ``SUPPORTED_CONTRASTS``, the plain one first."""
    entities, suffix = split_contrast(key)
    return SUPPORTED_CONTRASTS.index(suffix), bool(entities), key
