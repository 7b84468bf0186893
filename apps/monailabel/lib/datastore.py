"""A read-only MONAI Label datastore over a BIDS dataset: one entry per anatomical image.

Images are named by their BIDS file name without the extension (``sub-01_acq-sag_T2w``) and
found with the BIDS-App's own discovery, so the list is what the BIDS-App would fit. Nothing
is written into the dataset: there are no labels, and uploads or edits are refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.datastore import Datastore

from lib.bids_bridge import Image, list_images

log = logging.getLogger(__name__)


def _read_only(*_args: Any, **_kwargs: Any) -> None:
    raise HTTPException(status_code=405, detail="the BIDS datastore is read-only: change the "
                        "dataset on disk, the server lists it again on the next request")


class BidsDatastore(Datastore):
    """The anatomical images of a BIDS dataset, listed by their BIDS names.

    Parameters
    ----------
    root : Path
        The BIDS dataset (``--studies``).
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(root)
        self._name = self._root.name
        self._description = f"anatomical images of the BIDS dataset {self._root}"
        self._images: dict[str, Image] = {}
        self.refresh()

    def refresh(self) -> None:
        """List the dataset's images again (after files were added or removed)."""
        self._images = {image.id: image for image in list_images(self._root)}
        log.info("BIDS datastore %s: %d anatomical images", self._root, len(self._images))

    def require(self, image: str) -> Image:
        """The image with this id or path, listing the dataset again when it is not known.

        Parameters
        ----------
        image : str
            An id (``sub-01_T2w``) or the image's path.

        Returns
        -------
        Image

        Raises
        ------
        fastapi.HTTPException
            404 with a one-line message when the dataset has no such anatomical image.
        """
        for attempt in range(2):
            found = self._images.get(image) or next(
                (i for i in self._images.values() if os.path.realpath(i.path) == image), None)
            if found is not None:
                return found
            if not attempt:
                self.refresh()
        raise HTTPException(status_code=404, detail=(
            f"{image!r} is not an anatomical image of the BIDS dataset {self._root}; "
            "choose an id from /datastore/?output=all"))

    def name(self) -> str:
        """The dataset folder's name."""
        return self._name

    def set_name(self, name: str) -> None:
        """Rename the datastore (for this server only)."""
        self._name = name

    def description(self) -> str:
        """What the datastore lists."""
        return self._description

    def set_description(self, description: str) -> None:
        """Describe the datastore (for this server only)."""
        self._description = description

    def list_images(self) -> list[str]:
        """Every image id, in subject/session order."""
        return list(self._images)

    def get_image_uri(self, image_id: str) -> str:
        """The image's path; empty for an unknown id (MONAI Label's convention)."""
        image = self._images.get(image_id)
        return image.path if image else ""

    def get_image(self, image_id: str, params: Any = None) -> bytes | None:
        """The image file's bytes; None for an unknown id."""
        uri = self.get_image_uri(image_id)
        return Path(uri).read_bytes() if uri else None

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """Path, subject, session and contrast of an image; empty for an unknown id."""
        image = self._images.get(image_id)
        if image is None:
            return {}
        return {"path": image.path, "subject": image.subject, "session": image.session,
                "contrast": image.contrast}

    def get_unlabeled_images(self, label_tag: str | None = None,
                             labels: list[str] | None = None) -> list[str]:
        """Every image id: nothing is labelled."""
        return self.list_images()

    def get_labeled_images(self, label_tag: str | None = None,
                           labels: list[str] | None = None) -> list[str]:
        """No image: this datastore holds no labels."""
        return []

    def datalist(self) -> list[dict[str, Any]]:
        """No image/label pairs: this datastore holds no labels."""
        return []

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        """No labels."""
        return {}

    def get_label_by_image_id(self, image_id: str, tag: str) -> str:
        """No label."""
        return ""

    def get_label(self, label_id: str, label_tag: str, params: Any = None) -> None:
        """No label."""
        return None

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """No label."""
        return ""

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """No label."""
        return {}

    def status(self) -> dict[str, Any]:
        """Counts in MONAI Label's form (``/datastore/``)."""
        return {"total": len(self._images), "completed": 0, "label_tags": {}}

    def json(self) -> dict[str, Any]:
        """The whole list in MONAI Label's form (``/datastore/?output=all``)."""
        objects = {}
        for image_id, image in self._images.items():
            ext = ".nii.gz" if image.path.endswith(".gz") else ".nii"
            objects[image_id] = {"image": {"ext": ext, "info": self.get_image_info(image_id)},
                                 "labels": {}}
        return {"name": self._name, "description": self._description, "objects": objects}

    def get_dataset_archive(self, limit_cases: int | None) -> str:
        """Refused: there are no labels to archive; the dataset itself is on disk."""
        raise HTTPException(status_code=404, detail="the BIDS datastore has no labels to "
                            f"archive; the images are in {self._root}")

    add_image = _read_only
    remove_image = _read_only
    save_label = _read_only
    remove_label = _read_only
    update_image_info = _read_only
    update_label_info = _read_only
