"""The app over REST, as a viewer uses it: list, super-resolve, reuse, refuse, stop.

Every request goes through the real server (see conftest.py); the SR volumes are compared
with what the BIDS-App's command line writes with the same seed and options.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import time
from dataclasses import dataclass, field

import httpx
import nibabel as nib
import numpy as np
import pytest
from conftest import BIN, CLI_OPTIONS
from requests_toolbelt.multipart.decoder import MultipartDecoder

CACHED_WITHIN_S = 5.0


@dataclass
class Answer:
    """One ``/infer/superresolution`` answer: status, its JSON part, its NIfTI bytes, time."""

    status: int
    params: dict = field(default_factory=dict)
    nifti: bytes = b""
    seconds: float = 0.0


def infer(client: httpx.Client, image: str) -> Answer:
    """Ask for the SR volume of ``image`` as MONAI Label's clients do (params and image)."""
    start = time.monotonic()
    response = client.post("/infer/superresolution", params={"image": image})
    seconds = time.monotonic() - start
    if response.status_code != 200:
        return Answer(response.status_code, response.json(), seconds=seconds)
    parts = {part.headers[b"Content-Disposition"].split(b'name="')[1].split(b'"')[0]: part
             for part in MultipartDecoder(response.content, response.headers["content-type"]).parts}
    return Answer(200, json.loads(parts[b"params"].text), parts[b"image"].content, seconds)


def volume(data: bytes) -> nib.Nifti1Image:
    """A NIfTI image from the bytes of a ``.nii.gz``."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def centre(image: nib.Nifti1Image) -> np.ndarray:
    """World coordinates of the centre of an image's field of view."""
    return (image.affine @ [*((np.array(image.shape) - 1) / 2), 1])[:3]


@pytest.fixture(scope="module")
def first(client):
    """The first request for subject 01: a fit."""
    return infer(client, "sub-01_T2w")


def test_info_names_the_superresolution_task(client):
    info = client.get("/info/").json()
    assert info["name"] == "bids-mcsr"
    assert info["models"]["superresolution"]["dimension"] == 3
    assert "--seed 0" in info["models"]["superresolution"]["config"]["options"]
    assert info["datastore"]["total"] == 6


def test_datastore_lists_every_anatomical_image_by_bids_name(client, server):
    objects = client.get("/datastore/", params={"output": "all"}).json()["objects"]
    assert sorted(objects) == ["sub-01_T1w", "sub-01_T2w", "sub-02_T1w", "sub-02_T2w",
                               "sub-03_ses-1_FLAIR", "sub-03_ses-1_T1w"]
    info = objects["sub-03_ses-1_FLAIR"]["image"]["info"]
    assert (info["subject"], info["session"], info["contrast"]) == ("03", "1", "FLAIR")
    download = client.get("/datastore/image", params={"image": "sub-01_T2w"})
    assert download.content == (server.bids / "sub-01/anat/sub-01_T2w.nii.gz").read_bytes()


def test_first_request_returns_the_sr_volume_and_writes_the_derivatives(first, server):
    assert first.status == 200, first.params
    assert first.params["cached"] is False
    assert first.params["derivative"] == "sub-01/anat/sub-01_res-2mm_desc-sr_T2w.nii.gz"
    image = volume(first.nifti)
    # the union of the registered stacks on the 2 mm grid: 24 voxels a side unregistered; the
    # rigid registration of this near-symmetric phantom may turn a stack by a few degrees
    assert all(24 <= n <= 30 for n in image.shape), image.shape
    assert np.allclose(nib.affines.voxel_sizes(image.affine), 2.0)
    stack = nib.load(server.bids / "sub-01/anat/sub-01_T2w.nii.gz")
    assert np.allclose(image.affine[:3, :3], np.diag([2.0, 2.0, 2.0]))
    assert np.allclose(centre(image), centre(stack), atol=2.0)  # the stack's field of view
    assert np.isfinite(image.get_fdata()).all() and image.get_fdata().std() > 0
    anat = server.bids / "derivatives/bids-mcsr/sub-01/anat"
    assert (anat / "sub-01_res-2mm_desc-sr_T2w.nii.gz").read_bytes() == first.nifti
    assert (anat / "sub-01_res-2mm_desc-sr_T1w.nii.gz").is_file()
    assert (anat / "sub-01_res-2mm_desc-sr_T2w.json").is_file()
    assert (server.bids / "derivatives/bids-mcsr/sub-01.html").is_file()


def test_the_volumes_are_those_the_bids_app_writes_with_the_same_seed(first, server, tmp_path):
    out = tmp_path / "cli"
    subprocess.run([str(BIN / "bids-mcsr"), str(server.bids), str(out), "participant",
                    "--participant-label", "01", "-w", str(tmp_path / "work"), *CLI_OPTIONS],
                   check=True, capture_output=True)
    served = server.bids / "derivatives/bids-mcsr/sub-01/anat"
    names = sorted(p.name for p in (out / "sub-01/anat").glob("*_desc-sr_*.nii.gz"))
    assert names == ["sub-01_res-2mm_desc-sr_T1w.nii.gz", "sub-01_res-2mm_desc-sr_T2w.nii.gz"]
    for name in names:
        assert (out / "sub-01/anat" / name).read_bytes() == (served / name).read_bytes(), name


def test_the_next_contrast_of_the_subject_comes_from_the_cache(first, client, server):
    answer = infer(client, "sub-01_T1w")
    assert answer.status == 200 and answer.params["cached"] is True
    assert answer.seconds < CACHED_WITHIN_S
    anat = server.bids / "derivatives/bids-mcsr/sub-01/anat"
    assert answer.nifti == (anat / "sub-01_res-2mm_desc-sr_T1w.nii.gz").read_bytes()
    assert volume(answer.nifti).shape == volume(first.nifti).shape


def test_a_session_is_fitted_and_fitted_again_when_an_input_changes(client, server):
    flair = infer(client, "sub-03_ses-1_FLAIR")
    assert flair.status == 200 and flair.params["cached"] is False
    assert flair.params["derivative"] == (
        "sub-03/ses-1/anat/sub-03_ses-1_res-2mm_desc-sr_FLAIR.nii.gz")
    stack = server.bids / "sub-03/ses-1/anat/sub-03_ses-1_T1w.nii.gz"
    os.utime(stack, ns=(time.time_ns(), time.time_ns()))
    t1w = infer(client, "sub-03_ses-1_T1w")
    assert t1w.status == 200 and t1w.params["cached"] is False


def test_a_broken_image_gives_the_bids_apps_one_line_message(client, server):
    answer = infer(client, "sub-02_T1w")
    assert answer.status == 422
    path = server.bids / "sub-02/anat/sub-02_T2w.nii.gz"
    assert answer.params["detail"].startswith(f"sub-02: input check: {path}: is constant")
    assert "\n" not in answer.params["detail"]
    assert not (server.bids / "derivatives/bids-mcsr/sub-02/anat").exists()


def test_an_image_outside_the_dataset_is_refused_in_one_line(client):
    answer = infer(client, "sub-09_T1w")
    assert answer.status == 404
    assert answer.params["detail"].startswith("'sub-09_T1w' is not an anatomical image")
    upload = client.put("/datastore/image", params={"image": "x"},
                        files={"file": ("x.nii.gz", io.BytesIO(b"x"))})
    assert upload.status_code == 405 and "read-only" in upload.json()["detail"]


def test_the_server_stops(server):
    assert server.stop() in (0, -15)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/info/", timeout=5, trust_env=False)
    assert "Traceback" not in server.log.read_text()
