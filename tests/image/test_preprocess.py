"""Real ANTsPy N4 and rigid registration on a downsampled ICBM 2009a template."""

import tempfile

import ants
import numpy as np
import pytest
from nilearn.datasets import load_mni152_template
from scipy.spatial.transform import Rotation

from bids_mcsr.image.io import Stack
from bids_mcsr.image.preprocess import (
    _itk_matrix,
    itk_transform_text,
    n4_correct,
    register_rigid,
    to_ants,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def template() -> Stack:
    img = load_mni152_template(resolution=2)
    affine = img.affine.copy()
    affine[:3, :3] *= 2
    data = np.asarray(img.get_fdata(), np.float32)[::2, ::2, ::2] * 1000
    return Stack(data, affine, "T1w")


def _motion(angles_deg, shift_mm) -> np.ndarray:
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    motion[:3, 3] = shift_mm
    return motion


def test_ants_image_has_the_stack_geometry(template):
    image = to_ants(template)
    index = np.array([3, 5, 7])
    ras = template.affine[:3, :3] @ index + template.affine[:3, 3]
    lps = image.direction @ (index * np.asarray(image.spacing)) + np.asarray(image.origin)
    assert np.allclose(lps * [-1, -1, 1], ras)


def test_rigid_registration_recovers_a_known_motion(template, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where ANTs would write its files
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    motion = _motion([4, -3, 5], [3, -2, 4])
    moving = Stack(template.data.copy(), motion @ template.affine, "T2w")
    world, aligned = register_rigid(moving, template)
    assert not list(tmp_path.iterdir())  # nothing left behind on a cluster's /tmp
    residual = world @ motion
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 1
    corners = np.array([[0, 0, 0], template.data.shape]) * 2.0 - [[98, 134, 72]] * 2
    moved = (residual[:3, :3] @ corners.T).T + residual[:3, 3]
    assert np.abs(moved - corners).max() < 1  # within 1 mm across the field of view
    assert aligned.data is moving.data  # voxels untouched: only the affine changes
    assert np.allclose(aligned.affine, world @ moving.affine)


def test_a_thick_stack_is_registered_to_a_finer_reference_the_other_way_round(template):
    """A stack of every third plane (12 mm slices) against the 4 mm reference: ANTs registers
    the reference onto the stack (fewer fixed voxels) and the transform comes back the same
    way round."""
    motion = _motion([3, -2, 2], [2, -3, 1])
    thick = np.eye(4)
    thick[2, 2] = 3.0
    data = template.data[:, :, ::3]
    assert template.data.size > 2 * data.size
    moving = Stack(data.copy(), motion @ template.affine @ thick, "T2w")
    world, _ = register_rigid(moving, template)
    residual = world @ motion
    assert np.degrees(Rotation.from_matrix(residual[:3, :3]).magnitude()) < 1
    corners = np.array([[0, 0, 0], template.data.shape]) * 2.0 - [[98, 134, 72]] * 2
    moved = (residual[:3, :3] @ corners.T).T + residual[:3, 3]
    assert np.abs(moved - corners).max() < 1.5


def test_the_same_seed_gives_the_same_transform_in_a_threaded_process(template):
    n4_correct(template, threads=2)  # ITK now runs this process with two threads
    moving = Stack(template.data.copy(), _motion([2, -1, 3], [1, 2, -2]) @ template.affine, "T2w")
    first, _ = register_rigid(moving, template, seed=0)  # ANTs took 0 as "seed from the clock"
    again, _ = register_rigid(moving, template, seed=0)
    assert np.array_equal(first, again)


def test_itk_text_is_read_back_by_ants(template, tmp_path):
    world = _motion([2, 0, -3], [1, 2, 3])
    path = tmp_path / "xfm.txt"
    path.write_text(itk_transform_text(world))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    assert np.allclose(flip @ _itk_matrix(ants.read_transform(str(path))) @ flip,
                       np.linalg.inv(world), atol=1e-6)


def test_n4_removes_a_smooth_bias_field(template):
    x = np.linspace(-1, 1, template.data.shape[0])[:, None, None]
    bias = np.exp(0.4 * x) * np.ones_like(template.data)
    biased = template.with_data(template.data * bias)
    corrected = n4_correct(biased, threads=1)
    tissue = template.data > 0.3 * template.data.max()

    def spread(data):
        ratio = np.log(data[tissue] / template.data[tissue])
        return float(np.std(ratio))

    assert corrected.data.shape == template.data.shape
    assert np.allclose(corrected.affine, template.affine)
    assert spread(corrected.data) < 0.6 * spread(biased.data)
