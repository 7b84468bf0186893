"""Geometry: voxels land where their affine says, grids cover the stacks, one frame for all."""

import numpy as np
import pytest
from nibabel.affines import apply_affine, from_matvec
from scipy.spatial.transform import Rotation

from bids_mcsr.errors import InputError
from bids_mcsr.image.geometry import (
    CoordinateFrame,
    check_overlap,
    make_output_grid,
    pick_reference,
    stack_corners,
    voxel_centres,
    voxel_centres_chunk,
)
from bids_mcsr.image.io import Stack


def oblique_stack(shape=(20, 24, 6), zooms=(1.0, 1.0, 4.0), angles=(12, -7, 20), shift=(5, -3, 8),
                  contrast="T2w"):
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    affine = from_matvec(rot @ np.diag(zooms), shift)
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    return Stack(data, affine, contrast, "oblique.nii.gz")


def test_oblique_voxel_lands_where_affine_says():
    s = oblique_stack()
    centres = voxel_centres(s.data.shape, s.affine)
    ijk = (7, 13, 4)
    flat = np.ravel_multi_index(ijk, s.data.shape)
    expected = s.affine[:3, :3] @ np.array(ijk) + s.affine[:3, 3]
    assert np.allclose(centres[flat], expected)
    assert np.allclose(voxel_centres_chunk(s.data.shape, s.affine, flat, flat + 1)[0], expected)
    # slice axis and spacing read from the affine, not from the header order
    assert s.through_plane_axis == 2
    assert np.allclose(s.voxel_sizes, [1, 1, 4])


def test_output_grid_is_isotropic_covers_union_and_follows_reference():
    a = oblique_stack(zooms=(1, 1, 4), angles=(0, 0, 0))
    b = oblique_stack(shape=(20, 6, 24), zooms=(1, 4, 1), angles=(0, 0, 30), shift=(0, 10, 0))
    grid = make_output_grid([a, b], spacing=1.5)
    assert np.allclose(grid.spacing, 1.5)
    # axes follow the reference (finest through-plane is a tie -> the first stack: unrotated)
    assert np.allclose(grid.affine[:3, :3], np.eye(3) * 1.5)
    lo = apply_affine(grid.affine, [-0.5, -0.5, -0.5])
    hi = apply_affine(grid.affine, np.array(grid.shape) - 0.5)
    for s in (a, b):
        corners = stack_corners(s)
        assert np.all(corners >= lo - 1e-6) and np.all(corners <= hi + 1e-6)
    # default spacing: the finest in-plane spacing
    assert np.allclose(make_output_grid([a, b]).spacing, 1.0)


def test_coordinate_frame_is_shared_and_isotropic():
    a = oblique_stack()
    b = oblique_stack(angles=(90, 0, 0), shift=(0, 0, 0))
    frame = CoordinateFrame.from_stacks([a, b])
    pts = np.concatenate([stack_corners(a), stack_corners(b)])
    norm = frame.normalise(pts)
    assert norm.min() >= -1 - 1e-5 and norm.max() <= 1 + 1e-5
    assert np.isclose(np.abs(norm).max(), 1, atol=1e-5)
    # one scalar for every axis: distances scale uniformly
    d_world = np.linalg.norm(pts[0] - pts[5])
    d_norm = np.linalg.norm(norm[0] - norm[5])
    assert np.isclose(d_norm * frame.half_extent_mm, d_world, rtol=1e-5)


def test_non_overlapping_stacks_are_refused_with_the_file_name():
    a = oblique_stack(angles=(0, 0, 0), shift=(0, 0, 0))
    far = oblique_stack(angles=(0, 0, 0), shift=(500, 0, 0))
    far.path = "sub-01_T1w.nii.gz"
    with pytest.raises(InputError, match=r"sub-01_T1w\.nii\.gz: does not overlap"):
        check_overlap([a, far])
    check_overlap([a, oblique_stack(angles=(0, 0, 0), shift=(3, 0, 0))])


def test_one_reference_rule_for_registration_grid_and_pose():
    sizes = [(1, 1, 4), (1, 1, 3), (1, 4, 1), (1, 1, 3)]
    contrasts = ["T1w", "T2w", "ce-gadolinium_T1w", "FLAIR"]
    names = ["sub-01_T1w.nii.gz", "sub-01_T2w.nii.gz", "sub-01_ce-gadolinium_T1w.nii.gz",
             "sub-01_acq-sag_FLAIR.nii.gz"]
    assert pick_reference(sizes) == 1  # finest through-plane, ties: the first
    assert pick_reference(sizes, contrasts, names, "T1w") == 0  # not the ce- T1w
    assert pick_reference(sizes, contrasts, names, "ce-gadolinium_T1w") == 2
    assert pick_reference(sizes, contrasts, names, "acq-sag") == 3  # part of a file name
    with pytest.raises(InputError, match="matches no selected stack"):
        pick_reference(sizes, contrasts, names, "PDw")


def test_output_grid_follows_the_reference_it_is_given():
    a = oblique_stack(zooms=(1, 1, 4), angles=(0, 0, 0))
    b = oblique_stack(zooms=(1, 1, 4), angles=(0, 0, 25))
    rot_b = b.affine[:3, :3] / np.linalg.norm(b.affine[:3, :3], axis=0)
    assert np.allclose(make_output_grid([a, b], 1.0).affine[:3, :3], np.eye(3))
    assert np.allclose(make_output_grid([a, b], 1.0, reference=1).affine[:3, :3], rot_b)
