"""Bad inputs raise one-line InputErrors that name the file and the fix."""

import gzip
import json
import logging

import nibabel as nib
import numpy as np
import pytest

from bids_mcsr.errors import InputError
from bids_mcsr.image.io import load_stack


def save(tmp_path, data, affine=None, name="sub-01_T1w.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def good(shape=(8, 9, 4)):
    return np.random.default_rng(0).random(shape).astype(np.float32)


def check_error(path, match):
    with pytest.raises(InputError) as info:
        load_stack(path, "T1w")
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg and ";" in msg
    assert match in msg
    return msg


def test_valid_stack_loads_and_singleton_4d_is_squeezed(tmp_path):
    s = load_stack(save(tmp_path, good()), "T1w", slice_thickness=3.0)
    assert s.data.shape == (8, 9, 4) and s.data.dtype == np.float32 and s.thickness == 3.0
    s = load_stack(save(tmp_path, good((8, 9, 4, 1)), name="x_T1w.nii.gz"), "T1w")
    assert s.data.shape == (8, 9, 4)


def test_4d_2d_nan_constant(tmp_path):
    check_error(save(tmp_path, good((8, 9, 4, 3)), name="a_T1w.nii.gz"), "is 4D")
    check_error(save(tmp_path, good((8, 9)), name="b_T1w.nii.gz"), "expected a 3D volume")
    bad = good()
    bad[1, 1, 1] = np.nan
    bad[2, 2, 2] = np.inf
    check_error(save(tmp_path, bad, name="c_T1w.nii.gz"), "2 NaN/Inf voxels")
    check_error(save(tmp_path, np.full((8, 9, 4), 7.0, np.float32), name="d_T1w.nii.gz"),
                "is constant")


def save_raw_sform(tmp_path, name, sform):
    """Write an image whose header carries ``sform`` verbatim (no qform)."""
    img = nib.Nifti1Image(good(), None)
    hdr = img.header
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    path = tmp_path / name
    nib.save(img, str(path))
    return path


def test_singular_and_nonfinite_affines(tmp_path):
    aff = np.eye(4)
    aff[2, 2] = 0
    check_error(save_raw_sform(tmp_path, "e_T1w.nii.gz", aff), "singular")
    aff = np.eye(4)
    aff[0, 0] = np.nan
    check_error(save_raw_sform(tmp_path, "f_T1w.nii.gz", aff), "non-finite")


def test_corrupt_truncated_and_not_nifti(tmp_path):
    path = save(tmp_path, good((30, 30, 10)), name="g_T1w.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    check_error(path, "is not a readable NIfTI")
    fake = tmp_path / "h_T1w.nii.gz"
    with gzip.open(fake, "wb") as f:
        f.write(b"this is a text file, not an image" * 20)
    check_error(fake, "is not a readable NIfTI")
    check_error(tmp_path / "missing_T1w.nii.gz", "does not exist")


def test_4d_single_acquisition_uses_the_first_volume(tmp_path):
    data = good((8, 9, 4, 3))
    path = save(tmp_path, data, name="rep_T1w.nii.gz")
    (tmp_path / "rep_T1w.json").write_text(json.dumps({"EchoTime": 0.003, "FlipAngle": 9}))
    stack = load_stack(path, "T1w")
    assert np.array_equal(stack.data, data[..., 0])
    (tmp_path / "rep_T1w.json").write_text(json.dumps({"EchoTime": [0.003, 0.006, 0.009]}))
    check_error(path, "does not describe a single acquisition")
    assert load_stack(path, "T1w", metadata={"RepetitionTime": 2.0}).data.shape == (8, 9, 4)


def _with_forms(tmp_path, name, qform, sform):
    img = nib.Nifti1Image(good(), sform)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    path = tmp_path / name
    nib.save(img, str(path))
    return path


def test_qform_sform_disagreement_is_logged_and_the_sform_used(tmp_path, caplog):
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    logger = logging.getLogger("bids_mcsr")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="bids_mcsr"):
            stack = load_stack(_with_forms(tmp_path, "q_T1w.nii.gz", np.eye(4), shifted), "T1w")
            load_stack(_with_forms(tmp_path, "same_T1w.nii.gz", shifted, shifted), "T1w")
    finally:
        logger.removeHandler(caplog.handler)
    assert np.allclose(stack.affine, shifted)
    assert "q_T1w.nii.gz: qform and sform differ (up to 5.0 mm, 0.0 degrees); using the sform" \
        in caplog.text
    assert "same_T1w" not in caplog.text
