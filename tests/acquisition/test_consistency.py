"""Data consistency (iterative back-projection of the stacks' residuals)."""

import numpy as np
import pytest
from scipy import ndimage

from bids_mcsr.acquisition.backprojection import (
    back_project,
    coverage,
    enforce_consistency,
    usable_for_back_projection,
)
from bids_mcsr.acquisition.simulate import simulate_stack
from bids_mcsr.acquisition.slice_profile import resimulate_stack
from bids_mcsr.evaluation.phantom import mni_truth
from bids_mcsr.image.geometry import Grid
from bids_mcsr.image.intensity import IntensityScaler
from bids_mcsr.image.io import Stack
from bids_mcsr.image.metrics import psnr
from bids_mcsr.inr.superres import in_scale_of


@pytest.fixture(scope="module")
def head():
    vols, affine = mni_truth(2)
    truth = vols["T1w"]
    stack = Stack(*simulate_stack(truth, affine, 2, 6.0), "T1w", "sub-01_T1w.nii.gz")
    return truth, Grid(truth.shape, affine), stack, truth > 0.05 * truth.max()


def test_back_projection_of_a_stack_on_its_own_grid_is_the_identity():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 7, 5)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-5.0, 3.0, 10.0]
    stack = Stack(data, affine, "T1w", "x.nii.gz")
    grid = Grid(data.shape, affine)
    assert np.allclose(back_project(data, stack, grid), data, atol=1e-5) and coverage(stack, grid).all()


def test_back_projection_covers_only_the_stacks_field_of_view():
    # a 3-slice stack (4 mm apart, centres at z = 0, 4, 8 mm) on a 1 mm grid from z = -6 to 13
    stack = Stack(np.ones((4, 4, 3), np.float32), np.diag([1.0, 1.0, 4.0, 1.0]), "T1w", "x.nii.gz")
    grid_affine = np.eye(4)
    grid_affine[2, 3] = -6.0
    grid = Grid((4, 4, 20), grid_affine)
    values = back_project(np.arange(3, dtype=np.float32)[None, None, :] * np.ones((4, 4, 3)), stack, grid)
    covered = coverage(stack, grid)
    z = -6.0 + np.arange(20)
    inside = (z >= -2.0) & (z < 10.0)  # within half a slice (2 mm) of the outer slice centres
    assert np.array_equal(covered[0, 0], inside)
    assert np.allclose(values[0, 0, (z >= 0) & (z <= 8)], z[(z >= 0) & (z <= 8)] / 4.0)  # linear


def test_back_projection_makes_the_volume_reproduce_the_stack_and_nears_the_truth(head):
    truth, grid, stack, mask = head
    smooth = ndimage.gaussian_filter(truth, 1.5).astype(np.float32)  # a fit that lost detail

    def data_misfit(volume):
        return float(np.sqrt(np.mean((resimulate_stack(volume, grid, stack, "gaussian") - stack.data) ** 2)))

    corrected = enforce_consistency(smooth, grid, [stack], "gaussian", iterations=3)
    assert data_misfit(corrected) < 0.5 * data_misfit(smooth)
    assert psnr(corrected, truth, mask) > psnr(smooth, truth, mask) + 1.0
    assert np.array_equal(enforce_consistency(smooth, grid, [stack], "gaussian", 0), smooth)


def test_voxels_outside_every_stack_are_left_alone(head):
    truth, grid, stack, _ = head
    part = Stack(stack.data[:, :, :4], stack.affine, "T1w", "part.nii.gz")  # the lowest 4 slices
    volume = np.zeros(grid.shape, np.float32)
    corrected = enforce_consistency(volume, grid, [part], "gaussian", 2)
    covered = coverage(part, grid)
    assert np.all(corrected[~covered] == 0) and np.any(corrected[covered] != 0)


def test_stacks_sampled_much_finer_than_the_output_are_not_back_projected(head):
    truth, grid, stack, _ = head
    coarse = Grid(tuple(s // 3 for s in grid.shape), grid.affine @ np.diag([3.0, 3.0, 3.0, 1.0]))
    assert usable_for_back_projection(stack, grid) and not usable_for_back_projection(stack, coarse)
    volume = np.zeros(coarse.shape, np.float32)
    assert np.array_equal(enforce_consistency(volume, coarse, [stack], "gaussian", 2), volume)


def test_stacks_of_one_contrast_are_compared_in_one_intensity_scale():
    stack = Stack(np.array([[[0.0, 50.0, 100.0]]], np.float32), np.eye(4), "T2w", "b.nii.gz")
    own, target = IntensityScaler(0.0, 100.0), IntensityScaler(10.0, 1010.0)
    assert np.allclose(in_scale_of(stack, own, target).data, [[[10.0, 510.0, 1010.0]]])
