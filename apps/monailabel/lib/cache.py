"""Whether a subject/session's derivatives were made by this server from its current inputs.

A record per subject/session (``<work_dir>/monailabel-cache/<unit>.json``) holds the key of
the run that made its derivatives (its input files' paths, sizes and modification times,
the bids-mcsr version, the output folder and the server's options) and the size and
modification time of each super-resolved volume it wrote. The derivatives are reused while
both still match.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from lib.bids_bridge import Image
from lib.settings import Settings


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


class UnitCache:
    """The cache record of one subject/session.

    Parameters
    ----------
    settings : Settings
        The server's folders and options.
    image : Image
        Any image of the subject/session.
    """

    def __init__(self, settings: Settings, image: Image) -> None:
        self._settings = settings
        self._image = image
        self._record = settings.work_dir / "monailabel-cache" / f"{image.unit}.json"

    def _unit_path(self, root: Path) -> Path:
        path = root / f"sub-{self._image.subject}"
        return path / f"ses-{self._image.session}" if self._image.session else path

    def inputs(self) -> list[Path]:
        """Every file under the unit's ``anat/`` folder and the dataset's top-level files
        (``dataset_description.json``, inherited sidecars), sorted."""
        files = [p for p in (self._unit_path(self._settings.studies) / "anat").rglob("*")
                 if p.is_file()]
        files += [p for p in self._settings.studies.iterdir() if p.is_file()]
        return sorted(files)

    def key(self) -> str:
        """SHA-256 hex digest of everything that decides the unit's outputs (see above)."""
        content = {
            "inputs": [[str(p), *_stat(p)] for p in self.inputs()],
            "version": metadata.version("bids-mcsr"),
            "output_dir": str(self._settings.output_dir),
            "options": list(self._settings.options),
        }
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()

    def sr_dir(self) -> Path:
        """The ``anat/`` folder of the unit's derivatives."""
        return self._unit_path(self._settings.output_dir) / "anat"

    def is_fresh(self, key: str) -> bool:
        """True when the record holds ``key`` and every volume it lists is unchanged."""
        try:
            record = json.loads(self._record.read_text())
            return record["key"] == key and all(
                _stat(self._settings.output_dir / name) == stat
                for name, stat in record["outputs"].items())
        except (OSError, ValueError, KeyError):
            return False

    def remember(self, key: str) -> None:
        """Record that the unit's current derivatives were made with ``key``."""
        outputs = {p.relative_to(self._settings.output_dir).as_posix(): _stat(p)
                   for p in sorted(self.sr_dir().glob("*_desc-sr_*.nii.gz"))}
        self._record.parent.mkdir(parents=True, exist_ok=True)
        self._record.write_text(json.dumps({"key": key, "outputs": outputs}, indent=1))
