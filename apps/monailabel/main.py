"""MONAI Label app: super-resolved volumes of a BIDS dataset's images, from the viewer.

    monailabel start_server --app apps/monailabel --studies <BIDS dataset> [--conf seed 0 ...]

See docs/monailabel.md for the settings and the viewers.
"""

from __future__ import annotations

from typing import Any

from lib.datastore import BidsDatastore
from lib.infer import SuperResolution
from lib.settings import Settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask


class BidsMcsrApp(MONAILabelApp):
    """The app: a BIDS datastore and the ``superresolution`` infer task.

    Parameters
    ----------
    app_dir : str
        This folder.
    studies : str
        The BIDS dataset.
    conf : dict of str to str
        ``--conf`` pairs (see :class:`lib.settings.Settings`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, Any]) -> None:
        self.settings = Settings.from_conf(app_dir, studies, conf)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="bids-mcsr",
                         description="Multi-contrast super-resolution of thick-slice MRI")

    def init_datastore(self) -> Datastore:
        """The BIDS dataset's anatomical images."""
        return BidsDatastore(self.settings.studies)

    def init_infers(self) -> dict[str, InferTask]:
        """One task, ``superresolution``."""
        return {"superresolution": SuperResolution(self._datastore, self.settings)}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict:
        """Check the image id before MONAI Label maps it to a path (an unknown id to "").

        Raises
        ------
        fastapi.HTTPException
            404 with a one-line message for an id that is not in the dataset.
        """
        if isinstance(request.get("image"), str):
            self._datastore.require(request["image"])
        return super().infer(request, datastore)
