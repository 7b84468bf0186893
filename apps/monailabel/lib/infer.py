"""The ``superresolution`` infer task: one image in, its contrast's SR volume out.

A request super-resolves the image's whole subject/session by running the BIDS-App's
participant level into the dataset's derivatives (so both ways of working share results),
then returns a copy of that contrast's ``*_desc-sr_*.nii.gz``. Derivatives this server made
from the same inputs and settings are returned at once (see :mod:`lib.cache`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.bids_bridge import Image
from lib.cache import UnitCache
from lib.datastore import BidsDatastore
from lib.runner import BidsAppError, run_participant
from lib.settings import Settings

log = logging.getLogger(__name__)


class SuperResolution(InferTask):
    """Super-resolve the subject/session of an image with bids-mcsr; return its contrast.

    Parameters
    ----------
    datastore : BidsDatastore
        Resolves the requested image to its subject, session and contrast.
    settings : Settings
        The BIDS-App's folders and options.
    """

    def __init__(self, datastore: BidsDatastore, settings: Settings) -> None:
        super().__init__(
            type=InferType.OTHERS, labels=None, dimension=3,
            description="Isotropic super-resolved volume of this contrast, from all the "
                        "thick-slice stacks of the subject/session (bids-mcsr)",
            config={"options": " ".join(settings.options)})
        self._datastore = datastore
        self._settings = settings
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        """Always usable: there is no model file to load."""
        return True

    def __call__(self, request: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Run one request.

        Parameters
        ----------
        request : dict
            MONAI Label's request; ``image`` is the path of a datastore image.

        Returns
        -------
        tuple of (str, dict)
            A temporary copy of the SR volume (MONAI Label deletes it once sent), and
            ``derivative`` (its path under the output folder), ``cached`` and ``seconds``.

        Raises
        ------
        fastapi.HTTPException
            404 for an image that is not an anatomical image of the dataset; 422 with the
            BIDS-App's one-line message when it fails on the subject/session.
        """
        start = time.monotonic()
        image = self._datastore.require(str(request.get("image", "")))
        cache = UnitCache(self._settings, image)
        with self._lock:
            cached = self._ensure(image, cache)
        found = sorted(cache.sr_dir().glob(image.sr_pattern()),
                       key=lambda p: p.stat().st_mtime_ns)
        if not found:
            raise HTTPException(status_code=422, detail=(
                f"{image.unit}: bids-mcsr wrote no {image.sr_pattern()} in {cache.sr_dir()}"))
        with tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False) as copy:
            shutil.copyfile(found[-1], copy.name)
        seconds = round(time.monotonic() - start, 3)
        log.info("%s: %s (%s, %.1f s)", image.id, found[-1].name,
                 "cached" if cached else "fitted", seconds)
        return copy.name, {"derivative": found[-1].relative_to(self._settings.output_dir)
                           .as_posix(), "cached": cached, "seconds": seconds}

    def _ensure(self, image: Image, cache: UnitCache) -> bool:
        """Make the subject/session's derivatives unless they are fresh; True when they were."""
        key = cache.key()
        if cache.is_fresh(key):
            return True
        try:
            self._settings.work_dir.mkdir(parents=True, exist_ok=True)
            run_participant(self._settings.participant_command(image), image.unit,
                            self._settings.work_dir)
        except BidsAppError as err:
            raise HTTPException(status_code=422, detail=str(err)) from None
        cache.remember(key)
        return False
