"""The output dataset's top-level files: ``dataset_description.json``, ``.bidsignore`` and
``logs/``."""

from __future__ import annotations

import json
from pathlib import Path

from bids_mcsr.about import CODE_URL, NAME, container, get_version
from bids_mcsr.dataset.files import atomic_write, write_json

BIDS_VERSION = "1.10.0"
BIDSIGNORE = ["*.html", "logs/", "**/figures", "**/qc", "*_xfm.txt", "group_desc-qc.tsv"]


def dataset_description(bids_dir: Path) -> dict:
    """The ``dataset_description.json`` of the output dataset.

    Parameters
    ----------
    bids_dir : Path
        The raw input dataset (linked as ``raw``).

    Returns
    -------
    dict
        JSON-serialisable description.
    """
    generated = {"Name": NAME, "Version": get_version(), "CodeURL": CODE_URL}
    box = container()
    if box:
        generated["Container"] = box
    source = {"URL": Path(bids_dir).resolve().as_uri()}
    raw_path = Path(bids_dir) / "dataset_description.json"
    raw = json.loads(raw_path.read_text()) if raw_path.is_file() else {}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    return {
        "Name": f"{NAME}: multi-contrast super-resolution of {raw.get('Name', 'a BIDS dataset')}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": {"raw": source["URL"]},
    }


def init_output_dataset(output_dir: Path, bids_dir: Path) -> None:
    """Create the output dataset's top-level files (description, ``.bidsignore``, ``logs/``).

    Parameters
    ----------
    output_dir : Path
        Output dataset root (created if needed).
    bids_dir : Path
        The raw input dataset.
    """
    output_dir = Path(output_dir)
    (output_dir / "logs").mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "dataset_description.json", dataset_description(bids_dir))
    atomic_write(output_dir / ".bidsignore", "\n".join(BIDSIGNORE) + "\n")
